"""`sctl status`, `stop` and `start` across hosts: each host's supervisord reached over its
authenticated ``[inet_http_server]`` (``[supervisor] inet_http_servers``, the password read from
``password_file``), from an operator host that has no supervisord of its own.

Three network namespaces as in test_multihost (`Hosts`): ``routerhost`` runs a supervisord
with the router and a watchdog, ``actors`` one with a watchdog, a SpringCore reader and its
simulator; the operator namespace runs only ``sctl``. The namespaces share the file system, so
each host has its own copy of the site folder (its own supervisord socket, logs and password
file), as separate machines would. Skipped where namespaces cannot be made.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.support.stack import ROOT, sctl_cmd, subprocess_env, wait_for
from tests.system.conftest import BIN
from tests.system.test_multihost import ACTORS_IP, ROUTER_IP, Hosts, Procs, netns_sctl
from tests.system.test_multihost import hosts as hosts  # the fixture

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

PASSWORD: Final = "correct horse battery staple"
PORT: Final = 9101

SITE: Final = f"""\
[router]
runs_on = "routerhost"
ingress = "tcp://{ROUTER_IP}:7111"
egress = "tcp://{ROUTER_IP}:7112"
query = "tcp://{ROUTER_IP}:7113"

[supervisor]
sctl = "{BIN / "sctl"}"
inet_http_servers = {{ routerhost = "{ROUTER_IP}:{PORT}", actors = "{ACTORS_IP}:{PORT}" }}
password_file = "supervisor.password"

[actors.reader1]
type = "springcore-tcp"
runs_on = "actors"
host = "127.0.0.1"
port = 4000
heartbeat_interval = 0.5
backoff_max = 1.0

[actors.readersim]
type = "sim-springcore-tcp"
runs_on = "actors"
port = 4000
heartbeat_interval = 0.5
"""


def site_folder(root: Path, name: str) -> Path:
    """One host's copy of the site: deploy/site.toml, its password file (0600), var/log."""
    deploy = root / name / "deploy"
    deploy.mkdir(parents=True)
    (root / name / "var" / "log").mkdir(parents=True)
    (deploy / "site.toml").write_text(SITE, encoding="utf-8")
    password = deploy / "supervisor.password"
    password.write_text(PASSWORD + "\n", encoding="utf-8")
    password.chmod(0o600)
    return deploy / "site.toml"


def inet_section(host_ip: str) -> str:
    digest = hashlib.sha1(PASSWORD.encode()).hexdigest()
    return (f"\n[inet_http_server]\nport = {host_ip}:{PORT}\nusername = sctl\n"
            f"password = {{SHA}}{digest}\n")


def render(site: Path, host: str, ip: str) -> Path:
    conf = site.parent / "actors.conf"
    out = subprocess.run(sctl_cmd("-c", str(site), "deploy", "render", "--host", host),
                         cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert inet_section(ip).strip() in conf.read_text()  # written by deploy render --host
    return conf


@pytest.fixture
def two_hosts(hosts: Hosts, tmp_path: Path) -> Iterator[tuple[Hosts, Path, Procs]]:
    procs = Procs(tmp_path)
    sockets = []
    try:
        for host, ns, ip in (("routerhost", hosts.router, ROUTER_IP),
                             ("actors", hosts.actors, ACTORS_IP)):
            conf = render(site_folder(tmp_path, host), host, ip)
            procs.start(ns, f"supervisord-{host}", [str(BIN / "supervisord"), "-n", "-c",
                                                     str(conf)])
            sockets.append(tmp_path / host / "var" / "supervisor.sock")
        yield hosts, site_folder(tmp_path, "operator"), procs
    finally:
        from tests.system.test_multihost import rpc_shutdown

        for sock in sockets:
            rpc_shutdown(sock)
        procs.stop_all()


def status(hosts: Hosts, site: Path) -> tuple[int, dict[str, Any]]:
    out = netns_sctl(hosts.operator, site, "status", "--json", "--timeout", "2")
    assert out.returncode in (0, 3), out.stdout + out.stderr
    return out.returncode, json.loads(out.stdout)


def test_status_stop_and_start_over_authenticated_inet_http_servers(
        two_hosts: tuple[Hosts, Path, Procs]) -> None:
    hosts, site, procs = two_hosts
    last: dict[str, Any] = {}

    def well() -> bool:
        nonlocal last
        code, last = status(hosts, site)
        return code == 0

    try:
        wait_for(well, 45, "sctl status exit 0 from the operator host")
    except AssertionError:
        raise AssertionError(f"problems: {last.get('problems')}\n"
                             f"{procs.output('supervisord-actors')[-1500:]}") from None
    urls = {tuple(s["hosts"]): s["url"] for s in last["supervisors"]}
    assert urls == {("routerhost",): f"http://{ROUTER_IP}:{PORT}",
                    ("actors",): f"http://{ACTORS_IP}:{PORT}"}
    assert last["programs"]["reader1"]["host"] == "actors"
    narrowed = netns_sctl(hosts.operator, site, "status", "--host", "actors", "--json")
    only = json.loads(narrowed.stdout)
    assert narrowed.returncode == 0 and sorted(only["programs"]) == ["reader1", "readersim"]
    assert [s["hosts"] for s in only["supervisors"]] == [["actors"]]

    wrong_host = netns_sctl(hosts.operator, site, "stop", "--host", "routerhost", "reader1")
    assert wrong_host.returncode == 2 and "no program 'reader1'" in wrong_host.stderr
    stopped = netns_sctl(hosts.operator, site, "stop", "--host", "actors", "reader1")
    assert stopped.returncode == 0 and stopped.stdout.strip() == "reader1: stopped", \
        stopped.stdout + stopped.stderr
    code, report = status(hosts, site)
    assert code == 3 and report["problems"] == ["reader1: STOPPED"], report["problems"]
    started = netns_sctl(hosts.operator, site, "start", "reader1")  # found on its host
    assert started.returncode == 0 and "reader1 (actors): started" in started.stdout, \
        started.stdout + started.stderr

    (site.parent / "supervisor.password").write_text("wrong\n")
    code, report = status(hosts, site)
    refused = [p for p in report["problems"] if "401 Unauthorized" in p]
    assert code == 3 and len(refused) == 2, report["problems"]
    assert "supervisor.password" in refused[0]
    out = netns_sctl(hosts.operator, site, "stop", "--host", "actors", "readersim")
    assert out.returncode == 3 and "401 Unauthorized" in out.stderr
    assert PASSWORD not in json.dumps(report) + out.stderr
    assert not any(PASSWORD in str(p.args) for _, p in procs.started)
    assert os.stat(site.parent / "supervisor.password").st_mode & 0o077 == 0
