"""sctl as an operator runs it: real router process, real sctl processes, and the exit codes
outside scripts rely on (0 ok, 1 error reply, 2 bad usage or site file, 3 no reply in time)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import ROOT, Stack, sctl_cmd, subprocess_env, wait_for, write_site

pytestmark = pytest.mark.timeout(90)

ACTOR_TABLE = '[actors.reader1]\ntype = "tests.support.actors:EchoActor"\nport = 1\n'


def sctl(site: Path | None, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    pre = ("-c", str(site)) if site else ()
    return subprocess.run(sctl_cmd(*pre, *args), cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def running(stack: Stack) -> Path:
    site = stack.write(ACTOR_TABLE)
    proc = stack.start_router()
    out = sctl(site, "pub", "evt.probe.up", "{}", "--timeout", "15")
    assert out.returncode == 0, out.stderr + proc.output()
    return site


def test_help_lists_the_contract_commands() -> None:
    out = sctl(None, "--help")
    assert out.returncode == 0
    for cmd in ("send", "sub", "pub", "status", "describe", "ping", "router", "actor"):
        assert f"  {cmd}" in out.stdout


def test_config_error_names_the_key_path(tmp_path: Path) -> None:
    site = write_site(tmp_path, router_extra='journal_max_messages = "lots"')
    out = sctl(site, "status")
    assert out.returncode == 2
    assert "router.journal_max_messages" in out.stderr and "integer" in out.stderr


def test_missing_site_file_is_clear(tmp_path: Path) -> None:
    out = sctl(tmp_path / "nope.toml", "status")
    assert out.returncode == 2 and "site file not found" in out.stderr


def test_send_to_unknown_actor_exits_3_naming_the_site(running: Path) -> None:
    out = sctl(running, "send", "reader9", "accept", "--timeout", "2")
    assert out.returncode == 3
    assert f"reader9 is not in {running}" in out.stderr


def test_send_to_stopped_actor_exits_3_within_timeout(running: Path) -> None:
    start = time.monotonic()
    out = sctl(running, "send", "reader1", "accept", "--timeout", "1.5")
    assert out.returncode == 3
    assert time.monotonic() - start < 6  # 1.5 s timeout + interpreter start-up
    assert "reader1" in out.stderr and "is it running? (sctl status)" in out.stderr


def test_send_with_router_down_exits_3(tmp_path: Path) -> None:
    site = write_site(tmp_path, extra=ACTOR_TABLE)
    out = sctl(site, "send", "reader1", "accept", "--timeout", "1")
    assert out.returncode == 3 and "router" in out.stderr and "is it running" in out.stderr


def test_pub_then_sub_since_0(running: Path) -> None:
    out = sctl(running, "pub", "evt.cli.hello", '{"n": 7}')
    assert out.returncode == 0, out.stderr
    sub = sctl(running, "sub", "evt.cli", "--since", "0", "--count", "1", "--timeout", "10",
               "--json")
    assert sub.returncode == 0, sub.stderr
    msg = json.loads(sub.stdout.splitlines()[0])
    assert msg["topic"] == "evt.cli.hello" and msg["envelope"]["data"] == {"n": 7}


def test_pub_refuses_bad_json_and_command_topics(running: Path) -> None:
    assert sctl(running, "pub", "evt.cli.x", "{nope").returncode == 2
    assert sctl(running, "pub", "evt.cli.x", "[1]").returncode == 2
    assert sctl(running, "pub", "cmd.reader1", "{}").returncode == 2
    assert sctl(running, "pub", "evt..x", "{}").returncode == 2


def test_pub_with_router_down_exits_3(tmp_path: Path) -> None:
    out = sctl(write_site(tmp_path), "pub", "evt.cli.x", "{}", "--timeout", "1")
    assert out.returncode == 3


def test_sub_timeout_exits_3(running: Path) -> None:
    out = sctl(running, "sub", "evt.nothing.here", "--count", "1", "--timeout", "1")
    assert out.returncode == 3 and "timeout" in out.stderr


def test_status_with_router_down_says_so(tmp_path: Path) -> None:
    site = write_site(tmp_path, extra=ACTOR_TABLE)
    out = sctl(site, "status", "--timeout", "0.5")
    assert out.returncode == 3  # not well: the router is down
    assert "router: DOWN" in out.stdout and "reader1" in out.stdout
    js = json.loads(sctl(site, "status", "--json", "--timeout", "0.5").stdout)
    assert js["router"] is None and js["actors"]["reader1"]["alive"] is False


def test_status_with_router_up(running: Path) -> None:
    js = json.loads(sctl(running, "status", "--json").stdout)
    assert js["router"]["last"] >= 1
    assert js["actors"]["reader1"]["alive"] is False


@pytest.fixture
def with_actor(stack: Stack) -> Iterator[Path]:
    """Router + EchoActor `reader1` (a real TCP echo device) as `sctl` processes."""
    from tests.support.echo import EchoServer

    device = EchoServer().start()
    site = stack.write('[actors.reader1]\ntype = "tests.support.actors:EchoActor"\n'
                       f"port = {device.port}\nheartbeat_interval = 0.2\n")
    stack.start_router()
    actor = stack.start_actor("reader1", log="actor")
    try:
        out = sctl(site, "ping", "reader1", "--timeout", "20")
        assert out.returncode == 0, out.stderr + actor.output()
        yield site
    finally:
        stack.stop()
        device.close()


def test_send_positional_and_named_args(with_actor: Path) -> None:
    out = sctl(with_actor, "send", "reader1", "add", "2", "b=40")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"
    js = json.loads(sctl(with_actor, "send", "reader1", "add", "5", "--json").stdout)
    assert js == {"status": "ok", "result": 6, "error": ""}


def test_send_error_reply_exits_1_with_the_reason(with_actor: Path) -> None:
    out = sctl(with_actor, "send", "reader1", "add", "two")
    assert out.returncode == 1
    assert "parameter a" in out.stderr and "two" in out.stderr
    out = sctl(with_actor, "send", "reader1", "no_such_command")
    assert out.returncode == 1 and "no_such_command" in out.stderr
    out = sctl(with_actor, "send", "reader1", "fail")
    assert out.returncode == 1


def test_send_escaped_text_reaches_the_device(with_actor: Path) -> None:
    out = sctl(with_actor, "send", "reader1", "echo", "hello device")
    assert out.returncode == 0, out.stderr
    assert "hello device" in out.stdout


def test_describe_and_ping(with_actor: Path) -> None:
    out = sctl(with_actor, "describe", "reader1")
    assert out.returncode == 0, out.stderr
    assert "add <a:int> [b:int=1]" in out.stdout and "echo <text:str>" in out.stdout
    out = sctl(with_actor, "ping", "reader1")
    assert out.returncode == 0 and "pong in" in out.stdout


def test_status_shows_the_running_actor(with_actor: Path) -> None:
    def link_up() -> bool:
        a = json.loads(sctl(with_actor, "status", "--json").stdout)["actors"]["reader1"]
        return bool(a["alive"] and a["state"] == "running" and a["link"]["state"] == "up")

    wait_for(link_up, timeout=20, what="reader1 running with its link up in sctl status")
    text = sctl(with_actor, "status").stdout
    row = next(line for line in text.splitlines() if line.startswith("reader1 "))
    assert " up " in row, text


def test_actor_that_stopped_is_reported_as_stopped_not_silent(stack: Stack) -> None:
    from tests.support.echo import EchoServer

    device = EchoServer().start()
    site = stack.write('[actors.reader1]\ntype = "tests.support.actors:EchoActor"\n'
                       f"port = {device.port}\nheartbeat_interval = 5\n")
    router = stack.start_router()
    actor = stack.start_actor("reader1", log="actor")
    try:
        assert sctl(site, "ping", "reader1", "--timeout", "20").returncode == 0, actor.output()
        assert actor.stop() == 0  # SIGTERM: graceful, its last heartbeat says "stopping"
        out = sctl(site, "send", "reader1", "add", "1", "--timeout", "1")
        assert out.returncode == 3 and "stopped" in out.stderr, out.stderr
        js = json.loads(sctl(site, "status", "--json").stdout)
        assert js["actors"]["reader1"]["alive"] is False
    finally:
        router.stop()
        device.close()


def test_top_once_shows_actors_rates_and_router(with_actor: Path) -> None:
    out = sctl(with_actor, "top", "--once", "--json", "--interval", "2.5")
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    a = snap["actors"]["reader1"]
    assert a["state"] == "running" and a["link"] == "up" and a["dropped"] == 0
    assert any(t["topic"] == "hb.reader1" and t["per_s"] > 0 for t in snap["topics"])
    assert snap["router"] is not None and snap["router"]["gaps_lost"] == 0
    text = sctl(with_actor, "top", "--once", "--interval", "1.5").stdout
    assert "reader1" in text and "router: in" in text
