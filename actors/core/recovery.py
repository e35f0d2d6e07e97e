"""Exactly-once across restarts: an actor's command records, written and read back.

Every command an actor runs (except read-only built-ins) leaves two journaled events on
``evt.<actor>.run``: ``{"state": "started", "id", "command", "from", "deadline"}`` before the
handler runs, and ``{"state": "done", "id", "command", "from", "status", "result", "error"}``
after. They are an audit trail for operators ("who opened the door, when, with what result"), and
they let a restarted actor keep the exactly-once promise (a command id never runs twice, whatever
retries or restarts happen): at start it reads its recent records back from the router's journal. A
retried command that had finished is answered from those records; one that had started but not
finished (the process died in between) is answered with an error and never run a second time. Its
outcome is unknown; running it again could open a door twice.

Write-ahead: a command runs only once the router has journaled its ``started`` record, and its
``done`` record goes out before the reply, so a crash at any point leaves a record saying what
may have happened.

The read-back covers the journal entries of the last `horizon` seconds (found by a binary search
on the entries' timestamps), within `READ_BUDGET` seconds; older commands are past any sensible
deadline. It cannot see past what the router's journal still holds (``journal_max_messages``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Final

from actors.core.commands import Outcome
from broker.client.bus import Bus, Delivery
from broker.wire import protocol
from broker.wire.errors import BusError, EnvelopeError

log = logging.getLogger(__name__)

EVENT: Final = "run"
READ_BUDGET: Final = 3.0  # seconds the start-up read-back may take


def started_record(command_id: str, name: str, sender: str,
                   deadline: float | None) -> dict[str, Any]:
    return {"state": "started", "id": command_id, "command": name, "from": sender,
            "deadline": deadline}


def done_record(command_id: str, name: str, sender: str, outcome: Outcome,
                omitted: bool = False) -> dict[str, Any]:
    """`omitted`: the result was too big to record; a retry gets the status without it."""
    record = {"state": "done", "id": command_id, "command": name, "from": sender,
              "status": outcome.status, "result": outcome.result, "error": outcome.error}
    if omitted:
        record["result_omitted"] = True
    return record


def settle(records: Iterable[dict[str, Any]], now: float) -> tuple[dict[str, Outcome], list[str]]:
    """(finished id → outcome, ids started but never finished whose deadline is not past)."""
    done: dict[str, Outcome] = {}
    started: dict[str, float | None] = {}
    for r in records:
        cid = r.get("id")
        if not isinstance(cid, str):
            continue
        if r.get("state") == "started":
            deadline = r.get("deadline")
            started[cid] = deadline if isinstance(deadline, int | float) else None
        elif r.get("state") == "done":
            done[cid] = Outcome(str(r.get("status", "error")), r.get("result"),
                                str(r.get("error", "")))
    interrupted = [cid for cid, deadline in started.items()
                   if cid not in done and (deadline is None or deadline > now)]
    return done, interrupted


def read_back(bus: Bus, actor: str, horizon: float,
              budget: float = READ_BUDGET) -> list[dict[str, Any]] | None:
    """This actor's records journaled in the last `horizon` seconds; None if they could not
    all be read (router unreachable, or more than `budget` seconds needed)."""
    topic = f"evt.{actor}.{EVENT}"
    end = time.monotonic() + budget
    try:
        state = bus.state(timeout=min(budget, 2.0))
        first, last = max(1, int(state.get("first", 1))), int(state.get("last", 0))
        if last < first:
            return []
        gseq = _first_after(bus, first, last, time.time() - horizon, end)
        records: list[dict[str, Any]] = []
        while time.monotonic() < end:
            header, items = bus.query({"op": protocol.OP_SINCE, "gseq": gseq, "prefixes": [topic]},
                                      timeout=max(0.1, end - time.monotonic()))
            records.extend(_own(items, actor))
            gseq = int(header.get("next", gseq))
            if not header.get("more"):
                return records
        log.error("actor %s: reading back its command records takes over %.0f s; commands "
                  "wait until it succeeds", actor, budget)
        return None
    except (BusError, ValueError, TypeError, EnvelopeError) as exc:
        log.warning("actor %s: cannot read back its command records yet (%s); its commands "
                    "wait until it can", actor, exc)
        return None


def _first_after(bus: Bus, lo: int, hi: int, since: float, end: float) -> int:
    """The first gseq in lo..hi journaled at or after Unix time `since` (hi + 1 if none).
    Journal order is arrival order, so timestamps are close to sorted: a binary search on them
    (a few sender-clock outliers only move the start a little)."""
    hi += 1
    while lo < hi and time.monotonic() < end:
        mid = (lo + hi) // 2
        _, items = bus.query({"op": protocol.OP_SINCE, "gseq": mid, "limit": 1},
                             timeout=max(0.1, end - time.monotonic()))
        if not items:
            return lo  # evicted meanwhile: scan from what is there
        if items[0].envelope.ts < since:
            lo = items[0].gseq + 1
        else:
            hi = mid
    return lo


def _own(items: list[Delivery], actor: str) -> list[dict[str, Any]]:
    out = []
    for d in items:
        try:
            env = d.envelope
        except EnvelopeError:
            continue
        if env.src == actor:
            out.append(env.data)
    return out
