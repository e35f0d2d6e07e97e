"""The actor framework: the `Actor` base (`actor`) and its parts: the loop (`loop`), the device
link state machine (`link`), command dispatch (`commands`, `params`), recovery after a restart
(`recovery`) and the WARNING+ log forwarding (`buslog`). Knows no device type."""
