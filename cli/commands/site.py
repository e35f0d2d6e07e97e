"""Commands on the site file itself: `sctl check` validates it (`cli.ops.validate`), `sctl
deploy render` validates it and then writes (or, with --check, compares) the supervisord
configuration that `cli.ops.supervisord` renders from it. A site with a problem is refused
before anything is written or started: every problem is listed and the exit code is 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import click

from broker.config import SiteConfig
from broker.wire.errors import ConfigError
from cli.common import (
    EXIT_ERROR_REPLY,
    EXIT_USAGE,
    check_host,
    dumps,
    fail,
    json_option,
    json_wanted,
)


def problem_map(p: ConfigError) -> dict[str, str]:
    return {"file": p.source, "path": p.path, "reason": p.reason}


def refuse(problems: list[ConfigError], what: str) -> NoReturn:
    """Every problem on stderr (``sctl: FILE: PATH: REASON``), then exit 2; with ``--json``
    one object ``{"error", "code", "problems": [{"file", "path", "reason"}]}`` on stdout."""
    summary = f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in the site file; " \
              f"{what}"
    if json_wanted():
        click.echo(dumps({"error": summary, "code": EXIT_USAGE, "ok": False,
                          "problems": [problem_map(p) for p in problems]}))
        raise SystemExit(EXIT_USAGE)
    for p in problems:
        click.echo(f"sctl: {p}", err=True)
    fail(summary, EXIT_USAGE)


def valid_site(ctx: click.Context, what: str) -> SiteConfig:
    """The site of this invocation once `validate_file` found nothing; else `refuse`."""
    from cli.ops.validate import validate_file

    site, problems = validate_file(ctx.obj["config"])
    if problems or site is None:
        refuse(problems, what)
    return site


@click.command()
@json_option
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Check the site file: every table against what it may hold, every actor table against
    its type's settings, the rules between them. Exit 0 when it is fine, 2 listing every
    problem (file, key path, reason)."""
    site = valid_site(ctx, "fix them, then check again")
    summary = _summary(site)
    if as_json:
        click.echo(dumps({"file": str(site.path), "ok": True, "problems": [], **summary}))
    else:
        counts = ", ".join(f"{n} {k if n != 1 else k[:-1]}" for k, n in summary.items())
        click.echo(f"{site.path}: OK ({counts})")


def _summary(site: SiteConfig) -> dict[str, Any]:
    return {"actors": len(site.actors), "services": len(site.services),
            "hosts": len(site.hosts())}


@click.group()
def deploy() -> None:
    """Deployment: the supervisord file rendered from the site file."""


@deploy.command()
@click.option("--host", default=None, help="only the programs placed on this host (runs_on; "
              "the router's host is named by [router] runs_on, \"\" by default)")
@click.option("-o", "--output", default=None, metavar="FILE",
              help="where to write (default: actors.conf next to the site file; - = stdout)")
@click.option("--check", is_flag=True, help="write nothing; exit 1 if FILE is not what "
              "rendering gives now (stale)")
@json_option
@click.pass_context
def render(ctx: click.Context, host: str | None, output: str | None, check: bool,
           as_json: bool) -> None:
    """Check the site file, then write its supervisord configuration (router, watchdog,
    services, actors) and make the log, socket and journal folders it names."""
    from cli.ops.supervisord import make_runtime_folders
    from cli.ops.supervisord import render as render_site

    site = valid_site(ctx, "nothing was written")
    check_host(site, host)
    target = Path(output) if output and output != "-" else site.folder / "actors.conf"
    if target.is_dir():
        fail(f"-o {output}: is a folder; name the file to write", EXIT_USAGE)
    text = render_site(site, target, host)
    if output == "-":
        click.echo(text, nl=False)
        return
    if check:
        current = target.read_text(encoding="utf-8") if target.is_file() else ""
        if current != text:
            fail(f"{target} is stale: run `sctl -c {site.path} deploy render"
                 f"{'' if host is None else ' --host ' + host}`", EXIT_ERROR_REPLY)
        _done(as_json, target, "up to date")
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {target}: {exc.strerror or exc}", EXIT_USAGE)
    problems = make_runtime_folders(site)
    if problems:
        refuse(problems, f"{target} was written, but supervisord cannot start without them")
    _done(as_json, target, "wrote")


def _done(as_json: bool, target: Path, what: str) -> None:
    if as_json:
        click.echo(dumps({"file": str(target), "result": what.replace(" ", "_")}))
    else:
        click.echo(f"wrote {target}" if what == "wrote" else f"{target} is {what}")
