"""The actor's event loop: one thread, one `zmq.Poller`, timers, and a thread-safe hand-over.

Each turn the loop builds a poller over (a) the sockets the owner supplies through
`pollables` (the Bus's, whose flags change from turn to turn), (b) readers and writers
registered with `add_reader` / `add_writer` (file descriptors, Python sockets or zmq sockets),
and (c) the read end of a self-pipe. It sleeps until the earliest timer or the owner's
`next_deadline`, then: drains the callbacks handed over with `call_soon_threadsafe`, passes the
poll events to `on_events`, runs ready readers and writers, runs due timers and calls `on_tick`.

Readers can be paused as a set (`pause_readers`): they stay registered but are not polled,
so a device socket is not read and TCP pushes back on the device, while the owner's sockets,
writers, timers and hand-overs keep going. The actor pauses its device this way while the Bus
is congested (docs/backpressure.md).

`call_soon_threadsafe` (and `wake`) are the only methods other threads and signal handlers may
call. Everything else, including every callback, runs on the loop thread. A callback that raises
is logged with its traceback and counted in `errors`; the loop keeps going, as asyncio's does.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import zmq

log = logging.getLogger(__name__)

MAX_SLEEP: Final = 1.0  # seconds; bounds the damage of a missed wake-up
Pollable = Any  # int fd, object with fileno(), or zmq.Socket
Events = dict[Any, int]


class TimerHandle:
    """Returned by `Loop.call_later`; `cancel()` is idempotent and loop-thread only."""

    __slots__ = ("_args", "_fn", "cancelled", "when")

    def __init__(self, when: float, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self._fn = fn
        self._args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def _run(self) -> None:
        if not self.cancelled:
            self.cancelled = True  # a handle fires once; cancel() after that is harmless
            self._fn(*self._args)


class Loop:
    def __init__(self) -> None:
        self.thread_id: int | None = None
        self.errors = 0
        self._readers: dict[Pollable, Callable[[], object]] = {}
        self._writers: dict[Pollable, Callable[[], object]] = {}
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._order = itertools.count()
        self._handover: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._closed = False
        self.readers_paused = False
        self.pollables: Callable[[], list[tuple[Any, int]]] = list
        self.next_deadline: Callable[[], float] = lambda: time.monotonic() + MAX_SLEEP
        self.on_events: Callable[[Events], object] = lambda events: None
        self.on_tick: Callable[[], object] = lambda: None

    # --- any thread ------------------------------------------------------------------------

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn(*args)` on the loop thread soon. Safe from any thread and signal handlers;
        silently dropped once the loop is closed."""
        if self._closed:
            return
        self._handover.append((fn, args))
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # pipe full (a wake-up is pending anyway) or closed
            os.write(self._wfd, b"\0")

    def in_loop_thread(self) -> bool:
        return self.thread_id == threading.get_ident()

    def has_handover(self) -> bool:
        return bool(self._handover)

    # --- loop thread -----------------------------------------------------------------------

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(0.0, delay), fn, args)
        heapq.heappush(self._timers, (handle.when, next(self._order), handle))
        return handle

    def call_soon(self, fn: Callable[..., object], *args: Any) -> TimerHandle:
        return self.call_later(0.0, fn, *args)

    def add_reader(self, fd: Pollable, callback: Callable[[], object]) -> None:
        """Call `callback()` whenever `fd` is readable (level-triggered) until removed."""
        self._readers[_key(fd)] = callback

    def remove_reader(self, fd: Pollable) -> None:
        """Stop watching `fd`; harmless if not watched. Call it before closing `fd`."""
        self._readers.pop(_key(fd), None)

    def pause_readers(self) -> None:
        """Stop polling every reader (added before or after this call) until `resume_readers`;
        what arrives on them meanwhile waits in the kernel's socket buffers."""
        self.readers_paused = True

    def resume_readers(self) -> None:
        self.readers_paused = False

    def add_writer(self, fd: Pollable, callback: Callable[[], object]) -> None:
        """Call `callback()` whenever `fd` is writable (e.g. a non-blocking connect finished)."""
        self._writers[_key(fd)] = callback

    def remove_writer(self, fd: Pollable) -> None:
        self._writers.pop(_key(fd), None)

    def run_once(self, max_wait: float = MAX_SLEEP) -> None:
        """One turn: poll, hand-overs, events, readers/writers, timers, tick."""
        self.thread_id = threading.get_ident()
        events = self._poll(self._timeout(max_wait))
        if events.pop(self._rfd, 0):
            self._drain_wake()
        self._run_handover()
        self._guard(self.on_events, events)
        self._run_ready(events)
        self._run_timers()
        self._guard(self.on_tick)

    def run_until(self, done: Callable[[], bool], max_wait: float = MAX_SLEEP) -> None:
        while not done():
            self.run_once(max_wait)

    def close(self) -> None:
        self._closed = True
        self._readers.clear()
        self._writers.clear()
        self._timers.clear()
        self._handover.clear()
        for fd in (self._rfd, self._wfd):
            with contextlib.suppress(OSError):
                os.close(fd)

    # --- internals -------------------------------------------------------------------------

    def _timeout(self, max_wait: float) -> float:
        if self._handover:
            return 0.0
        now = time.monotonic()
        until = min(now + max_wait, self.next_deadline())
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if self._timers:
            until = min(until, self._timers[0][0])
        return max(0.0, until - now)

    def _poll(self, timeout: float) -> Events:
        poller = zmq.Poller()
        poller.register(self._rfd, zmq.POLLIN)
        for sock, flags in self.pollables():
            poller.register(sock, flags)
        reading = not self.readers_paused
        if reading:
            for fd in self._readers:
                poller.register(fd, zmq.POLLIN)
        for fd in self._writers:
            # register() replaces: an fd both read and written needs the flags combined.
            poller.register(fd, zmq.POLLOUT | (zmq.POLLIN if reading and fd in self._readers
                                               else 0))
        return dict(poller.poll(int(timeout * 1000 + 0.999)))

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._rfd, 4096):
                pass

    def _run_handover(self) -> None:
        for _ in range(len(self._handover)):  # only what is queued now: no starvation
            fn, args = self._handover.popleft()
            self._guard(fn, *args)

    def _run_ready(self, events: Events) -> None:
        reading = not self.readers_paused
        for fd, flags in events.items():
            if reading and flags & zmq.POLLIN and fd in self._readers:
                self._guard(self._readers[fd])
            if flags & zmq.POLLOUT and fd in self._writers:
                self._guard(self._writers[fd])
            if flags & zmq.POLLERR and fd not in self._readers and fd in self._writers:
                self._guard(self._writers[fd])  # a failed connect may only report POLLERR

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, handle = heapq.heappop(self._timers)
            self._guard(handle._run)

    def _guard(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self.errors += 1
            log.exception("callback %s failed; the actor keeps running", _name(fn))


def _key(fd: Pollable) -> Pollable:
    """The key zmq.Poller reports events under: the zmq socket itself, else the int fd."""
    if isinstance(fd, zmq.Socket | int):
        return fd
    return fd.fileno()


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
