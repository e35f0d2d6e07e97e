"""Commands in flight: the sender's half of a command round trip (see `broker.wire.protocol`).

A command is published on ``cmd.<actor>`` with ``reply_to`` this client's ``rep.<name>`` and is
re-published with the same ``id`` (a new seq) until the reply arrives or its timeout passes.
The command or its reply may be lost on the way (outbox overflow, the actor's best-effort
``cmd.`` subscription, an actor restart); the actor's reply cache makes a repeat harmless, so
retrying is what makes the round trip reliable. The interval doubles from ``RETRY_FIRST`` up to
``RETRY_MAX``; after a (re)sync every command is re-published at once, as what went out while
the router was away may be lost. Retries wait while the Bus is not synced: the outbox would
only hold another copy. The timeout runs on the monotonic clock (a wall-clock step must not
stretch it); the ``deadline`` the actor sees is Unix time, the clock two processes share.

`Requests` only keeps the books: it publishes through the function the Bus gives it, and the Bus
hands it the replies and calls `tick` by `next_retry`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from broker.wire import envelope as envmod
from broker.wire import topics
from broker.wire.envelope import Envelope

log = logging.getLogger(__name__)

RETRY_FIRST: Final = 0.25  # command re-publish interval; doubles up to RETRY_MAX
RETRY_MAX: Final = 1.0


@dataclass
class Request:
    """A command in flight. `reply` or `error` is set when `done`."""

    id: str
    actor: str
    command: str
    data: dict[str, Any]
    deadline: float  # Unix time
    callback: Callable[[Request], None] | None = None
    started: float = field(default_factory=time.monotonic)
    expires: float = 0.0  # monotonic: wall-clock steps must not stretch a timeout
    next_retry: float = 0.0
    retries: int = 0
    reply: Envelope | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.reply is not None or self.error is not None


class Requests:
    """The commands a Bus is waiting on, by id. `publish` is `Bus.publish`."""

    def __init__(self, name: str, reply_topic: str, publish: Callable[..., object],
                 counters: dict[str, int]) -> None:
        self.name = name
        self._reply_topic = reply_topic
        self._publish = publish
        self._counters = counters  # the Bus's: "requests", "request_retries", "request_timeouts"
        self._pending: dict[str, Request] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def start(self, actor: str, command: str, data: dict[str, Any], timeout: float,
              callback: Callable[[Request], None] | None) -> Request:
        req = Request(id=envmod.new_id(), actor=topics.check_name(actor, "actor"),
                      command=command, data=data, deadline=time.time() + timeout,
                      callback=callback, expires=time.monotonic() + timeout)
        self._pending[req.id] = req
        self._counters["requests"] += 1
        self._send(req, time.monotonic())
        return req

    def _send(self, req: Request, now: float) -> None:
        self._publish(topics.command(req.actor), "command", req.data, id=req.id,
                      reply_to=self._reply_topic, deadline=req.deadline)
        req.next_retry = now + min(RETRY_MAX, RETRY_FIRST * 2**req.retries)

    def tick(self, now: float, synced: bool) -> None:
        for req in list(self._pending.values()):
            if now >= req.expires:
                self._counters["request_timeouts"] += 1
                self._finish(req, error=f"no reply from {req.actor} to {req.command!r} within "
                                        f"{now - req.started:.1f} s")
            elif now >= req.next_retry and synced:
                req.retries += 1
                self._counters["request_retries"] += 1
                self._send(req, now)

    def next_retry(self) -> float:
        """Monotonic time of the next re-publish; infinity with nothing in flight."""
        return min((r.next_retry for r in self._pending.values()), default=math.inf)

    def resend_soon(self) -> None:
        """After a (re)sync: re-send commands promptly."""
        for req in self._pending.values():
            req.next_retry = 0.0

    def on_reply(self, env: Envelope) -> bool:
        """Finish the request `env` answers; False if it answers none of ours."""
        req = self._pending.get(env.corr or "")
        if req is None or env.kind != "reply":
            return False
        self._finish(req, reply=env)
        return True

    def _finish(self, req: Request, reply: Envelope | None = None,
                error: str | None = None) -> None:
        self._pending.pop(req.id, None)
        req.reply, req.error = reply, error
        if req.callback is not None:
            try:
                req.callback(req)
            except Exception:  # runs inside handle(): must not cost the batch's deliveries
                log.exception("%s: callback of request %s (%s %s) failed", self.name, req.id,
                              req.actor, req.command)
