"""Refused ingress messages: counted by reason, reported on ``sys.router.bad`` at a bounded rate.

A peer that floods garbage must not flood the journal and the log in turn. Every refusal is
counted, but reports share one token bucket of `REPORTS_PER_S` (the router writes its log line
from the report, so the two are limited together), and the next report that goes out carries the
number suppressed since the last one. The reasons and the report fields are specified in
`broker.wire.protocol`; this module only builds the report, the router publishes it.
"""

from __future__ import annotations

import time
from typing import Any, Final

REASONS: Final = ("frames", "topic", "too_large", "msgpack", "missing_key", "wrong_type",
                  "invalid", "kind", "reserved", "seq", "sync", "internal")
REPORTS_PER_S: Final = 10.0
EXCERPT: Final = 64  # body bytes shown, as hex
_TOPIC_BYTES: Final = 120
_ERROR_CHARS: Final = 200


class RateLimit:
    """Token bucket: `allow()` is true at most `rate` times per second (burst `rate`)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = time.monotonic()
        self.suppressed = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.suppressed += 1
        return False


class BadInput:
    """Counts per reason (`counts`) and the reports due; one thread (the router's) owns it."""

    def __init__(self, rate: float = REPORTS_PER_S) -> None:
        self.counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._limit = RateLimit(rate)

    @property
    def suppressed(self) -> int:
        """Reports skipped since the last one went out."""
        return self._limit.suppressed

    def refuse(self, reason: str, frames: list[bytes], error: str) -> dict[str, Any] | None:
        """Count one refusal; the data of its ``sys.router.bad`` report, or None when the rate
        limit suppresses it."""
        self.counts[reason] += 1
        if not self._limit.allow():
            return None
        body = frames[1] if len(frames) == 2 else b"".join(f[:EXCERPT] for f in frames)
        topic = frames[0][:_TOPIC_BYTES].decode("utf-8", "backslashreplace") if frames else ""
        suppressed, self._limit.suppressed = self._limit.suppressed, 0
        return {"reason": reason, "error": error[:_ERROR_CHARS], "topic": topic,
                "excerpt": body[:EXCERPT].hex(), "size": sum(len(f) for f in frames),
                "frames": len(frames), "count": self.counts[reason], "suppressed": suppressed}
