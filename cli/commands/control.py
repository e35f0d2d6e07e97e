"""supervisorctl's verbs in sctl: `start`, `stop`, `restart`, `signal`, `pid`, `logs` and
`reload`, on the supervisord of every host of the site (`cli.ops.supervisor_rpc`: the local
unix socket, or a remote host's authenticated inet_http_server), ``--host`` to narrow.

PROGRAM patterns: ``NAME``, ``GROUP:*``, ``GROUP:NAME``, ``all``. A pattern that matches no
program is a usage error, found before anything is done.

start/stop/restart act in supervisord's priority order (router first up, last down), every
program of one priority at once, and wait until each has reached the state: a program that
fails to start is reported with the last error line of its log.

Exit codes: 0 every program reached the state asked for (starting a running program, or
stopping a stopped one, is no failure); 1 supervisord refused, or a program failed; 2 bad
usage or a bad site file; 3 a supervisord did not answer, or a program did not reach the state
in time.
"""

from __future__ import annotations

import signal as signals
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import click

from cli.common import (
    EXIT_ERROR_REPLY,
    EXIT_NO_REPLY,
    EXIT_OK,
    EXIT_USAGE,
    check_host,
    dumps,
    fail,
    json_option,
    json_wanted,
    setup_logging,
    site_of,
)

if TYPE_CHECKING:  # imported when a command runs: `sctl --help` and the others start faster
    from broker.config import SiteConfig
    from cli.ops.programs import Job
    from cli.ops.supervisor_rpc import Supervisor

RPC_TIMEOUT: Final = 5.0
FOLLOW_EVERY: Final = 0.25  # seconds between reads of a followed log
FOLLOW_CHUNK: Final = 1 << 20  # bytes asked for per read; more written in between is skipped

host_option = click.option("--host", default=None, metavar="HOST",
                           help="only the supervisord of this host (runs_on); default: every "
                           "host of the site")
timeout_option = click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
                              default=None, help="seconds to wait for each priority level "
                              "(default: startsecs + 10 to start, stopwaitsecs + 5 to stop)")


# --- finding the programs ----------------------------------------------------------------


def _jobs(ctx: click.Context, patterns: Iterable[str], host: str | None) -> list[Job]:
    """The programs `patterns` name on the supervisords of the site (or `host`'s). Exits 2
    when a pattern matches nothing, 3 when that may be because a supervisord did not answer."""
    from cli.ops.programs import Job
    from cli.ops.supervisor_rpc import (
        Supervisor,
        SupervisorError,
        endpoints,
        namespec,
        pattern_problem,
        select,
        shown_name,
    )

    site = site_of(ctx)
    check_host(site, host)
    eps = endpoints(site, host)
    found: list[tuple[Supervisor, list[dict[str, Any]], dict[str, dict[str, Any]]]] = []
    unreachable = []
    for ep in eps:
        client = Supervisor(ep, RPC_TIMEOUT)
        try:
            infos = client.processes()
            configs = {f"{c['group']}:{c['name']}": c for c in client.call("getAllConfigInfo")}
        except SupervisorError as exc:
            unreachable.append(str(exc))
            continue
        found.append((client, infos, configs))
    every = [i for _, infos, _ in found for i in infos]
    for pattern in patterns:
        problem = pattern_problem(pattern, every)
        if problem is not None:
            if unreachable:
                fail(f"{pattern}: {problem}; and {'; '.join(unreachable)}", EXIT_NO_REPLY)
            fail(f"{pattern}: {problem}", EXIT_USAGE)
    for message in unreachable:  # what can be done is done; the exit code says the rest
        _warn(message)
    jobs = [Job(client, info, configs.get(namespec(info), {}),
                shown_name(info) + (f" ({client.endpoint.label})" if len(eps) > 1 else ""))
            for client, infos, configs in found for info in select(infos, list(patterns))]
    if unreachable:
        ctx.meta["sctl.unreachable"] = True
    ctx.meta["sctl.site"] = site
    return jobs


def _warn(message: str) -> None:
    if not json_wanted():
        click.echo(f"sctl: {message}", err=True)


def _finish(ctx: click.Context, jobs: list[Job], action: str) -> None:
    """Print what came of each job and exit with the worst code."""
    code = max([j.code for j in jobs], default=EXIT_OK)
    if ctx.meta.get("sctl.unreachable"):
        code = max(code, EXIT_NO_REPLY)
    if json_wanted():
        out: dict[str, Any] = {"action": action, "programs": [
            {"name": j.info["name"], "group": j.info["group"],
             "host": j.client.endpoint.label, "result": j.result, "ok": j.code == EXIT_OK}
            for j in jobs]}
        if code:
            failed = sum(1 for j in jobs if j.code)
            out.update(error=f"{failed} of {len(jobs)} programs failed" if failed else
                       "a supervisord did not answer", code=code)
        click.echo(dumps(out))
    else:
        for j in jobs:
            click.echo(f"{j.label}: {j.result}", err=bool(j.code))
    sys.exit(code)


# --- start / stop --------------------------------------------------------------------------


def _program_verb(fn: Callable[..., None]) -> click.Command:
    """The arguments and options that start, stop and restart share."""
    for decorate in (click.pass_context, json_option, timeout_option, host_option,
                     click.argument("patterns", nargs=-1, required=True, metavar="PROGRAM...")):
        fn = decorate(fn)
    return click.command(name=fn.__name__)(fn)


@_program_verb
def start(ctx: click.Context, patterns: tuple[str, ...], host: str | None,
          timeout: float | None, as_json: bool) -> None:
    """Start PROGRAMs (NAME, GROUP:*, GROUP:NAME or all) and wait until they run."""
    from cli.ops.programs import Beats, start_jobs

    setup_logging(ctx.obj["verbose"])
    jobs = _jobs(ctx, patterns, host)
    with Beats(ctx.meta["sctl.site"]) as beats:
        start_jobs(jobs, timeout, beats)
    _finish(ctx, jobs, "start")


@_program_verb
def stop(ctx: click.Context, patterns: tuple[str, ...], host: str | None,
         timeout: float | None, as_json: bool) -> None:
    """Stop PROGRAMs (NAME, GROUP:*, GROUP:NAME or all) and wait until they have stopped.
    The watchdog leaves a stopped program alone."""
    from cli.ops.programs import stop_jobs

    setup_logging(ctx.obj["verbose"])
    jobs = _jobs(ctx, patterns, host)
    stop_jobs(jobs, timeout)
    _finish(ctx, jobs, "stop")


@_program_verb
def restart(ctx: click.Context, patterns: tuple[str, ...], host: str | None,
            timeout: float | None, as_json: bool) -> None:
    """Stop, then start PROGRAMs (NAME, GROUP:*, GROUP:NAME or all)."""
    from cli.ops.programs import Beats, start_jobs, stop_jobs

    setup_logging(ctx.obj["verbose"])
    jobs = _jobs(ctx, patterns, host)
    stop_jobs(jobs, timeout)
    for job in jobs:
        if job.code == EXIT_OK:
            job.result = ""
    with Beats(ctx.meta["sctl.site"]) as beats:
        start_jobs([j for j in jobs if not j.result], timeout, beats)
    _finish(ctx, jobs, "restart")


# --- signal / pid --------------------------------------------------------------------------


class SignalName(click.ParamType[str]):
    """HUP, SIGHUP, hup or 1: converted to supervisord's name for it (HUP)."""

    name = "SIG"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        text = str(value).upper()
        text = text[3:] if text.startswith("SIG") else text
        try:
            sig = signals.Signals(int(text)) if text.isdigit() else signals.Signals[f"SIG{text}"]
        except (KeyError, ValueError):
            self.fail(f"{value!r} is not a signal (such as HUP, USR1, TERM or 15)", param, ctx)
        return sig.name[3:]


@click.command("signal")
@click.argument("sig", type=SignalName(), metavar="SIG")
@click.argument("patterns", nargs=-1, required=True, metavar="PROGRAM...")
@host_option
@json_option
@click.pass_context
def signal_cmd(ctx: click.Context, sig: str, patterns: tuple[str, ...], host: str | None,
               as_json: bool) -> None:
    """Send signal SIG (HUP, USR1, 15 ...) to running PROGRAMs."""
    from cli.ops.programs import NOT_RUNNING_FAULT, call

    setup_logging(ctx.obj["verbose"])
    jobs = _jobs(ctx, patterns, host)
    for job in jobs:
        fault = call(job, "signalProcess", sig)
        if job.result:
            continue
        if fault is None:
            job.done(f"signalled {sig}")
        elif fault.faultCode == NOT_RUNNING_FAULT:
            job.done(f"ERROR not running ({job.info['statename']})", EXIT_ERROR_REPLY)
        else:
            job.done(f"ERROR {fault.faultString}", EXIT_ERROR_REPLY)
    _finish(ctx, jobs, "signal")


@click.command()
@click.argument("patterns", nargs=-1, metavar="[PROGRAM]...")
@host_option
@json_option
@click.pass_context
def pid(ctx: click.Context, patterns: tuple[str, ...], host: str | None, as_json: bool) -> None:
    """The pid of each PROGRAM; without one, the pid of each host's supervisord. A program
    that is not running prints nothing and makes the exit status 1."""
    from cli.ops.supervisor_rpc import Supervisor, SupervisorError, endpoints

    setup_logging(ctx.obj["verbose"])
    if not patterns:
        site = site_of(ctx)
        check_host(site, host)
        pids: dict[str, int] = {}
        for ep in endpoints(site, host):
            try:
                pids[ep.label] = int(Supervisor(ep, RPC_TIMEOUT).call("getPID"))
            except SupervisorError as exc:
                fail(str(exc), EXIT_NO_REPLY)
        if as_json:
            click.echo(dumps({"supervisord": pids}))
        else:
            for label, number in pids.items():
                click.echo(str(number) if len(pids) == 1 else f"{label}: {number}")
        return
    jobs = _jobs(ctx, patterns, host)
    for job in jobs:
        number = int(job.info["pid"] or 0)
        job.done(str(number)) if number else job.done(
            f"not running ({job.info['statename']})", EXIT_ERROR_REPLY)
    if as_json:
        _finish(ctx, jobs, "pid")
    for job in jobs:
        if job.code:
            click.echo(f"sctl: {job.label}: {job.result}", err=True)
        else:
            click.echo(job.result if len(jobs) == 1 else f"{job.label}: {job.result}")
    sys.exit(max(j.code for j in jobs))


# --- logs ----------------------------------------------------------------------------------


@click.command()
@click.argument("pattern", metavar="PROGRAM")
@click.option("-f", "--follow", is_flag=True, help="keep printing what the program writes "
              "(Ctrl-C to stop)")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=20, show_default=True,
              help="lines of the end of the log to print first")
@click.option("--stderr", is_flag=True, help="its stderr log (programs rendered by sctl "
              "send stderr to the stdout log)")
@host_option
@json_option
@click.pass_context
def logs(ctx: click.Context, pattern: str, follow: bool, lines: int, stderr: bool,
         host: str | None, as_json: bool) -> None:
    """Print the end of PROGRAM's log (read through supervisord, on whichever host it runs);
    with -f, follow it. With --json, one {"program", "line"} object per line."""
    import xmlrpc.client

    from cli.ops.supervisor_rpc import SupervisorError, namespec

    setup_logging(ctx.obj["verbose"])
    jobs = _jobs(ctx, [pattern], host)
    if len(jobs) != 1:
        fail(f"{pattern}: matches {len(jobs)} programs ({', '.join(j.label for j in jobs)}): "
             "logs shows one", EXIT_USAGE)
    job = jobs[0]
    spec = namespec(job.info)
    method = "tailProcessStderrLog" if stderr else "tailProcessStdoutLog"
    show = _line_printer(job.info["name"], as_json)
    try:
        text, offset = _last_lines(job.client, method, spec, lines)
        for line in text:
            show(line + "\n")
        if follow:
            signals.signal(signals.SIGTERM, lambda *_: sys.exit(EXIT_OK))
            _follow(job.client, method, spec, offset, show)
    except SupervisorError as exc:
        fail(str(exc), EXIT_NO_REPLY)
    except xmlrpc.client.Fault as fault:  # NO_FILE: the program logs elsewhere, or nowhere
        fail(f"{job.label}: {fault.faultString}", EXIT_ERROR_REPLY)
    except KeyboardInterrupt:
        pass


def _last_lines(client: Supervisor, method: str, spec: str,
                n: int) -> tuple[list[str], int]:
    """The last `n` lines of the log and its size (where following continues)."""
    size = 4096
    while True:
        data, offset, overflow = client.call(method, spec, 0, size)
        lines = str(data).splitlines()
        if overflow and lines:
            lines = lines[1:]  # the first one is cut
        if not overflow or len(lines) >= n or size >= 64 << 20:
            return (lines[-n:] if n else []), int(offset)
        size *= 4


def _follow(client: Supervisor, method: str, spec: str, offset: int,
            show: Callable[[str], None]) -> None:
    while True:
        data, end, overflow = client.call(method, spec, offset, FOLLOW_CHUNK)
        if end < offset:  # rotated: the new file from its start
            offset = 0
            continue
        if overflow:
            show(f"[... {end - offset - len(data)} bytes skipped ...]\n")
        if data:
            show(str(data))
        offset = int(end)
        time.sleep(FOLLOW_EVERY)


def _line_printer(program: str, as_json: bool) -> Callable[[str], None]:
    """Write text as it comes; with `as_json`, each complete line as a JSON object."""
    partial = [""]

    def show(text: str) -> None:
        if not as_json:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        *complete, partial[0] = (partial[0] + text).split("\n")
        for line in complete:
            click.echo(dumps({"program": program, "line": line}))
        sys.stdout.flush()

    return show


# --- reload --------------------------------------------------------------------------------


def _checked_site(ctx: click.Context) -> SiteConfig:
    """The site file read and checked as `sctl check` does; every problem is listed and
    nothing changes (exit 2)."""
    from cli.ops.validate import validate_file

    site, problems = validate_file(ctx.obj["config"])
    if problems or site is None:
        texts = [str(p) for p in problems] or ["the site file cannot be read"]
        if json_wanted():
            fail("; ".join(texts) + "; nothing changed", EXIT_USAGE)
        for text in texts[:-1]:
            click.echo(f"sctl: {text}", err=True)
        fail(f"{texts[-1]}; nothing changed", EXIT_USAGE)
    return site


@click.command()
@host_option
@click.option("-o", "--output", default=None, metavar="FILE", help="the supervisord file "
              "that supervisord was started with (default: actors.conf next to the site file)")
@timeout_option
@json_option
@click.pass_context
def reload(ctx: click.Context, host: str | None, output: str | None, timeout: float | None,
           as_json: bool) -> None:
    """Apply the site file: render and check it, then supervisord rereads the rendered file
    and adds, removes or restarts the programs whose definition changed, and every running
    actor whose settings changed since it started is restarted. The others keep running.
    A site file with a mistake changes nothing (exit 2). Run it on the host it names."""
    from cli.ops import reload as apply

    setup_logging(ctx.obj["verbose"])
    site = _checked_site(ctx)
    check_host(site, host)
    if host is None and len(site.hosts()) > 1:
        fail(f"--host is needed: {site.path} places programs on several hosts "
             f"({', '.join(repr(h) for h in site.hosts())}), each with its own supervisord "
             "file", EXIT_USAGE)
    target = Path(output) if output else site.folder / "actors.conf"
    try:
        outcome = apply.reload_site(site, host, target, timeout)
    except apply.ReloadError as exc:
        fail(str(exc), exc.code)
    if as_json:
        out = outcome.to_data()
        if outcome.code:
            out.update(error="; ".join(outcome.failed) or "not every change was applied",
                       code=outcome.code)
        click.echo(dumps(out))
    else:
        for line in outcome.lines():
            click.echo(line)
    sys.exit(outcome.code)
