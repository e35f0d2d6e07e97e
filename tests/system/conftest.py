"""System tests: a whole site run by a REAL supervisord, in a temp folder.

`SupervisedSite` writes ``deploy/site.toml`` in the test's folder (free loopback ports), renders
it with ``sctl deploy render`` exactly as an operator does, starts ``supervisord -n`` on the
result and talks to it over its unix socket, the way ``sctl status`` and the watchdog do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.config import SiteConfig, load_site
from cli.ops.watchdog import supervisor_proxy
from tests.support.stack import ROOT, sctl_cmd, subprocess_env, wait_for, write_site

BIN = Path(sys.executable).parent


class SupervisedSite:
    def __init__(self, folder: Path, actors: str, supervisor: str = "",
                 router: str = "", journal: str = "../var/journal.bin") -> None:
        """`journal`: the router's journal_path, relative to ``deploy/``."""
        self.folder = folder
        self.deploy = folder / "deploy"
        self.deploy.mkdir(parents=True)
        (folder / "var" / "log").mkdir(parents=True)
        # Free ports, not port 0: supervisord starts the router and the actors together and
        # restarts the router on the same file, so the file must name the ports beforehand.
        self.site_path = write_site(
            self.deploy, f'[supervisor]\nsctl = "{BIN / "sctl"}"\n{supervisor}\n{actors}',
            router_extra=f'journal_path = "{journal}"\n{router}')
        self.site: SiteConfig = load_site(self.site_path)
        self.conf = self.deploy / "actors.conf"
        self.popen: subprocess.Popen[bytes] | None = None

    def sctl(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(sctl_cmd("-c", str(self.site_path), *args), cwd=ROOT,
                              env=subprocess_env(), capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> SupervisedSite:
        out = self.sctl("deploy", "render")
        assert out.returncode == 0, out.stderr
        log = (self.folder / "var" / "supervisord.stdout").open("ab")
        self.popen = subprocess.Popen([str(BIN / "supervisord"), "-n", "-c", str(self.conf)],
                                      cwd=self.folder, env=subprocess_env(), stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: self.site.supervision().socket.exists(), 15, "supervisord's socket")
        return self

    @property
    def rpc(self) -> Any:
        return supervisor_proxy(self.site.supervision().socket).supervisor

    def info(self, name: str) -> dict[str, Any]:
        return dict(self.rpc.getProcessInfo(name))

    def status(self) -> dict[str, Any]:
        out = self.sctl("status", "--json", "--timeout", "1")
        assert out.returncode in (0, 3), out.stderr  # 3: not all well, the report says why
        return dict(json.loads(out.stdout))

    def link_up(self, name: str) -> bool:
        row = self.status()["programs"].get(name) or {}
        link = row.get("link") or {}
        return bool(row.get("alive") and link.get("state") == "up"
                    and row.get("supervisor_state") == "RUNNING")

    def wait_link_up(self, names: list[str], timeout: float = 30.0) -> None:
        wait_for(lambda: all(self.link_up(n) for n in names), timeout,
                 f"{names} RUNNING with link up in sctl status")

    def log(self, name: str) -> str:
        p = self.folder / "var" / "log" / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            self.rpc.shutdown()
            self.popen.wait(timeout=30)
        except Exception:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Any]:
    """Factory: `supervised(actors_toml, supervisor=..., router=...)` → a started site."""
    sites: list[SupervisedSite] = []

    def make(actors: str, supervisor: str = "", router: str = "") -> SupervisedSite:
        site = SupervisedSite(tmp_path / f"site{len(sites)}", actors, supervisor, router)
        sites.append(site)
        return site.start()

    yield make
    for s in sites:
        s.stop()


def wait_pid_change(site: SupervisedSite, name: str, old: int, timeout: float) -> float:
    """Seconds until `name` is RUNNING again with another pid than `old`."""
    start = time.monotonic()

    def restarted() -> bool:
        info = site.info(name)
        return bool(info["statename"] == "RUNNING" and info["pid"] not in (0, old))

    wait_for(restarted, timeout, f"{name} restarted with a new pid")
    return time.monotonic() - start
