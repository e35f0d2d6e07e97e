"""`Feed`: a test's Bus client that records every delivery in order, and waits on it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from broker.client.bus import Bus


class Feed:
    """Keeps ``(topic, data)`` of every delivery of `bus` in `seen`; `wait` looks from an index
    on, so a test marks ``len(seen)`` before an action and waits for what follows it."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def poll(self, seconds: float) -> None:
        self.seen += [(d.topic, d.envelope.data) for d in self.bus.poll(seconds)]

    def events(self, topic: str, after: int = 0) -> list[dict[str, Any]]:
        return [data for t, data in self.seen[after:] if t == topic]

    def wait(self, topic: str, pred: Callable[[dict[str, Any]], bool] = lambda d: True,
             after: int = 0, timeout: float = 20.0, what: str = "") -> dict[str, Any]:
        """The first `topic` event from index `after` on that satisfies `pred`."""
        deadline = time.monotonic() + timeout
        while True:
            for data in self.events(topic, after):
                if pred(data):
                    return data
            left = deadline - time.monotonic()
            assert left > 0, (f"no {topic} ({what}) in {timeout} s; saw "
                              f"{[(t, d) for t, d in self.seen[after:]][-15:]}")
            self.poll(min(left, 0.2))
