"""sctl alerts without sockets: the [alerts] schema and its key paths (also through `sctl check`'s
validator), episodes, the rate limit, the engine fed with bus messages, the RFC 5424 format;
and the JSON log lines and the rendering that selects them."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.config import load_site
from cli.logfmt import JsonLogFormatter
from cli.ops.alert_config import AlertsConfig, check_alerts, parse_alerts
from cli.ops.alert_forwarders import format_5424
from cli.ops.alert_model import OPEN, RESOLVED, SUMMARY, Alert, Episodes, Limiter
from cli.ops.alerts import AlertEngine
from cli.ops.supervisord import render
from cli.ops.validate import validate_site
from tests.support.stack import write_site

GOOD = """
[alerts]
link_down_after = 10
restarts = true
resolve_after = 60
[alerts.syslog]
address = "udp://127.0.0.1:514"
"""


def site_with(tmp_path: Path, text: str) -> Any:
    return load_site(write_site(tmp_path, text))


def test_every_problem_of_alerts_has_its_key_path(tmp_path: Path) -> None:
    site = site_with(tmp_path, """
[actors.alerts]
type = "test-echo"
[alerts]
link_down_after = -1
colour = "red"
[alerts.webhook]
url = "ftp://example.org"
[alerts.email]
host = "smtp.example.org"
from = "nobody"
to = []
credentials_file = "missing.txt"
[alerts.syslog]
address = "udp://127.0.0.1"
facility = "local9"
""")
    found = {p.path: p.reason for p in check_alerts(site)}
    assert set(found) == {"alerts.colour", "alerts.link_down_after", "alerts.webhook.url",
                          "alerts.email.from", "alerts.email.to",
                          "alerts.email.credentials_file", "alerts.syslog.address",
                          "alerts.syslog.facility", "actors.alerts"}
    assert "unknown key" in found["alerts.colour"]
    assert "http:// or https://" in found["alerts.webhook.url"]
    # `sctl check` (the validator) reports them too, with the file
    problems = [str(p) for p in validate_site(site)]
    assert any(p.endswith("alerts.webhook.url: must be an http:// or https:// URL with a host "
                          "(got 'ftp://example.org')") and p.startswith(str(site.path))
               for p in problems)


def test_an_alerts_table_needs_a_receiver(tmp_path: Path) -> None:
    site = site_with(tmp_path, "[alerts]\nrestarts = true\n")
    assert [p.path for p in check_alerts(site)] == ["alerts"]
    assert check_alerts(site_with(tmp_path, "")) == []
    assert parse_alerts(site_with(tmp_path, "")) is None


def test_mqtt_bridge_rules_are_checked_by_the_validator(tmp_path: Path) -> None:
    site = site_with(tmp_path, """
[actors.bridge]
type = "mqtt-bridge"
allow = { nobody = ["x"] }
command_topic = "sctl/cmd"
[[actors.bridge.publish]]
topic = "evt."
retain = "yes"
""")
    paths = [p.path for p in validate_site(site)]
    assert "actors.bridge.publish[0].retain" in paths


def test_a_bridge_allow_list_names_actors_and_commands_of_the_site(tmp_path: Path) -> None:
    site = site_with(tmp_path, """
[actors.echo1]
type = "tests.support.actors:EchoActor"
port = 4000
[actors.bridge]
type = "mqtt-bridge"
command_topic = "sctl/cmd"
allow = { echo1 = ["add", "launch"], ghost = ["x"] }
""")
    found = {p.path: p.reason for p in validate_site(site)}
    assert "has no command 'launch'" in found["actors.bridge.allow.echo1.launch"]
    assert "'ghost' is not an actor" in found["actors.bridge.allow.ghost.actor"]


# --- episodes and the rate limit ---------------------------------------------------------------

def alert(key: str, t: float = 100.0) -> Alert:
    return Alert(id="", key=key, kind="alarm", state="", severity="critical", source="s",
                 title=f"title {key}", opened=t, time=t)


def test_an_episode_is_sent_once_then_resolved_once() -> None:
    ep = Episodes(resolve_after=30)
    first = ep.occur(alert("a"), now=0.0, quiet=True)
    assert first is not None and first.state == OPEN and first.id == "a@100.000"
    assert ep.occur(alert("a", 101), now=1.0, quiet=True) is None
    assert ep.expire(now=30.5, wall=130) == []  # the repeat at 1.0 restarted the quiet time
    [ended] = ep.expire(now=31.0, wall=131)
    assert (ended.state, ended.id, ended.count) == (RESOLVED, first.id, 2)
    assert ended.data["duration"] == 31.0 and "no repeat for 30 s" in ended.title
    assert ep.resolve("a", "again", 132) is None


def test_the_rate_limit_holds_back_opens_but_never_a_sent_episodes_end() -> None:
    lim = Limiter(per_minute=2, now=0.0)
    ep = Episodes(60)
    opens = [ep.occur(alert(k), 0.0, quiet=False) for k in "abcd"]
    assert [lim.admit(a, 0.0) for a in opens if a] == [True, True, False, False]
    assert lim.summary(1.0, 101) is None  # no token yet
    ends = [ep.resolve(k, "done", 102) for k in "abcd"]
    assert [lim.admit(a, 2.0) for a in ends if a] == [True, True, False, False]
    summary = lim.summary(30.0, 130)  # a token back after 30 s
    assert summary is not None and summary.kind == SUMMARY and summary.count == 2
    assert "c, d" in summary.title and lim.summary(31.0, 131) is None


# --- the engine ---------------------------------------------------------------------------------

def engine(**kw: Any) -> AlertEngine:
    cfg = {"runs_on": "", "alarms": True, "link_down_after": 10.0, "restarts": True,
           "resolve_after": 60.0, "forwarders": (), **kw}
    return AlertEngine(AlertsConfig(**cfg))


def test_alarms_once_per_episode_and_the_watchdogs_clear_them() -> None:
    e = engine()
    alarm = {"alarm": "outbox_overflow", "source": "r1", "message": "r1: dropped 3"}
    [a] = e.on_message("sys.alarm", alarm, 0, now=0, wall=100)
    assert (a.key, a.title, a.severity) == ("outbox_overflow:r1", "r1: dropped 3", "critical")
    assert e.on_message("sys.alarm", alarm, 0, now=1, wall=101) == []
    [ended] = e.tick(now=62, wall=162)
    assert ended.count == 2 and ended.state == RESOLVED
    dog = {"source": "watchdog", "host": "h", "program": "psu1", "reason": "stopped after 5"}
    [p] = e.on_message("sys.alarm", dog, 0, now=70, wall=170)
    assert p.key == "program:psu1" and e.tick(now=500, wall=600) == []  # not quiet-resolved
    view = {"programs": {"psu1": {"alarm": "stopped after 5", "total_restarts": 5}}}
    assert e.on_message("sys.watchdog.h", view, 0, now=501, wall=601) == []
    view = {"programs": {"psu1": {"alarm": None, "total_restarts": 5}}}
    [cleared] = e.on_message("sys.watchdog.h", view, 0, now=502, wall=602)
    assert cleared.key == "program:psu1" and cleared.state == RESOLVED


def test_an_alarm_that_says_resolved_ends_its_episode_at_once() -> None:
    e = engine()
    fault = {"alarm": "journal_write_failed", "source": "router", "message": "disk full"}
    [opened] = e.on_message("sys.alarm", fault, 0, now=0, wall=100)  # transient: gseq 0
    ok = {**fault, "state": "resolved", "message": "journal writable again after 3 s"}
    [ended] = e.on_message("sys.alarm", ok, 41, now=3, wall=103)
    assert ended.key == opened.key == "journal_write_failed:router"
    assert ended.state == RESOLVED and "writable again" in ended.title
    assert e.on_message("sys.alarm", ok, 42, now=4, wall=104) == []  # nothing open: nothing


def test_restarts_count_from_the_first_view() -> None:
    e = engine()
    view = {"programs": {"psu1": {"alarm": None, "total_restarts": 3}}}
    assert e.on_message("sys.watchdog.h", view, 0, now=0, wall=100) == []  # before our time
    view["programs"]["psu1"].update(total_restarts=4, last_reason="exited: boom")
    [r] = e.on_message("sys.watchdog.h", view, 0, now=1, wall=101)
    assert (r.kind, r.key, r.title) == ("restart", "restart:psu1",
                                        "psu1 restarted by the watchdog: exited: boom")


def hb(state: str, down_since: float | None, actor_state: str = "running") -> dict[str, Any]:
    return {"state": actor_state, "link": {"state": state, "down_since": down_since,
                                           "reason": "x", "last_error": "refused"}}


def test_a_link_down_long_enough_is_an_alert_until_it_is_up() -> None:
    e = engine()
    assert e.on_message("hb.r1", hb("down", 1000.0), 1009.0, now=0, wall=0) == []
    [a] = e.on_message("hb.r1", hb("connecting", 1000.0), 1010.5, now=1, wall=1)
    assert (a.kind, a.key) == ("link_down", "link:r1")
    assert a.title == "r1: device link down for 10 s: refused"
    assert e.on_message("hb.r1", hb("down", 1000.0), 1011.0, now=2, wall=2) == []
    [up] = e.on_message("hb.r1", hb("up", None), 1012.0, now=3, wall=3)
    assert up.state == RESOLVED
    e.on_message("hb.r2", hb("down", 0.0), 20.0, now=4, wall=4)
    [stopped] = e.on_message("hb.r2", hb("down", 0.0, "stopping"), 21.0, now=5, wall=5)
    assert "actor stopped" in stopped.title


def test_what_is_switched_off_is_not_watched() -> None:
    e = engine(alarms=False, link_down_after=0.0, restarts=False)
    assert e.subscriptions() == [("sys.watchdog.", False)]
    assert e.on_message("sys.alarm", {"alarm": "x", "source": "y"}, 0, 0, 0) == []


# --- formats ------------------------------------------------------------------------------------

RFC5424 = re.compile(rb'<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) (\S+) (\d+) '
                     rb'(\S+) \[sctl@32473 ((?:\w+="(?:[^"\\\]]|\\.)*" ?)+)\] (.*)', re.S)


def test_syslog_messages_are_rfc_5424() -> None:
    a = Alert(id='k"]@1', key='k"]', kind="link_down", state=OPEN, severity="error",
              source="r1", title="r1: link down — für 10 s", opened=0.0, time=1.5)
    m = RFC5424.fullmatch(format_5424(a, 16 + 3, "sctl", "host1"))
    assert m is not None
    assert int(m[1]) == 19 * 8 + 3 and m[2] == b"1970-01-01T00:00:01.500000Z"
    assert (m[3], m[4], m[6]) == (b"host1", b"sctl", b"link_down")
    assert b'key="k\\"\\]"' in m[7] and m[8].decode() == a.title


def test_json_log_lines() -> None:
    fmt = JsonLogFormatter(program="reader1")
    logger = logging.getLogger("test.logfmt")
    record = logger.makeRecord("test.logfmt", logging.WARNING, __file__, 1, "link %s: %s",
                               ("down", "refused"), None,
                               extra={"actor": "reader1", "raw": b"\x01", "program": "x"})
    line = json.loads(fmt.format(record))
    assert list(line)[:5] == ["time", "level", "program", "logger", "message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert line["level"] == "WARNING" and line["program"] == "reader1"
    assert line["message"] == "link down: refused" and line["extra_program"] == "x"
    assert line["actor"] == "reader1" and line["raw"] == "01"
    try:
        raise ValueError("boom")
    except ValueError:
        record = logger.makeRecord("t", logging.ERROR, __file__, 1, "failed", (),
                                   sys.exc_info())
    assert "ValueError: boom" in json.loads(fmt.format(record))["exception"]


def test_rendering_adds_the_alerts_program_and_the_log_format(tmp_path: Path) -> None:
    site = site_with(tmp_path, '[supervisor]\nlog_format = "json"\n' + GOOD)
    assert check_alerts(site) == []
    text = render(site, tmp_path / "actors.conf")
    assert "[program:alerts]" in text
    commands = [ln for ln in text.splitlines() if ln.startswith("command = ")]
    assert commands and all("--log-format json" in c for c in commands)
    assert "[program:alerts]" not in render(site_with(tmp_path, ""), tmp_path / "actors.conf")
    with pytest.raises(Exception, match=r"supervisor\.log_format"):
        site_with(tmp_path, '[supervisor]\nlog_format = "xml"\n')
