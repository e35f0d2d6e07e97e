"""The actor framework: the `Actor` base (`actor`) and its parts: the loop (`loop`), the device
link state machine (`link`), command dispatch (`commands`, `params`), recovery after a restart
(`recovery`), the WARNING+ log forwarding (`buslog`) and which other actors are known to be down
(`liveness`, for actors that send commands on others' behalf). Knows no device type."""
