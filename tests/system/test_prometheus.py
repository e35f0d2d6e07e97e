"""A real Prometheus (Debian's ``prometheus``) scraping ``sctl metrics`` as supervisord runs it
from the rendered site file, with the token of ``[metrics] token_file``, through the scrape
example ``deploy/prometheus.yml``; every query of the Grafana dashboard
``deploy/grafana/sctl.json`` is run against it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.echo import EchoServer
from tests.support.stack import ROOT, free_ports, wait_for
from tests.system.conftest import SupervisedSite

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
EXAMPLE = ROOT / "deploy" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "sctl.json"
TOKEN = "prometheus-test-token"
# Grafana's own variables, as Grafana would expand them for this test's one job and actor
GRAFANA_VARS = {"$__rate_interval": "15s", "$__interval": "1s", "$job": "sctl",
                "$actor": ".*"}

if not Path(PROMETHEUS).exists():
    pytest.skip("Debian's prometheus package is not installed (bash scripts/setup.sh installs "
                "it; apt-get install prometheus)", allow_module_level=True)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer().start()
    yield server
    server.close()


def scrape_config(port: int, token_file: Path) -> str:
    """The example with this test's target, a 1 s scrape and its token."""
    text = EXAMPLE.read_text()
    for old, new in (('"127.0.0.1:9570"', f'"127.0.0.1:{port}"'),
                     ("scrape_interval: 5s", "scrape_interval: 1s"),
                     ("    # authorization:\n    #   credentials_file: /etc/prometheus/sctl.token",
                      f"    authorization:\n      credentials_file: {token_file}")):
        assert text.count(old) == 1, f"{EXAMPLE} no longer has {old!r}"
        text = text.replace(old, new)
    return text


class Prometheus:
    def __init__(self, folder: Path, config: str) -> None:
        self.port = free_ports(1)[0]
        (folder / "prometheus.yml").write_text(config)
        self.log = (folder / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.folder = folder

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())

    def ready(self) -> bool:
        assert self.proc.poll() is None, (self.folder / "prometheus.log").read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def test_prometheus_scrapes_the_metrics_program(supervised: Any, echo: EchoServer,
                                                tmp_path: Path) -> None:
    check = subprocess.run([PROMTOOL, "check", "config", str(EXAMPLE)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    port = free_ports(1)[0]
    site: SupervisedSite = supervised(
        f'[metrics]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{token}"\n'
        f'[actors.dev1]\ntype = "tests.support.actors:EchoActor"\nport = {echo.port}\n')
    assert "[program:metrics]" in site.conf.read_text()
    site.wait_link_up(["dev1"])
    wait_for(lambda: site.info("metrics")["statename"] == "RUNNING", 20,
             f"the metrics program RUNNING:\n{site.log('metrics')[-2000:]}")
    prom = Prometheus(tmp_path, scrape_config(port, token))
    try:
        wait_for(prom.ready, 30, "prometheus ready")

        def target_up() -> bool:
            targets = prom.get("/api/v1/targets")["data"]["activeTargets"]
            return bool(targets) and targets[0]["health"] == "up"

        wait_for(target_up, 20, f"the sctl target up in /api/v1/targets: "
                                f"{prom.get('/api/v1/targets')}")
        target = prom.get("/api/v1/targets")["data"]["activeTargets"][0]
        assert target["labels"]["job"] == "sctl" and target["scrapeUrl"].endswith(
            f"127.0.0.1:{port}/metrics")

        def dev1_up() -> list[dict[str, Any]]:
            return prom.query('sctl_actor_up{actor="dev1"}')

        wait_for(lambda: [r["value"][1] for r in dev1_up()] == ["1"], 20,
                 'sctl_actor_up{actor="dev1"} = 1 in Prometheus')
        assert dev1_up()[0]["metric"]["site"] == "default"  # the example's target label
        wait_for(lambda: prom.query("sctl_watchdog_restarts_total"), 10, "watchdog series")
        used = dashboard_queries(prom)
        exposed = exposed_names(port)
        assert used <= exposed, f"the dashboard uses metrics nobody exports: {used - exposed}"
    finally:
        prom.stop()


def dashboard_queries(prom: Prometheus) -> set[str]:
    """Run every query of the dashboard (its variables and panels); the metric names they use."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [v["definition"] for v in board["templating"]["list"] if v.get("definition")]
    exprs = [re.sub(r"label_values\((.*), \w+\)", r"\1", e) for e in exprs]
    exprs += [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    names: set[str] = set()
    for expr in exprs:
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        prom.query(expr)  # a syntax error or an unknown function fails here
        names |= {n for n in re.findall(r"\b(sctl_\w+|process_\w+)", expr)}
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def exposed_names(port: int) -> set[str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        text = resp.read().decode()
    out: set[str] = set()
    for family in text_string_to_metric_families(text):
        out |= {family.name, *(s.name for s in family.samples)}
        if family.type == "counter":  # one without samples yet still names its _total
            out.add(f"{family.name}_total")
    return out
