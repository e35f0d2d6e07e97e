"""`BusLogHandler`: WARNING and above from any logger in the actor process → ``log.<actor>``.

A record becomes ``{level, logger, message, exc, ts}`` (``exc`` is the formatted traceback, its
last `EXC_CHARS` characters, or ""). `emit` runs on whatever thread logged and only hands the
record over to the actor's loop (`call_soon_threadsafe`); publishing happens there.

Two guards keep logging from feeding on itself: a record logged *while* a record is being
published (the Bus warning about its own outbox, say) is not sent to the bus again (it still
reaches the other handlers), and at most `LOG_RATE` records per second go out; the rest are
counted in ``log_suppressed`` and the next record that goes out carries ``suppressed: N``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

LOG_RATE: Final = 50
EXC_CHARS: Final = 4000


class LogOwner(Protocol):
    """What the handler needs from an actor."""

    counters: dict[str, int]

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> None: ...

    def publish_log(self, record: dict[str, Any]) -> None: ...


_publishing = threading.local()


class BusLogHandler(logging.Handler):
    def __init__(self, owner: LogOwner, level: int = logging.WARNING,
                 rate: int = LOG_RATE) -> None:
        super().__init__(level)
        self.owner = owner
        self.rate = rate
        self._window = 0
        self._sent = 0
        self._suppressed = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Any thread: format and hand over. Never raises (logging's handleError)."""
        if getattr(_publishing, "active", False):
            return
        try:
            exc = ""
            if record.exc_info:
                exc = logging.Formatter().formatException(record.exc_info)[-EXC_CHARS:]
            payload: dict[str, Any] = {"level": record.levelname, "logger": record.name,
                                       "message": record.getMessage(), "exc": exc,
                                       "ts": record.created}
            self.owner.call_soon_threadsafe(self._publish, payload)
        except Exception:
            self.handleError(record)

    def _publish(self, payload: dict[str, Any]) -> None:
        """Loop thread: rate-limit, then publish with the feedback guard up."""
        now = int(time.monotonic())
        if now != self._window:
            self._window, self._sent = now, 0
        if self._sent >= self.rate:
            self._suppressed += 1
            self.owner.counters["log_suppressed"] = \
                self.owner.counters.get("log_suppressed", 0) + 1
            return
        self._sent += 1
        if self._suppressed:
            payload["suppressed"], self._suppressed = self._suppressed, 0
        _publishing.active = True
        try:
            self.owner.publish_log(payload)
        finally:
            _publishing.active = False
