"""Actors: one OS process per protocol endpoint.

- `actors.core`: the actor framework (the `Actor` base, its loop, link state, commands, params,
  recovery); knows no device.
- `actors.transports`: the I/O glue handed to the loop (TCP client and listener, the paho MQTT
  bridge, the c104 conversions).
- `actors.protocols`: sans-IO codecs and mappings: bytes in, events out; no sockets.
- `actors/<type>.py`: one module per device type; `actors.registry` maps type names to them.
- `actors.sim`: the device simulators, themselves actors.

Public import for outside actor code: `actors.base` (`Actor`, `command`, `Param`, `Setting`,
`CommandError`, `Deferred`).
"""
