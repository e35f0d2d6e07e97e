"""Commands on the site file itself: `sctl deploy render` writes (or, with --check, compares)
the supervisord configuration that `cli.ops.supervisord` renders from it."""

from __future__ import annotations

import click

from cli.common import EXIT_ERROR_REPLY, EXIT_USAGE, fail, site_of


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
@click.pass_context
def render(ctx: click.Context, host: str | None, output: str | None, check: bool) -> None:
    """Write the supervisord configuration of the site (router, watchdog, services, actors)."""
    from pathlib import Path

    from cli.ops.supervisord import render as render_site

    site = site_of(ctx)
    if host is not None and host not in site.hosts():
        fail(f"--host {host!r}: no program of {site.path} runs on it (hosts: "
             f"{', '.join(repr(h) for h in site.hosts())})", EXIT_USAGE)
    target = Path(output) if output and output != "-" else site.folder / "actors.conf"
    text = render_site(site, target, host)
    if output == "-":
        click.echo(text, nl=False)
    elif check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            fail(f"{target} is stale: run `sctl -c {site.path} deploy render"
                 f"{'' if host is None else ' --host ' + host}`", EXIT_ERROR_REPLY)
        click.echo(f"{target} is up to date")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        click.echo(f"wrote {target}")
