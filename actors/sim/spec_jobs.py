"""SPEC's command queue, simulated: commands from clients (and typed at the simulated prompt)
run one at a time in arrival order.

A command runs at once through `actors.sim.spec_eval`; its printed text goes to ``output/tty``
right away. A command that waits (``sleep``, ``count``; `Result.delay`) holds the queue for that
long, with ``status/ready`` at 0; when the time is up the session is brought up to date first
(a count publishes its final counter values and ``scaler/.all./count 0``), then the command
completes. ^C (`abort`) ends the command running and drops the aborting client's queued ones,
each completed with the error "aborted". A command typed at the prompt (the bus ``type``
command) is followed by the next prompt on ``output/tty``, as at SPEC's keyboard.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from actors.core.actor import Deferred
from actors.core.loop import TimerHandle
from actors.protocols.spec_types import Value, format_number
from actors.sim.spec_eval import EvalError, Interpreter
from actors.sim.spec_state import SpecState

ABORTED: Final = "aborted"
SETTLE: Final = 0.001  # seconds: a timer that fires a hair early waits this much more


@dataclass(eq=False)
class Job:
    """One command: its text, where it came from and where its result goes."""

    text: str
    client: Any  # the connection that sent it (None: typed at the prompt)
    sn: int  # the serial number of the reply (0: none wanted)
    name: str  # the header name, echoed in the reply
    deferred: Deferred | None = None  # the bus command waiting for it
    typed: bool = False  # typed at the prompt: the next prompt follows


Done = Callable[[Job, Value | None, str | None], None]  # (job, value, error)


class Jobs:
    """The queue; `done(job, value, error)` hears of every command that finishes."""

    def __init__(self, call_later: Callable[..., TimerHandle], state: SpecState,
                 notify: Callable[[str, Value, bool], object], done: Done) -> None:
        self.call_later = call_later
        self.notify = notify
        self.state = state
        self.done = done
        self.queue: deque[Job] = deque()
        self.current: Job | None = None
        self.number = 1  # the prompt's command number
        self._timer: TimerHandle | None = None
        self._value: Value | None = None

    def prompt(self) -> str:
        return f"{self.number}.{self.state.specname.upper()}> "

    def submit(self, job: Job) -> None:
        self.queue.append(job)
        self._next()

    def abort(self, client: Any) -> None:
        """^C from `client`: the running command ends, `client`'s queued ones are dropped."""
        if self.current is not None:
            job, self.current = self.current, None
            if self._timer is not None:
                self._timer.cancel()
            self._finish(job, None, ABORTED)
        for job in [j for j in self.queue if j.client is client]:
            self.queue.remove(job)
            self._finish(job, None, ABORTED)
        self._next()

    def forget(self, client: Any) -> None:
        """`client` is gone: its queued commands are dropped (the running one finishes)."""
        for job in [j for j in self.queue if j.client is client]:
            self.queue.remove(job)

    def _next(self) -> None:
        while self.current is None and self.queue:
            job = self.queue.popleft()
            try:
                result = Interpreter(self.state, time.monotonic()).run(job.text)
            except EvalError as exc:
                self._tty(f"{exc}\n")
                self._finish(job, None, str(exc))
                continue
            for text in result.printed:
                self._tty(text)
            value = _reply_value(result.value)
            if result.delay <= 0:
                self._finish(job, value, None)
                continue
            self.current, self._value = job, value
            self._set_ready(0)
            self._timer = self.call_later(result.delay, self._waited, job)
        if self.current is None:
            self._set_ready(1)

    def _waited(self, job: Job) -> None:
        if job is not self.current:
            return
        now = time.monotonic()
        if not self.state.finish_count(now):  # the timer fired a hair before the count's end
            end = self.state.count_end or now
            self._timer = self.call_later(end - now + SETTLE, self._waited, job)
            return
        self.state.tick(now)
        self.current, self._timer = None, None
        self._finish(job, self._value, None)
        self._next()

    def _finish(self, job: Job, value: Value | None, error: str | None) -> None:
        self.done(job, value, error)
        if job.typed:
            self.number += 1
            self._tty("\n" + self.prompt())

    def _set_ready(self, ready: int) -> None:
        if self.state.ready != ready:
            self.state.ready = ready
            self.notify("status/ready", str(ready), False)

    def _tty(self, text: str) -> None:
        self.notify("output/tty", text, False)


def _reply_value(value: Any) -> Value | None:
    if value is None or isinstance(value, str | dict):
        return value
    return format_number(value)
