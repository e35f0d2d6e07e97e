"""Mistakes on the command line: one line naming the argument, exit 2, before anything runs
(nothing here opens a socket); with --json the same as {"error", "code"} on stdout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli.main import main
from tests.support.stack import write_site


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


@pytest.mark.parametrize(("argv", "named"), [
    (["status", "--timeout", "soon"], "'--timeout'"),
    (["send"], "'ACTOR'"),
    (["send", "reader1", "accept", "--timeout", "-1"], "'--timeout'"),
    (["sub", "--count", "0"], "'--count'"),
    (["top", "--interval", "0"], "'--interval'"),
    (["signal", "BOGUS", "reader1"], "'SIG'"),
    (["signal", "HUP"], "'PROGRAM...'"),
    (["start"], "'PROGRAM...'"),
    (["logs", "reader1", "-n", "-3"], "'-n'"),
    (["logs"], "'PROGRAM'"),
    (["stop", "reader1", "--timeout", "0"], "'--timeout'"),
    (["nosuch"], "nosuch"),
    (["status", "--colour"], "--colour"),
])
def test_usage_errors_name_the_argument(capsys: pytest.CaptureFixture[str], argv: list[str],
                                        named: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], err
    assert lines[0].startswith("sctl") and "--help" in lines[0]


def test_usage_error_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "status", "--json", "--timeout", "soon")
    assert code == 2 and err == ""
    assert json.loads(out) == {"code": 2, "error": json.loads(out)["error"]}
    assert "'--timeout'" in json.loads(out)["error"]


def test_bad_site_file_as_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "-c", str(tmp_path / "nope.toml"), "status", "--json")
    error = json.loads(out)
    assert code == 2 and error["code"] == 2 and "site file not found" in error["error"]


def test_unknown_host_and_missing_host_are_usage_errors(capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    site = write_site(tmp_path, extra='[actors.a]\ntype = "tests.support.actors:EchoActor"\n'
                      'port = 1\nruns_on = "doors"\n')
    code, _, err = run(capsys, "-c", str(site), "stop", "--host", "nope", "a")
    assert code == 2 and "--host 'nope'" in err and "'doors'" in err
    code, _, err = run(capsys, "-c", str(site), "reload")
    assert code == 2 and "--host is needed" in err
    assert not (tmp_path / "actors.conf").exists()


def test_reload_with_a_bad_site_changes_nothing(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    site = write_site(tmp_path, router_extra='journal_max_messages = "lots"')
    conf = tmp_path / "actors.conf"
    conf.write_text("; as supervisord read it\n")
    before = os.stat(conf).st_mtime_ns
    code, out, _ = run(capsys, "-c", str(site), "reload", "--json")
    assert code == 2 and json.loads(out)["code"] == 2
    assert "router.journal_max_messages" in json.loads(out)["error"]
    assert conf.read_text() == "; as supervisord read it\n" and os.stat(conf).st_mtime_ns == before


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("sctl ") and len(out.split()) == 2


def test_every_command_takes_json() -> None:
    import click

    from cli.main import app

    def commands(group: click.Group, path: str) -> list[tuple[str, click.Command]]:
        out: list[tuple[str, click.Command]] = []
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                out += commands(cmd, f"{path} {name}")
            else:
                out.append((f"{path} {name}", cmd))
        return out

    missing = [path for path, cmd in commands(app, "sctl")
               if "--json" not in {o for p in cmd.params for o in getattr(p, "opts", [])}]
    assert not missing


@pytest.mark.parametrize(("argv", "named"), [
    (["pub", "evt..x", "{}"], "TOPIC 'evt..x'"),
    (["pub", "cmd.reader1", "{}"], "TOPIC 'cmd.reader1'"),
    (["pub", "evt.x.y", "{nope"], "JSON"),
    (["pub", "evt.x.y", "[1]"], "JSON must be an object"),
    (["sub", "evt.ok.", "evt..x"], "PREFIX 'evt..x'"),
])
def test_checked_arguments_are_named_before_the_router_is_asked(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], named: str) -> None:
    site = write_site(tmp_path)  # its router is never started: nothing may reach for it
    code, out, err = run(capsys, "-c", str(site), *argv)
    assert code == 2 and out == "" and err.startswith(f"sctl: {named}"), err
