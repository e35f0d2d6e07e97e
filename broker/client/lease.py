"""Asking the router for the lease of a Bus's name (see `broker.router.leases`).

An instance that must be the only live one of its name (an actor) claims its name for its
epoch right after `Bus.connect`, and releases it on a clean stop. Traffic from the Bus renews
the lease; a Bus that sends nothing for `ttl` seconds loses it. These are blocking query round
trips (their own DEALER socket, like `Bus.query`): a few milliseconds on a live router, and a
`BusError` after `timeout` when it does not answer.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from broker.wire import protocol
from broker.wire.errors import BusError

if TYPE_CHECKING:
    from broker.client.bus import Bus

QUERY_TIMEOUT: Final = 2.0


@dataclass(frozen=True)
class LeaseAnswer:
    granted: bool
    holder: dict[str, Any]  # the claimant when granted, else who holds the name
    generation: int
    router_epoch: int

    def where(self) -> str:
        """"host H (pid P) since T" of the holder, for messages."""
        return holder_text(self.holder)


def holder_text(holder: dict[str, Any]) -> str:
    since = holder.get("since")
    when = _clock(float(since)) if isinstance(since, (int, float)) else "?"
    return (f"host {holder.get('host', '?')} (pid {holder.get('pid', '?')}) since {when}, "
            f"epoch {holder.get('epoch', '?')}")


def machine_id() -> str:
    """This kernel boot and pid namespace: where a holder's pid can be checked from ("" when
    unknown). Host names can repeat (containers, network namespaces); this cannot."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def claim(bus: Bus, ttl: float, *, host: str | None = None, pid: int | None = None,
          replaces: int | None = None, timeout: float = QUERY_TIMEOUT) -> LeaseAnswer:
    """Claim `bus.name` for `bus.epoch` (granted, or refused with the holder); also renews.
    `replaces`: the epoch of a holder found dead on this machine (its pid is gone), which the
    router then lets this claim replace before its lease runs out. Raises BusError when the
    router does not answer or refuses the request."""
    request = {"op": protocol.OP_CLAIM, "name": bus.name, "epoch": bus.epoch,
               "host": host if host is not None else socket.gethostname(),
               "pid": pid if pid is not None else os.getpid(), "ttl": ttl,
               "machine": machine_id()}
    if replaces is not None:
        request["replaces"] = replaces
    header, _ = bus.query(request, timeout)
    holder, granted = header.get("holder"), header.get("granted")
    if not isinstance(holder, dict) or not isinstance(granted, bool):
        raise BusError(f"claim answer without granted/holder: {header!r}")
    return LeaseAnswer(granted, holder, int(header.get("generation") or 0),
                       int(header.get("router_epoch") or 0))


def release(bus: Bus, timeout: float = QUERY_TIMEOUT) -> bool:
    """Free `bus.name` if this epoch holds it; True if it did. Raises BusError (no answer)."""
    header, _ = bus.query({"op": protocol.OP_RELEASE, "name": bus.name, "epoch": bus.epoch},
                          timeout)
    return bool(header.get("released"))


def leases(bus: Bus, timeout: float = QUERY_TIMEOUT) -> dict[str, dict[str, Any]]:
    """The router's live leases: name -> holder (with ``expires_in``)."""
    header, _ = bus.query({"op": protocol.OP_LEASES}, timeout)
    table = header.get("leases")
    return table if isinstance(table, dict) else {}


def _clock(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))
