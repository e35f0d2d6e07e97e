"""The metrics program's parts without sockets: the site model fed deliveries and supervisord
rows, the Prometheus families built from it (read back with prometheus_client's own parser),
the token check, the ``[metrics]`` table and the page's self-containment."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from broker.client.bus import Delivery
from broker.config import SiteConfig, load_site
from broker.wire import envelope
from cli.ops.exposition import write
from cli.ops.metrics import registry
from cli.ops.metrics_config import check_metrics, metrics_listen, split_listen
from cli.ops.monitor import SiteMonitor
from cli.ops.supervisord import render
from cli.ops.web import Auth, Hub, page
from tests.support.stack import write_site

NOW = 1_800_000_000.0


def delivery(topic: str, data: dict[str, Any], ts: float = NOW, src: str = "x",
             gseq: int = 1) -> Delivery:
    return Delivery(topic, envelope.make(src, 1, gseq, "event", data, ts=ts).encode(), 1, gseq)


def beat(actor: str, ts: float = NOW, pid: int = 10, state: str = "running",
         link: str | None = "up", **counters: int) -> Delivery:
    data: dict[str, Any] = {"type": "bus-link", "state": state, "pid": pid, "host": "h1",
                            "version": "1.0", "uptime": 12.5, "interval": 1.0,
                            "counters": counters}
    if link is not None:
        data["link"] = {"state": link, "since": ts - 30, "reason": "", "down_since": None,
                        "attempts": 0, "last_error": ""}
    return delivery(f"hb.{actor}", data, ts, src=actor)


def info(name: str, state: str = "RUNNING", pid: int = 10, stop: int = 0,
         start: float = NOW - 60) -> dict[str, Any]:
    return {"name": name, "group": name, "statename": state, "pid": pid, "start": start,
            "stop": stop, "now": NOW, "exitstatus": -1 if stop else 0, "spawnerr": "",
            "description": ""}


@pytest.fixture
def site(tmp_path: Path) -> SiteConfig:
    return load_site(write_site(tmp_path, '[metrics]\n[actors.psu1]\ntype = "bus-link"\n'
                                          'host = "127.0.0.1"\nport = 1\n'
                                          '[actors.idle1]\ntype = "sim-instrument"\n'))


def scrape(monitor: SiteMonitor, wall: float = NOW) -> dict[str, dict[tuple[tuple[str, str],
                                                                             ...], float]]:
    """{sample name: {labels: value}} of one scrape, parsed by prometheus_client's parser."""
    reg = registry(monitor, clock=lambda: wall)
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(write(reg.collect()).decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_counters_are_the_latest_heartbeats_never_a_sum(site: SiteConfig) -> None:
    m = SiteMonitor(site)
    m.feed([beat("psu1", NOW - 2, events=5, command_ok=1),
            beat("psu1", NOW - 1, events=7, command_ok=3, command_errors=2, command_expired=1,
                 command_duplicates=4, outbox=12, outbox_dropped=3, lost=2)], NOW, 0.0)
    m.feed([beat("psu1", NOW - 5, events=1)], NOW, 0.0, live=False)  # older: ignored
    got = scrape(m)
    a = (("actor", "psu1"),)
    assert got["sctl_actor_events_total"][a] == 7
    commands = {dict(k)["outcome"]: v for k, v in got["sctl_actor_commands_total"].items()
                if dict(k)["actor"] == "psu1"}
    # command_errors counts the expired ones too: each outcome once, adding up to the answers
    assert commands == {"ok": 3, "error": 1, "expired": 1, "duplicate": 4}
    assert got["sctl_actor_outbox_messages"][a] == 12
    assert got["sctl_actor_outbox_dropped_total"][a] == 3
    assert got["sctl_actor_subscriber_lost_total"][a] == 2
    assert got["sctl_actor_heartbeat_age_seconds"][a] == pytest.approx(1.0)
    assert got["sctl_actor_uptime_seconds"][a] == 12.5
    assert got["sctl_actor_info"][(("actor", "psu1"), ("host", "h1"), ("type", "bus-link"),
                                   ("version", "1.0"))] == 1


def test_link_state_is_one_of_four_with_its_duration(site: SiteConfig) -> None:
    m = SiteMonitor(site)
    m.feed([beat("psu1", NOW - 1, link="down")], NOW, 0.0)
    got = scrape(m)
    states = {dict(k)["state"]: v for k, v in got["sctl_actor_link_state"].items()}
    assert states == {"connecting": 0, "up": 0, "down": 1, "idle": 0}
    assert got["sctl_actor_link_state_seconds"][(("actor", "psu1"),)] == pytest.approx(31.0)


def test_up_needs_a_fresh_running_heartbeat_from_the_process_supervisord_runs(
        site: SiteConfig) -> None:
    m = SiteMonitor(site)

    def up(wall: float = NOW) -> dict[str, float]:
        return {k[0][1]: v for k, v in scrape(m, wall)["sctl_actor_up"].items()}

    m.feed([beat("psu1", NOW - 1, pid=10)], NOW, 0.0)
    assert up() == {"psu1": 1, "idle1": 0}  # a site actor never heard from is down, not absent
    m.supervisor("local", [info("psu1", pid=10)], None, NOW)
    assert up()["psu1"] == 1
    m.supervisor("local", [info("psu1", "STARTING", pid=11, stop=int(NOW))], None, NOW)
    assert up()["psu1"] == 0  # killed: its last heartbeat is fresh, its pid is gone
    m.supervisor("local", None, "no supervisord", NOW)
    assert up()["psu1"] == 1  # supervisord does not answer: the heartbeat alone decides
    assert up(NOW + 3.5)["psu1"] == 0  # three intervals without a heartbeat


def test_an_exit_between_two_polls_is_recorded_with_its_time(site: SiteConfig) -> None:
    """The watchdog restarts a dead actor within half a second: the poll after may find it
    STARTING already; supervisord's stop time says that it ended in between."""
    m = SiteMonitor(site)
    assert m.supervisor("local", [info("psu1", pid=10)], None, NOW)
    assert not m.supervisor("local", [info("psu1", pid=10)], None, NOW + 0.5)
    assert m.supervisor("local", [info("psu1", "STARTING", pid=11, stop=int(NOW) + 1,
                                       start=NOW + 1.2)], None, NOW + 1.5)
    assert [(c["from"], c["to"], c["ts"]) for c in m.changes] == [
        ("running", "exited", NOW + 1), ("exited", "starting", NOW + 1.2)]
    # twice within one second: the same stop time, another process
    m.supervisor("local", [info("psu1", pid=11, stop=int(NOW) + 1)], None, NOW + 1.9)
    assert m.supervisor("local", [info("psu1", "STARTING", pid=12, stop=int(NOW) + 1,
                                       start=NOW + 1.95)], None, NOW + 2.0)
    assert [c["to"] for c in m.changes][-3:] == ["running", "exited", "starting"]
    assert m.changes[0]["why"] == ""  # the row is of the new process: nothing known yet
    m.supervisor("local", [info("psu1", pid=12, stop=int(NOW) + 1)], None, NOW + 3)
    m.supervisor("local", [info("psu1", "EXITED", pid=0, stop=int(NOW) + 5)], None, NOW + 5.2)
    assert (m.changes[-1]["to"], m.changes[-1]["ts"], m.changes[-1]["why"]) == \
        ("exited", NOW + 5, "killed by a signal")
    row = next(r for r in m.status(NOW + 6, 0.0)["programs"] if r["name"] == "psu1")
    assert row["state"] == "exited"


def test_latency_histogram_counts_every_event_in_its_bucket(site: SiteConfig) -> None:
    m = SiteMonitor(site)
    m.feed([delivery("evt.psu1.voltage", {}, NOW - d) for d in (0.0003, 0.002, 0.002, 3.0)],
           NOW, 0.0)
    m.feed([delivery("evt.psu1.voltage", {}, NOW - 100)], NOW, 0.0, live=False)  # read back
    got = scrape(m)
    buckets = {dict(k)["le"]: v for k, v in got["sctl_event_latency_seconds_bucket"].items()}
    assert (buckets["0.0005"], buckets["0.0025"], buckets["2.5"], buckets["5.0"],
            buckets["+Inf"]) == (1, 3, 3, 4, 4)
    assert got["sctl_event_latency_seconds_count"][(("actor", "psu1"),)] == 4
    assert got["sctl_event_latency_seconds_sum"][(("actor", "psu1"),)] == \
        pytest.approx(3.0043, abs=1e-3)


def test_router_stats_and_journal_span(site: SiteConfig) -> None:
    m = SiteMonitor(site)
    stats = {"first": 5, "last": 104, "subscribers": 3, "sources": 4,
             "journal": {"messages": 100, "bytes": 2000, "max_messages": 1000,
                         "max_bytes": 10**6, "evicted": 4, "file_bytes": 0},
             "counts": {"received": 110, "sent": 300, "journaled": 104, "duplicates": 2,
                        "gaps_lost": 1, "gaps_open": 0, "egress_missed": 0,
                        "replies_dropped": 0, "bad": {"total": 3, "by_reason": {
                            "not msgpack": 2, "too large": 1}}}}
    m.feed([delivery("sys.router.stats", stats, NOW - 0.5, src="router")], NOW, 0.0)
    m.journal_oldest(5, NOW - 60.5)
    got = scrape(m)
    assert got["sctl_router_up"][()] == 1
    assert got["sctl_router_ingress_messages_total"][()] == 110
    assert got["sctl_router_egress_messages_total"][()] == 300
    assert got["sctl_router_gaps_lost_total"][()] == 1
    assert got["sctl_router_journal_evicted_total"][()] == 4
    assert got["sctl_router_journal_span_seconds"][()] == pytest.approx(60.0)
    assert got["sctl_router_subscribers"][()] == 3
    assert {dict(k)["reason"]: v for k, v in got["sctl_router_bad_input_total"].items()} == \
        {"not msgpack": 2, "too large": 1}
    assert scrape(m, NOW + 10)["sctl_router_up"][()] == 0  # stats stopped coming


def test_backpressure_fencing_and_a_blocked_journal_are_exported(site: SiteConfig) -> None:
    m = SiteMonitor(site)
    pressed = beat("psu1", NOW - 1, device_pauses=2)
    data = {**pressed.envelope.data, "backpressure": {"fill": 0.8, "paused_since": NOW - 3}}
    calm = beat("idle1", NOW - 1)
    calm_data = {**calm.envelope.data, "backpressure": {"fill": 0.0, "paused_since": None}}
    stats = {"journal": {"blocked": True, "free_bytes": 4096},
             "counts": {"fenced": 5, "bad": {"by_reason": {}}}}
    m.feed([delivery("hb.psu1", data, NOW - 1, src="psu1"),
            delivery("hb.idle1", calm_data, NOW - 1, src="idle1"),
            delivery("sys.router.stats", stats, NOW - 0.5, src="router")], NOW, 0.0)
    got = scrape(m)
    psu, idle = (("actor", "psu1"),), (("actor", "idle1"),)
    assert got["sctl_actor_outbox_fill"][psu] == 0.8
    assert (got["sctl_actor_device_paused"][psu], got["sctl_actor_device_paused"][idle]) == (1, 0)
    assert got["sctl_actor_device_pauses_total"][psu] == 2
    assert got["sctl_router_fenced_total"][()] == 5
    assert got["sctl_router_journal_blocked"][()] == 1
    assert got["sctl_router_journal_free_bytes"][()] == 4096


def test_watchdog_restarts_and_alarms(site: SiteConfig) -> None:
    m = SiteMonitor(site)
    view = {"host": "", "programs": {"psu1": {"restarts": 2, "total_restarts": 7,
                                              "alarm": "stopped after 5 restarts"},
                                     "router": {"restarts": 0, "total_restarts": 0,
                                                "alarm": None}}}
    m.feed([delivery("sys.watchdog.local", view, NOW - 0.2, src="watchdog-local"),
            delivery("sys.alarm", {"source": "watchdog", "program": "psu1",
                                   "reason": "stopped after 5 restarts"}, NOW - 1),
            delivery("sys.alarm", {"alarm": "outbox_overflow", "source": "psu1"}, NOW - 1)],
           NOW, 0.0)
    got = scrape(m)
    assert got["sctl_watchdog_restarts_total"][(("host", "local"), ("program", "psu1"))] == 7
    assert got["sctl_watchdog_restarts_in_window"][(("host", "local"),
                                                    ("program", "psu1"))] == 2
    assert got["sctl_program_alarm"] == {(("program", "psu1"),): 1, (("program", "router"),): 0}
    assert got["sctl_alarms_total"] == {(("alarm", "outbox_overflow"), ("source", "psu1")): 1,
                                        (("alarm", "watchdog"), ("source", "watchdog")): 1}
    status = m.status(NOW, 0.0)
    assert [a.get("program") or a.get("alarm") for a in status["alarms"]] == \
        ["outbox_overflow", "psu1"]  # newest first
    assert next(r for r in status["programs"] if r["name"] == "psu1")["restarts"] == 7


def test_names_from_outside_the_site_are_bounded(site: SiteConfig,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cli.ops.monitor.MAX_NAMES", 3)
    m = SiteMonitor(site)
    m.feed([beat(f"stray{i}") for i in range(10)] + [beat("psu1")], NOW, 0.0)
    assert sorted(m.beats) == ["psu1", "stray0", "stray1", "stray2"]


def test_the_token_is_a_bearer_token_or_the_basic_auth_password() -> None:
    auth = Auth("s3cret")

    def basic(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert auth.allows("Bearer s3cret") and auth.allows(basic("anyone:s3cret"))
    for bad in (None, "", "Bearer", "Bearer s3cre", "Basic !!!", basic("s3cret"),
                basic("user:wrong"), "Token s3cret"):
        assert not auth.allows(bad), bad
    assert Auth(None).allows(None)


def test_listen_addresses_and_the_token_rule(tmp_path: Path) -> None:
    assert split_listen("127.0.0.1:9570") == ("127.0.0.1", 9570)
    assert split_listen("[::1]:0") == ("::1", 0)
    for bad in ("9570", "host:99999", "::1:90", "127.0.0.1:x"):
        with pytest.raises(ValueError):
            split_listen(bad)
    for loopback in ("127.0.0.1:1", "127.3.0.9:1", "[::1]:1", "localhost:1"):
        assert metrics_listen(loopback, False)[1] is None
    for other in ("0.0.0.0:1", ":1", "[::]:1", "10.1.2.3:1", "myhost:1"):
        assert "token" in str(metrics_listen(other, False)[1])
        assert metrics_listen(other, True)[1] is None
    site = load_site(write_site(tmp_path, '[metrics]\nlisten = "0.0.0.0:9570"\n'))
    problems = check_metrics(site)
    assert [p.path for p in problems] == ["metrics.token_file"]
    assert "not a loopback address" in problems[0].reason


def test_deploy_render_adds_one_metrics_program_when_the_site_has_the_table(
        tmp_path: Path) -> None:
    with_table = load_site(write_site(tmp_path, "[metrics]\n"))
    text = render(with_table, tmp_path / "actors.conf")
    assert text.count("[program:metrics]") == 1
    assert re.search(r"command = \S*sctl -c \S+ metrics\n", text)
    without = load_site(write_site(tmp_path, ""))
    assert "[program:metrics]" not in render(without, tmp_path / "actors.conf")


def test_the_page_is_self_contained_and_its_policy_allows_only_itself() -> None:
    body, csp = page()
    text = body.decode()
    assert not re.search(r"(src|href)\s*=\s*[\"'](https?:)?//", text)  # no CDN, works offline
    assert "innerHTML" not in text  # bus data is only ever set as text
    script = re.search(r"<script>(.*?)</script>", text, re.S)
    assert script is not None
    digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp


def test_a_slow_client_gets_the_newest_state_never_a_queue() -> None:
    hub = Hub()
    hub.publish(b"1")
    seen, data = hub.wait(0, 0.0)
    assert (seen, data) == (1, b"1")
    for text in (b"2", b"3", b"4"):  # the client was busy writing meanwhile
        hub.publish(text)
    assert hub.wait(seen, 0.0) == (4, b"4") and hub.skipped == 2
    assert hub.wait(4, 0.01) == (4, None)  # nothing newer: a keep-alive is due
    hub.close()
    assert hub.wait(4, 5.0) == (4, None)  # at once


def test_the_fast_text_writer_says_what_prometheus_clients_says(site: SiteConfig) -> None:
    """`cli.ops.exposition.write` against prometheus_client's generate_latest on the same
    families, both read back by prometheus_client's parser: same families, types, samples."""
    m = SiteMonitor(site)
    m.feed([beat("psu1", NOW - 1, events=3, command_ok=1),
            delivery("evt.psu1.voltage", {}, NOW - 0.002),
            delivery("sys.alarm", {"alarm": 'a "quoted"\\ one\nand a newline',
                                   "source": "psu1"}, NOW)], NOW, 0.0)
    m.supervisor("local", [info("psu1")], None, NOW)
    reg = registry(m, clock=lambda: NOW)

    def parsed(text: bytes) -> list[tuple[str, str, str, list[Any]]]:
        return [(f.name, f.type, f.documentation,
                 sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples))
                for f in text_string_to_metric_families(text.decode())
                if not f.name.startswith(("process_", "python_"))]  # they read the clock

    ours, theirs = parsed(write(reg.collect())), parsed(generate_latest(reg))
    assert ours == theirs and len(ours) > 15


def test_what_was_read_back_at_start_is_shown_once_when_it_also_comes_live(
        site: SiteConfig) -> None:
    m = SiteMonitor(site)
    first, second = (delivery("evt.psu1.voltage", {"v": n}, NOW, gseq=g)
                     for n, g in ((1, 7), (2, 8)))
    m.feed([first], NOW, 0.0, live=False)
    m.feed([first, second], NOW, 0.0)
    assert [g for g, *_ in m.tail] == [7, 8]


def test_the_default_site_serves_metrics_on_loopback() -> None:
    from cli.ops.metrics_config import parse_metrics
    from tests.support.stack import ROOT

    site = load_site(ROOT / "deploy" / "site.toml")
    assert parse_metrics(site).listen == "127.0.0.1:9570" and parse_metrics(site).token_file \
        is None
    conf = (ROOT / "deploy" / "actors.conf").read_text()
    assert re.search(r"\[program:metrics\]\ncommand = sctl -c \S+ metrics\n", conf)
