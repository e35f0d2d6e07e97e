"""I/O glue between devices and the actor loop: `tcp` (non-blocking client and listener),
`mqtt` (the paho-mqtt bridge), `c104` (conversions to and from the c104 package's types).
Used by device types and simulators alike."""
