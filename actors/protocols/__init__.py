"""Sans-IO protocol codecs: bytes in, events out.

Nothing here may import sockets, zmq, paho or c104.
"""
