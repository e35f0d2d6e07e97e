"""`TargetActor`: the bus side of a 104 command in tests (a door controller, say).

Commands ``accept`` and ``deny`` (any named args) reply ok after ``delay`` seconds (a loop
timer, so the actor keeps serving) and publish ``evt.<name>.done`` with the command, its args
and the Unix time of the reply, so a test can prove the master's confirmation came after it;
``refuse`` replies with an error; ``history`` lists everything received.
"""

from __future__ import annotations

import time
from typing import Any

from actors.core.actor import Actor, CommandError, Deferred, Param, Setting, command
from broker.config import non_negative


class TargetActor(Actor):
    """Receives the bus commands an iec104-server makes of 104 commands (test actor)."""

    type_name = "test-iec104-target"
    settings = (
        Setting("delay", float, 0.0, "seconds before replying ok", check=non_negative),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[dict[str, Any]] = []

    def _later(self, name: str, args: dict[str, Any]) -> Deferred:
        self.received.append({"command": name, "args": args, "at": time.time()})
        deferred = Deferred()
        self.call_later(self.config["delay"], self._reply, deferred, name, args)
        return deferred

    def _reply(self, deferred: Deferred, name: str, args: dict[str, Any]) -> None:
        self.publish_event("done", {"command": name, "args": args, "at": time.time()})
        deferred.resolve({"command": name, "args": args})

    @command("accept", Param("value", object, default=None), Param("note", str, default=""))
    def accept(self, value: Any, note: str) -> Deferred:
        """Grant (replies ok after `delay`)."""
        return self._later("accept", {"value": value, "note": note})

    @command("deny", Param("value", object, default=None), Param("note", str, default=""))
    def deny(self, value: Any, note: str) -> Deferred:
        """Deny (replies ok after `delay`)."""
        return self._later("deny", {"value": value, "note": note})

    @command("refuse", Param("value", object, default=None))
    def refuse(self, value: Any) -> None:
        """Always an error reply."""
        self.received.append({"command": "refuse", "args": {"value": value}, "at": time.time()})
        raise CommandError("refused on purpose")

    @command("history", doc="every command received", record=False)
    def history(self) -> list[dict[str, Any]]:
        return self.received
