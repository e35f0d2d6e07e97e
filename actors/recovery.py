"""Exactly-once across restarts: an actor's command records, written and read back.

Every command an actor runs (except read-only built-ins) leaves two journaled events on
``evt.<actor>.run``: ``{"state": "started", "id", "command", "from", "deadline"}`` before the
handler runs, and ``{"state": "done", "id", "command", "from", "status", "result", "error"}``
after. They are an audit trail for operators ("who opened the door, when, with what result"),
and they let a restarted actor keep DESIGN §4.4's promise: at start it reads its recent records
back from the router's journal. A retried command that had finished is answered from those
records; one that had started but not finished (the process died in between) is answered with
an error and never run a second time. Its outcome is unknown; running it again could open a
door twice.

The read-back scans at most `window` journal entries and `budget` seconds; older commands are
past any sensible deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Final

from actors.commands import Outcome
from broker import wire
from broker.bus import Bus, Delivery
from broker.errors import BusError, EnvelopeError

log = logging.getLogger(__name__)

EVENT: Final = "run"
READ_BUDGET: Final = 3.0  # seconds the start-up read-back may take


def started_record(command_id: str, name: str, sender: str,
                   deadline: float | None) -> dict[str, Any]:
    return {"state": "started", "id": command_id, "command": name, "from": sender,
            "deadline": deadline}


def done_record(command_id: str, name: str, sender: str, outcome: Outcome) -> dict[str, Any]:
    return {"state": "done", "id": command_id, "command": name, "from": sender,
            "status": outcome.status, "result": outcome.result, "error": outcome.error}


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


def read_back(bus: Bus, actor: str, window: int,
              budget: float = READ_BUDGET) -> list[dict[str, Any]] | None:
    """This actor's records among the newest `window` journal entries; None if unreachable."""
    topic = f"evt.{actor}.{EVENT}"
    try:
        state = bus.state(timeout=min(budget, 2.0))
        gseq = max(int(state.get("first", 1)), int(state.get("last", 0)) - window + 1, 1)
        records: list[dict[str, Any]] = []
        end = time.monotonic() + budget
        while time.monotonic() < end:
            header, items = bus.query({"op": wire.OP_SINCE, "gseq": gseq, "prefixes": [topic]},
                                      timeout=max(0.1, end - time.monotonic()))
            records.extend(_own(items, actor))
            gseq = int(header.get("next", gseq))
            if not header.get("more"):
                return records
        log.warning("actor %s: reading back command records took over %.0f s; using the "
                    "%d found", actor, budget, len(records))
        return records
    except (BusError, ValueError, TypeError) as exc:
        log.warning("actor %s: cannot read back its command records (%s): a command retried "
                    "across this restart could run twice", actor, exc)
        return None


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
