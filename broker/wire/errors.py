"""The project's error tree.

One root, `SctlError`. Errors carry what happened as attributes so callers can act on them, and
their messages say what probably went wrong. `ConfigError` mixes in `ValueError` so callers may
catch either.
"""

from __future__ import annotations


class SctlError(Exception):
    """Root of every error this project raises on purpose."""


class EnvelopeError(SctlError, ValueError):
    """Bytes that are not a valid envelope, or fields that cannot form one.

    `raw` holds (a prefix of) the offending bytes when the error came from decoding.
    """

    def __init__(self, message: str, raw: bytes = b"") -> None:
        super().__init__(message)
        self.raw = raw[:64]


class TopicError(SctlError, ValueError):
    """A topic or topic segment that breaks the naming rules (see broker.wire.topics)."""


class ConfigError(SctlError, ValueError):
    """A site file that cannot be used; `path` is the dotted key path, `source` the file."""

    def __init__(self, path: str, reason: str, source: str = "") -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path}: {reason}" if path else f"{where}{reason}")
        self.path = path
        self.reason = reason
        self.source = source


class BusError(SctlError):
    """The bus could not do what was asked (router unreachable, bad reply on the query socket)."""


class BusFull(BusError):
    """The outbox holds as much as its bounds allow while the router is connected and still
    journaling the backlog: the envelope was refused (no seq used) and may be published again
    once there is room (`Bus.publish_wait` waits for it). `size` is the refused envelope's
    bytes, `held`/`held_bytes` what the outbox holds, `max_messages`/`max_bytes` its bounds."""

    def __init__(self, message: str, *, size: int, held: int, held_bytes: int,
                 max_messages: int, max_bytes: int) -> None:
        super().__init__(message)
        self.size = size
        self.held = held
        self.held_bytes = held_bytes
        self.max_messages = max_messages
        self.max_bytes = max_bytes


class RequestTimeout(BusError):
    """No reply to a command before its deadline."""

    def __init__(self, message: str, actor: str, command: str, waited: float) -> None:
        super().__init__(message)
        self.actor = actor
        self.command = command
        self.waited = waited


class LocalProtocolError(SctlError, ValueError):
    """We were asked to send something the protocol does not allow."""


class RemoteProtocolError(SctlError):
    """The peer sent bytes we cannot accept; `raw` is a prefix of them."""

    def __init__(self, message: str, raw: bytes = b"") -> None:
        super().__init__(message)
        self.raw = raw[:64]
