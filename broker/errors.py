"""Public import path of the error tree: ``from broker.errors import BusError``.

The implementation lives in `broker.wire.errors`.
"""

from broker.wire.errors import (
    BusError,
    ConfigError,
    EnvelopeError,
    LocalProtocolError,
    RemoteProtocolError,
    RequestTimeout,
    SctlError,
    TopicError,
)

__all__ = ["BusError", "ConfigError", "EnvelopeError", "LocalProtocolError",
           "RemoteProtocolError", "RequestTimeout", "SctlError", "TopicError"]
