"""The actor process: ``sctl actor NAME`` builds the actor from the site file and runs it.

SIGTERM and SIGINT ask for a graceful stop (exit 0); a site file that does not describe a
runnable actor exits `EXIT_CONFIG` before anything opens; a failure at start-up exits 1, so
supervisord restarts the process.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from actors.core.actor import EXIT_CONFIG, Actor
from actors.core.buslog import BusLogHandler
from actors.registry import create_actor
from broker.config import ActorConfig, SiteConfig
from broker.wire.errors import ConfigError

log = logging.getLogger(__name__)


def run_actor(site: SiteConfig, name: str, *, log_to_bus: bool = True,
              cfg: ActorConfig | None = None) -> int:
    """Process entry point for ``sctl actor NAME``: build the actor from the site file, install
    SIGTERM/SIGINT handlers that ask for a graceful stop, run it, return the exit code.

    A site file that does not describe a runnable actor (unknown type, bad setting) is logged
    with its key path and gives `EXIT_CONFIG` before anything opens. With `log_to_bus`, a
    `BusLogHandler` on the root logger sends WARNING+ records to ``log.<name>`` while it runs.
    """
    try:
        actor = create_actor(site, name, cfg=cfg)
    except ConfigError as exc:
        log.error("cannot run actor %s: %s", name, exc)
        return EXIT_CONFIG
    handler = BusLogHandler(actor) if log_to_bus else None
    if handler is not None:
        logging.getLogger().addHandler(handler)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _stop_handler(actor))
    try:
        return actor.run()
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        if handler is not None:
            logging.getLogger().removeHandler(handler)


def _stop_handler(actor: Actor) -> Callable[[int, FrameType | None], None]:
    def handle(signum: int, frame: FrameType | None) -> None:
        actor.request_stop(signal.Signals(signum).name)

    return handle
