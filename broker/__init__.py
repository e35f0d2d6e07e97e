"""The bus: the wire contract, the Bus client, the router process, the site file and security.

Knows nothing of devices. Rooms:

- `broker.wire`: the contract every party shares (envelope, topics, protocol text, errors); pure,
  no sockets.
- `broker.client`: the `Bus` that actors, ``sctl`` and outside Python tools use.
- `broker.router`: the router process (ingress, sequencing, journal, query, stats).
- `broker.config` (the site file) and `broker.security` (CURVE keys, authorization), used by
  client and router alike.

Public imports for outside tools: `broker.bus` (`Bus`, `client_name`, `Delivery`),
`broker.config` (`load_site`), `broker.errors` (the error tree).
"""
