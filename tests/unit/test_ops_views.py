"""The operator's views without sockets: a link outage as one span, why a program failed (its
log's last error line), program patterns, the health verdict of `sctl status`, `sctl top`
merging supervisord's state, where each host's supervisord is, and the settings digests that
`sctl reload` compares."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from actors.core.actor import config_digest
from actors.core.link import CONNECTING, DOWN, UP, Backoff, Link
from broker.config import load_site
from broker.wire.envelope import make
from cli.ops import status
from cli.ops.heartbeats import link_text
from cli.ops.supervisor_rpc import (
    Endpoint,
    SupervisorError,
    endpoints,
    last_error_line,
    matches,
    pattern_problem,
    proxy,
    select,
)
from cli.ops.top import TopView
from tests.support.stack import write_site

# --- a link outage is one span: first failure, attempts, last reason ------------------------


def test_outage_keeps_its_first_failure_across_attempts() -> None:
    link = Link(Backoff(1.0, 8.0, random.Random(0)), stable_after=5.0)
    link.change(CONNECTING, "attempt 1", 100.0, 0.0)
    assert link.to_data()["down_since"] is None  # trying, nothing failed yet
    link.change(DOWN, "connection refused", 101.0, 1.0, retry=True)
    for n in range(2, 5):
        link.change(CONNECTING, f"attempt {n}", 100.0 + 2 * n, 2.0 * n)
        link.change(DOWN, f"refused #{n}", 101.0 + 2 * n, 2.0 * n + 1, retry=True)
    data = link.to_data()
    assert (data["state"], data["down_since"], data["attempts"], data["last_error"]) == \
        (DOWN, 101.0, 4, "refused #4")
    assert data["since"] == 109.0  # the state's own age starts over; the outage's does not
    text = link_text(data, 130.0)
    assert "down since" in text and "4 attempts" in text and "last: refused #4" in text
    link.change(CONNECTING, "attempt 5", 120.0, 20.0)
    assert link.to_data()["down_since"] == 101.0  # still the same outage while connecting
    link.change(UP, "connected", 121.0, 21.0)
    up = link.to_data()
    assert up["down_since"] is None and up["attempts"] == 0
    assert link_text(up, 181.0) == "up 60s"
    change = link.change(DOWN, "peer closed", 190.0, 90.0, retry=True)
    assert change is not None and change.to_data()["down_since"] == 190.0


def test_link_text_without_outage_fields_and_without_link() -> None:
    assert link_text(None, 0.0) == "-"
    assert link_text({"state": "idle"}, 0.0) == "idle"
    assert link_text({"state": "down", "since": 90.0, "reason": "refused"}, 100.0) == \
        "down 10s, last: refused"


# --- why a program failed: the last error line of its log -----------------------------------

STARTUP_FAILURE = """\
2026-05-09T14:02:10.001+02:00 INFO actors.core.actor: actor bad link idle -> connecting
2026-05-09T14:02:10.002+02:00 ERROR actors.core.actor: actor bad failed to start: \
RuntimeError: fail_on_start is set
Traceback (most recent call last):
  File "actors/core/actor.py", line 300, in run
    self._setup()
RuntimeError: fail_on_start is set
2026-05-09T14:02:10.010+02:00 INFO actors.core.actor: actor bad stopping: start-up failed
"""


def test_last_error_line_is_the_logged_reason_not_the_traceback() -> None:
    assert last_error_line(STARTUP_FAILURE) == \
        "actor bad failed to start: RuntimeError: fail_on_start is set"


def test_an_unlogged_traceback_gives_its_exception_line() -> None:
    text = "2026-05-09 14:02:10,001 INFO x: hello\nTraceback (most recent call last):\n" \
           '  File "x.py", line 1, in <module>\nOSError: [Errno 98] Address in use\n'
    assert last_error_line(text) == "OSError: [Errno 98] Address in use"


def test_json_log_lines_and_a_log_with_no_error() -> None:
    text = '{"time": "t", "level": "ERROR", "logger": "cli.runner", "message": "cannot run ' \
           'actor x: site.toml: actors.x.port: is required"}\n{"level": "INFO", "message": "y"}\n'
    assert last_error_line(text) == "cannot run actor x: site.toml: actors.x.port: is required"
    assert last_error_line("2026-05-09T14:02:10.001Z INFO a: fine\n") is None
    assert last_error_line("") is None


# --- program patterns -----------------------------------------------------------------------

INFOS = [{"name": "router", "group": "router"}, {"name": "reader1", "group": "readers"},
         {"name": "reader2", "group": "readers"}, {"name": "psu1", "group": "psu1"}]


@pytest.mark.parametrize(("pattern", "names"), [
    ("all", ["router", "reader1", "reader2", "psu1"]),
    ("readers:*", ["reader1", "reader2"]),
    ("readers:reader2", ["reader2"]),
    ("reader1", ["reader1"]),  # a NAME, whatever its group
    ("psu1", ["psu1"]), ("psu1:psu1", ["psu1"]), ("psu1:*", ["psu1"]),
])
def test_patterns(pattern: str, names: list[str]) -> None:
    assert [i["name"] for i in select(INFOS, [pattern])] == names
    assert pattern_problem(pattern, INFOS) is None


def test_a_pattern_that_matches_nothing_says_what_there_is() -> None:
    assert not any(matches(i, "reader3") for i in INFOS)
    problem = pattern_problem("reader3", INFOS)
    assert problem is not None and "no program 'reader3'" in problem
    assert "readers:reader1" in problem and "psu1" in problem
    hint = pattern_problem("readers", INFOS)
    assert hint is not None and "readers:*" in hint


# --- the verdict of `sctl status` -----------------------------------------------------------


def _report(**rows: dict[str, Any]) -> dict[str, Any]:
    base = {"type": "test-echo", "host": "-", "supervisor_state": "RUNNING", "alive": True,
            "state": "running", "link": {"state": "up", "since": 1.0}, "alarm": None}
    router = {"type": "router", "host": "-", "supervisor_state": "RUNNING", "alarm": None}
    programs: dict[str, dict[str, Any]] = {"router": router}
    programs.update({n: {**base, **r} for n, r in rows.items()})
    return {"router": {"last": 1}, "router_error": None, "programs": programs,
            "supervisors": [{"hosts": [""], "error": None, "watchdog": "RUNNING"}]}


def _problems(report: dict[str, Any]) -> list[str]:
    host = status._Host(None, {})  # type: ignore[arg-type]  # only its infos are read
    return status.problems(report, dict.fromkeys(report["programs"], host), True, 100.0)


def test_all_well_has_no_problem() -> None:
    assert _problems(_report(dev1={}, dev2={"link": {"state": "idle"}})) == []


@pytest.mark.parametrize(("row", "expected"), [
    ({"supervisor_state": "STOPPED"}, "dev1: STOPPED"),
    ({"supervisor_state": "FATAL", "exit": "actor dev1 failed to start: RuntimeError: x"},
     "dev1: FATAL: actor dev1 failed to start: RuntimeError: x"),
    ({"link": {"state": "down", "down_since": 50.0, "attempts": 3, "last_error": "refused"}},
     "dev1: link down since"),
    ({"link": {"state": "connecting", "since": 99.0}}, "dev1: link connecting"),
    ({"alive": False, "heartbeat_age": 12.0}, "dev1: RUNNING but no heartbeat for 12s"),
    ({"alarm": "stopped after 5 restarts"}, "dev1: ALARM stopped after 5 restarts"),
])
def test_each_kind_of_trouble_is_a_problem(row: dict[str, Any], expected: str) -> None:
    problems = _problems(_report(dev1=row, dev2={}))
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_router_supervisord_and_watchdog_troubles() -> None:
    report = _report(dev1={})
    report["router"], report["router_error"] = None, "no answer in 1 s"
    assert _problems(report) == ["router: not reachable: no answer in 1 s"]
    report = _report(dev1={})
    report["supervisors"][0]["watchdog"] = "STOPPED"
    assert _problems(report) == ["watchdog on this host: STOPPED"]
    report["supervisors"][0]["error"] = "no supervisord (/x.sock): ..."
    assert _problems(report)[0] == "no supervisord (/x.sock): ..."


# --- `sctl top`: supervisord's state wins over the last heartbeat ---------------------------


def test_top_never_shows_a_dead_program_as_running() -> None:
    view = TopView(expected=["dev1", "dev2", "dev3", "dev4"])
    for name in ("dev1", "dev2", "dev4"):
        hb = make(src=name, kind="heartbeat", epoch=1, seq=1, data={
            "state": "running", "interval": 1.0,
            "link": {"state": "down", "since": 95.0, "down_since": 60.0, "attempts": 7,
                     "last_error": "refused"}})
        view.feed(f"hb.{name}", lambda hb=hb: hb, 10.0 if name != "dev4" else 1.0, 100.0)
    view.supervisor([{"name": "dev1", "group": "dev1", "statename": "FATAL"},
                     {"name": "dev2", "group": "dev2", "statename": "RUNNING"},
                     {"name": "router", "group": "router", "statename": "RUNNING"}])
    rows = view.snapshot(10.5, 100.0)["actors"]
    assert rows["dev1"]["state"] == "FATAL" and rows["dev1"]["link"] is None
    assert rows["dev2"]["state"] == "running"
    assert rows["dev2"]["down_since"] == 60.0 and rows["dev2"]["attempts"] == 7
    assert rows["dev2"]["link_text"].startswith("down since") and \
        "7 attempts, last: refused" in rows["dev2"]["link_text"]
    assert rows["dev3"]["state"] == "no heartbeat"  # a site actor never heard from
    assert rows["dev4"]["state"] == "silent"  # its heartbeat is 9.5 intervals old
    assert rows["router"]["state"] == "RUNNING"


# --- where each host's supervisord is -------------------------------------------------------


def test_hosts_listed_in_inet_http_servers_are_remote(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    site = load_site(write_site(tmp_path, extra=(
        '[supervisor]\ninet_http_servers = { doors = "10.0.0.2:9001" }\n'
        'password_file = "pw"\n[actors.a]\ntype = "x"\nruns_on = "doors"\n'
        '[actors.b]\ntype = "x"\n')))
    eps = endpoints(site)
    assert [(e.hosts, e.url) for e in eps] == [
        (("",), f"unix://{site.supervision().socket}"), (("doors",), "http://10.0.0.2:9001")]
    assert eps[1].password_file == tmp_path / "pw" and eps[1].username == "sctl"
    assert [e.url for e in endpoints(site, "doors")] == ["http://10.0.0.2:9001"]
    proxy(eps[1])  # the password is read here; nothing is connected yet


def test_an_unreadable_password_file_is_named(tmp_path: Path) -> None:
    ep = Endpoint(("doors",), "http://10.0.0.2:9001", "sctl", tmp_path / "missing")
    with pytest.raises(SupervisorError, match=r"missing.*password_file"):
        proxy(ep)


# --- the digests `sctl reload` compares -----------------------------------------------------


def test_config_digest_changes_with_the_actor_table_only(tmp_path: Path) -> None:
    tables = '[actors.a]\ntype = "x"\nport = 1\n[actors.b]\ntype = "x"\nport = 2\n'
    path = write_site(tmp_path, extra=tables)
    site = load_site(path)
    a, b = (config_digest(site.actors[n], site.router) for n in "ab")
    assert a["router"] == b["router"] and a["actor"] != b["actor"]
    path.write_text(path.read_text().replace("port = 2", "port = 3"))
    again = load_site(path)
    assert config_digest(again.actors["a"], again.router) == a
    assert config_digest(again.actors["b"], again.router)["actor"] != b["actor"]
    relative = load_site(Path(os.path.relpath(path)))
    assert config_digest(relative.actors["a"], relative.router) == a
