"""The router's counters and the map that reports them: ``sys.router.stats`` and ``state``.

Counting happens on the router's hot path, so the router's own counters are plain entries of
one dict (`Router.counts`, names in `COUNTS`), bumped in place. Other parts keep their own: the
journal (sizes, evictions), the query handler (`QueryCounters`), the bad-input reporter (per
reason) and the sequencer (open gaps). `state_map` gathers all of them when a report is due, in
the layout clients read (the ``state`` op of `broker.wire.protocol`), so nothing is counted twice.
"""

from __future__ import annotations

import os
import time
from typing import Any, Final

from broker.router.bad_input import BadInput
from broker.router.journal import Journal
from broker.router.query import QueryCounters

COUNTS: Final = ("received", "journaled", "duplicates", "out_of_order", "gaps_opened",
                 "gaps_lost", "gaps_filled", "syncs", "sent", "subscriptions", "unsubscriptions",
                 "subscribers", "replies_dropped", "unknown_source", "fenced")


class Rates:
    """Messages per second in and out over the last stats interval (`update` at each report)."""

    def __init__(self) -> None:
        self.current = {"in": 0.0, "out": 0.0}
        self._base = (time.monotonic(), 0, 0)

    def update(self, now: float, received: int, sent: int) -> None:
        at, received_before, sent_before = self._base
        dt = max(now - at, 1e-6)
        self.current = {"in": round((received - received_before) / dt, 1),
                        "out": round((sent - sent_before) / dt, 1)}
        self._base = (now, received, sent)


def state_map(router_epoch: int, journal: Journal, counts: dict[str, int], bad: BadInput,
              open_gaps: int, queries: QueryCounters, rates: dict[str, float]) -> dict[str, Any]:
    j, q, c = journal, queries, counts
    return {
        "router_epoch": router_epoch, "origin": j.origin, "pid": os.getpid(),
        "first": j.first, "last": j.last, "persistent": j.persistent,
        "journal": {"messages": len(j), "bytes": j.bytes, "max_messages": j.max_messages,
                    "max_bytes": j.max_bytes, "evicted": j.evicted,
                    "persistent": j.persistent, "path": str(j.path or ""),
                    "file_bytes": j.file_bytes},
        "rates": dict(rates),
        "counts": {
            "received": c["received"], "journaled": c["journaled"],
            "duplicates": c["duplicates"], "out_of_order": c["out_of_order"],
            "bad": {"total": sum(bad.counts.values()),
                    "by_reason": {k: v for k, v in bad.counts.items() if v},
                    "suppressed_reports": bad.suppressed},
            "gaps_open": open_gaps, "gaps_opened": c["gaps_opened"],
            "gaps_lost": c["gaps_lost"], "gaps_filled": c["gaps_filled"],
            "syncs": c["syncs"], "sent": c["sent"],
            "replay_requests": q.replay_requests, "replayed": q.replayed,
            "queries": q.requests, "query_errors": q.errors,
            "replies_dropped": c["replies_dropped"],
            "egress_gaps": q.egress_gaps, "egress_missed": q.egress_missed,
            "subscriptions": c["subscriptions"], "unsubscriptions": c["unsubscriptions"],
            "fenced": c["fenced"],
        },
        "subscribers": c["subscribers"],
        "sources": len(j.sources),
    }
