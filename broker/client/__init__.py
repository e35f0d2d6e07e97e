"""The Bus client: what actors, ``sctl`` and outside Python tools use to talk to the router.

`bus.Bus` is the entry point. Behind it: `publisher` and `outbox` (ingress, at least once until
acknowledged), `egress` and `stream` (gap-free, in-order delivery with replay), `requests`
(commands with retries until a reply or the deadline), `delivery` (what the router hands over).
"""
