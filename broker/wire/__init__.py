"""The wire contract: what every party on the bus agrees on, with no sockets.

`envelope` (the msgpack message body and the router's stamp), `topics` (names and the matching
rule), `rules` (which kinds a topic accepts, what only the router may send), `protocol` (the
router's sockets, query operations and sequencing rules, as text and constants), `errors` (the
project's error tree).
"""
