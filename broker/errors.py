"""Public import path of the error tree: ``from broker.errors import BusError``.

The implementation lives in `broker.wire.errors`.
"""

from broker.wire.errors import (
    BusError,
    BusFull,
    ConfigError,
    EnvelopeError,
    LocalProtocolError,
    RemoteProtocolError,
    RequestTimeout,
    SctlError,
    TopicError,
)

__all__ = ["BusError", "BusFull", "ConfigError", "EnvelopeError", "LocalProtocolError",
           "RemoteProtocolError", "RequestTimeout", "SctlError", "TopicError"]
