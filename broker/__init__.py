"""The bus: envelope and topics (the wire contract), router, journal, and the Bus client.

Knows nothing of devices. Outside Python tools use `broker.bus.Bus`; everything else on the wire
is documented in `broker.envelope` and `broker.wire`.
"""
