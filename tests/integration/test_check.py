"""Every mistake an operator can make in a site file is refused before anything starts: ``sctl
check`` and ``sctl deploy render`` exit 2 and name the file, the key path and the reason;
render writes nothing. Also ``sctl init`` and ``sctl describe TYPE`` as an operator runs them.

The mistakes run through `cli.main.main` in this process (the real entry point, the real files,
without a fresh interpreter per case); `test_refusal_as_a_process`
runs a few of them as ``sctl`` processes, the way scripts see the exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cli.main import main
from tests.support.certs import Pki, pki  # noqa: F401  (the fixture)
from tests.support.stack import ROOT, sctl_cmd, subprocess_env

pytestmark = pytest.mark.timeout(60)

READER = '[actors.r1]\ntype = "springcore-tcp"\nhost = "10.0.0.5"\n'
SIM = '[actors.door-sim]\ntype = "sim-springcore-tcp"\nport = 14000\n'
PSU = '[actors.psu1]\ntype = "bus-link"\nhost = "10.0.0.6"\nport = 5025\n'
POLL = '[[actors.psu1.poll]]\nevery = {every}\ncommand = "{command}"\nargs = []\nevent = "v"\n'
SCADA = '[actors.scada]\ntype = "iec104-server"\nallow = ["127.0.0.1"]\nport = 12404\n'
POINT = '[[actors.scada.point]]\nioa = {ioa}\ntype = "{type}"\ntopic = "evt.r1.tag"\ncount = true\n'
ROUTE = '[[actors.scada.command]]\nioa = 2000\ntype = "C_SC_NA_1"\nactor = "{actor}"\n' \
        'on = "{on}"\noff = "deny"\n'
MQTT = '[actors.m]\ntype = "springcore-mqtt"\n'
SPEC = '[actors.spec1]\ntype = "spec-client"\n'
LONG = "x" * 120

# (site file text, key path the refusal names, a piece of its reason)
MISTAKES: list[tuple[str, str, str]] = [
    ("[router\n", "", "not valid TOML"),
    ("[routr]\n", "routr", "unknown top-level table"),
    ('[router]\ningres = "tcp://127.0.0.1:5570"\n', "router.ingres", "unknown key"),
    ('[router]\ningress = "127.0.0.1:5570"\n', "router.ingress", "ZeroMQ endpoint"),
    ('[router]\negress = "tcp://127.0.0.1:5570"\n', "router.egress", "same endpoint"),
    ("[router]\njournal_max_messages = 0\n", "router.journal_max_messages", "greater than 0"),
    ('[router]\njournal_fsync = "yes"\n', "router.journal_fsync", "expected true/false"),
    ('[router.security]\ncurve = "on"\n', "router.security.curve", "expected true/false"),
    ("[supervisor]\nlog_backups = -1\n", "supervisor.log_backups", "0 or more"),
    ('[supervisor]\nsctl = "nowhere/sctl"\n', "supervisor.sctl", "not an executable"),
    ('[supervisor]\nuser = "nosuchuser-x1"\n', "supervisor.user", "no user"),
    ('[supervisor]\nuser = "Bad User"\n', "supervisor.user", "user name"),
    (f'[supervisor]\nsocket = "{LONG}/supervisor.sock"\n', "supervisor.socket", "bytes long"),
    ("[services.m]\npriority = 5\n", "services.m.command", "is required"),
    ('[services.m]\ncommand = "/nonexistent/bin/broker -v"\n', "services.m.command",
     "no such executable"),
    ('[services.r1]\ncommand = "/bin/true"\n' + READER, "services.r1", "an actor"),
    ('[actors.r1]\nhost = "10.0.0.5"\n', "actors.r1.type", "is required"),
    ('[actors.r1]\ntype = "springcore-tpc"\n', "actors.r1.type", "unknown actor type"),
    ('[actors.r1]\ntype = "nosuch.module:Thing"\n', "actors.r1.type", "cannot import"),
    ("[actors]\nr1 = 5\n", "actors.r1", "must be a table"),
    ('[actors."bad name"]\ntype = "springcore-tcp"\n', "actors.bad name", "not usable"),
    ('[actors.router]\ntype = "springcore-tcp"\n', "actors.router", "reserved"),
    ('[actors.r1]\ntype = "springcore-tcp"\n', "actors.r1.host", "is required"),
    (READER + 'port = "4000"\n', "actors.r1.port", "expected an integer"),
    (READER + "port = 70000\n", "actors.r1.port", "TCP port 1-65535"),
    (READER + 'colour = "red"\n', "actors.r1.colour", "unknown key"),
    (READER + "backoff_min = 5.0\nbackoff_max = 1.0\n", "actors.r1.backoff_min",
     "more than backoff_max"),
    (READER + 'runs_on = "two words"\n', "actors.r1.runs_on", "not usable"),
    (READER + 'group = "a.b"\n', "actors.r1.group", "not usable"),
    (READER + 'group = "door-sim"\n' + SIM, "actors.r1.group", "name of a program"),
    (READER + 'user = "nosuchuser-x1"\n', "actors.r1.user", "no user"),
    (PSU + POLL.format(every=0, command="read_until"), "actors.psu1.poll[0].every",
     "greater than 0"),
    (PSU + POLL.format(every=1, command="launch"), "actors.psu1.poll[0].command",
     "not a data command"),
    ('[actors.scada]\ntype = "iec104-server"\n', "actors.scada.allow", "is required"),
    (SCADA + POINT.format(ioa=100, type="M_XX_NA_1"), "actors.scada.point[0].type", "M_XX"),
    (SCADA + POINT.format(ioa=100, type="M_IT_NA_1") + POINT.format(ioa=100, type="M_IT_NA_1"),
     "actors.scada.point[1].ioa", "100"),
    (SCADA + ROUTE.format(actor="reader9", on="accept"), "actors.scada.command[0].actor",
     "not an actor of this site"),
    (READER + SCADA + ROUTE.format(actor="r1", on="acept"), "actors.scada.command[0].on",
     "no command 'acept'"),
    (SCADA + 'cert = "certs/server.crt"\nkey = "certs/server.key"\n', "actors.scada.cert",
     "no such file"),
    (SCADA + 'key = "site.toml"\n', "actors.scada.key", "needs cert"),
    (MQTT + 'tls = { ca = "ca.pem" }\n', "actors.m.tls", "does not exist"),
    (MQTT + "qos = 3\n", "actors.m.qos", "0, 1 or 2"),
    (SPEC + 'port = 6510\nspecname = "fourc"\n', "actors.spec1.port", "exactly one"),
    (SPEC + 'specname = "fourc"\nwatch = [""]\n', "actors.spec1.watch", "SPEC property name"),
    ('[actors.f]\ntype = "sim-spec-server"\ndeleted_flag = 2\n', "actors.f.deleted_flag",
     "0x1000"),
    (SIM + '[actors.psu-sim]\ntype = "sim-instrument"\nport = 14000\n', "actors.psu-sim.port",
     "already taken by actors.door-sim.port"),
    ('[actors.door-sim]\ntype = "sim-springcore-tcp"\nport = 5570\n', "actors.door-sim.port",
     "already taken by router.ingress"),
    ('[services.m]\ncommand = "/bin/true"\ncheck_port = 14000\n' + SIM, "actors.door-sim.port",
     "already taken by services.m.check_port"),
]


def sctl_here(*args: str) -> tuple[int, str, str]:
    """`sctl ARGS` through the real entry point in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            pytest.raises(SystemExit) as info:
        main(list(args))
    code = info.value.code
    return code if isinstance(code, int) else 1, out.getvalue(), err.getvalue()


def refusal_lines(err: str, site: Path) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"sctl: {site}: ")]


@pytest.mark.parametrize(("text", "path", "reason"), MISTAKES,
                         ids=[f"{i:02d}-{m[1] or 'toml'}" for i, m in enumerate(MISTAKES)])
def test_every_mistake_is_refused_with_its_key_path(tmp_path: Path, text: str, path: str,
                                                    reason: str) -> None:
    site = tmp_path / "site.toml"
    site.write_text(text, encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (("check",), ("deploy", "render")):
        code, out, err = sctl_here("-c", str(site), *args)
        assert code == 2, f"sctl {' '.join(args)}: exit {code}\n{out}{err}"
        lines = refusal_lines(err, site)
        wanted = f"sctl: {site}: {path}: " if path else f"sctl: {site}: "
        hits = [line for line in lines if line.startswith(wanted) and reason in line]
        assert hits, f"sctl {' '.join(args)} did not say {path!r}: ...{reason}...:\n{err}"
        if not path:
            assert "line 1" in hits[0]  # a TOML error says where
        assert err.rstrip().splitlines()[-1].startswith("sctl: "), err
    # nothing written: no actors.conf, no var/ folders; nothing was started
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_every_problem_of_a_file_is_listed_once_as_json(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text("[router]\ningres = 1\n[supervisor]\nlog_backups = -1\n" + READER
                    + 'port = "x"\ncolour = 1\n' + SIM + "rate = -1\n", encoding="utf-8")
    code, out, err = sctl_here("-c", str(site), "check", "--json")
    assert code == 2 and not err
    report = json.loads(out)
    assert report["code"] == 2 and "5 problems" in report["error"]
    assert [(p["path"], p["file"]) for p in report["problems"]] == [
        ("router.ingres", str(site)), ("supervisor.log_backups", str(site)),
        ("actors.r1.port", str(site)), ("actors.r1.colour", str(site)),
        ("actors.door-sim.rate", str(site))]


def test_refusal_as_a_process(tmp_path: Path) -> None:
    """Two of the mistakes through real ``sctl`` processes: exit 2, the key path on stderr,
    and render leaves no file behind."""
    for index, args in ((3, ("check",)), (36, ("deploy", "render"))):
        text, path, reason = MISTAKES[index]
        site = tmp_path / f"s{index}" / "site.toml"
        site.parent.mkdir()
        site.write_text(text, encoding="utf-8")
        out = subprocess.run(sctl_cmd("-c", str(site), *args), cwd=ROOT, env=subprocess_env(),
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, out.stderr
        assert f"{site}: {path}: " in out.stderr and reason in out.stderr
        assert [p.name for p in site.parent.iterdir()] == ["site.toml"]


def test_a_good_site_checks_and_renders(tmp_path: Path) -> None:
    site = tmp_path / "deploy" / "site.toml"
    site.parent.mkdir()
    site.write_text('[router]\njournal_path = "../var/journal.bin"\n' + READER + SIM
                    + 'group = "sims"\n', encoding="utf-8")
    code, out, err = sctl_here("-c", str(site), "check")
    assert (code, err) == (0, "") and out.strip() == f"{site}: OK (2 actors, 0 services, 1 host)"
    code, out, err = sctl_here("-c", str(site), "deploy", "render")
    assert code == 0, err
    conf = (site.parent / "actors.conf").read_text()
    assert "[group:sims]\nprograms = door-sim\n" in conf
    for folder in ("var/log", "var"):  # log, socket and journal folders exist for supervisord
        assert (tmp_path / folder).is_dir()


def test_relative_tls_files_are_taken_from_the_site_folder(tmp_path: Path, pki: Pki,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """``cert = "../pki/server.pem"`` means that file from the site file's folder, whatever the
    working directory of ``sctl check``."""
    site = tmp_path / "site.toml"
    cert, key = (os.path.relpath(p, tmp_path) for p in (pki.server.cert, pki.server.key))
    assert not Path(cert).is_absolute()
    site.write_text(SCADA + f'cert = "{cert}"\nkey = "{key}"\n', encoding="utf-8")
    monkeypatch.chdir(ROOT)
    code, _, err = sctl_here("-c", str(site), "check")
    assert code == 0, err


# --- sctl init --------------------------------------------------------------------------------


def test_init_writes_a_site_that_checks_and_refuses_to_overwrite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "plant"
    out = subprocess.run(sctl_cmd("init", str(folder)), cwd=tmp_path, env=subprocess_env(),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    names = {p.name for p in folder.iterdir()}
    assert {"site.toml", "actors.conf", "sctl.service", "README", "var"} <= names
    assert (folder / "var" / "log").is_dir()
    monkeypatch.chdir(folder)  # in the site's folder, sctl finds ./site.toml by itself
    monkeypatch.delenv("SCTL_CONFIG", raising=False)
    code, out_text, err = sctl_here("check")
    assert code == 0 and out_text.startswith("site.toml: OK (10 actors, 1 service"), err
    code, out_text, err = sctl_here("deploy", "render", "--check")
    assert code == 0, err  # actors.conf is what rendering gives
    unit = (folder / "sctl.service").read_text()
    assert f"-n -c {folder}/actors.conf" in unit and "[Install]" in unit
    code, out_text, err = sctl_here("init", str(folder))
    assert code == 2 and "already holds a site" in err and err.count("\n") == 1


def test_init_empty_and_bad_directories(tmp_path: Path) -> None:
    code, out, err = sctl_here("init", str(tmp_path / "empty"), "--empty")
    assert code == 0, err
    code, out, err = sctl_here("-c", str(tmp_path / "empty" / "site.toml"), "check", "--json")
    assert code == 0 and json.loads(out)["actors"] == 0
    (tmp_path / "afile").write_text("x")
    code, out, err = sctl_here("init", str(tmp_path / "afile"))
    assert code == 2 and "is a file" in err


def test_describe_type_needs_no_running_actor(tmp_path: Path) -> None:
    code, out, err = sctl_here("-c", str(tmp_path / "none.toml"), "describe", "bus-link")
    assert code == 0, err
    assert "  host " in out and "required" in out and "  poll " in out and "wrnrd_until" in out
    code, out, err = sctl_here("describe", "nosuch.module:Thing")
    assert code == 2 and "TYPE nosuch.module:Thing" in err
