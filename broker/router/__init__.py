"""The router process: one per site (``sctl router``).

`server` runs the sockets and the loop; `ingress` checks each message cheaply, `sequencer`
decides new/duplicate/gap per (src, epoch), `journal` and `journal_file` keep what was accepted,
`query` answers replays, `bad_input` and `stats` report. Imports only `broker.wire`,
`broker.config` and `broker.security`.
"""
