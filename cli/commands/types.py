"""`sctl describe TYPE`: what an actor type accepts, read from the type itself, so that no
actor needs to run (`actors.registry.describe_type`). `sctl describe NAME` of an actor of the
site asks the running actor instead (`cli.commands.messages.describe`)."""

from __future__ import annotations

from typing import Any

import click

from actors.registry import BUILTIN
from broker.config import read_site
from broker.wire.errors import ConfigError
from cli.common import EXIT_USAGE, dumps, fail, json_wanted


def is_type(ctx: click.Context, name: str) -> bool:
    """Whether `name` means an actor type here: a built-in type or ``module:Class``, and not
    the name of an actor of the site (an actor of that name wins)."""
    if name not in BUILTIN and ":" not in name:
        return False
    site, _ = read_site(ctx.obj["config"])
    return site is None or name not in site.actors


def show_type(name: str) -> None:
    from actors.registry import describe_type

    try:
        info = describe_type(name)
    except ConfigError as exc:
        fail(f"TYPE {name}: {exc.reason}", EXIT_USAGE)
    if json_wanted():
        click.echo(dumps(info))
        return
    click.echo(f"{name}: {info['doc']}" if info["doc"] else name)
    width = max(len(s["name"]) for s in info["settings"])
    for title, base in ((f"settings (an [actors.NAME] table with type = \"{name}\"):", False),
                        ("settings every actor type accepts:", True)):
        click.echo(title)
        for s in info["settings"]:
            if s["base"] == base:
                click.echo(f"  {s['name']:<{width}}  {s['type']}, {_default(s)}")
                if s["doc"]:
                    click.echo(f"  {'':<{width}}    {s['doc']}")
    click.echo("commands (sctl send NAME COMMAND ARGS...):")
    for cmd in info["commands"]:
        params = " ".join(_param(p) for p in cmd["params"])
        click.echo(f"  {cmd['name']} {params}".rstrip())
        if cmd["doc"]:
            click.echo(f"      {cmd['doc']}")


def _default(s: dict[str, Any]) -> str:
    if s["required"]:
        return "required"
    return "no default" if s["default"] is None else f"default {dumps(s['default'])}"


def _param(p: dict[str, Any]) -> str:
    text = f"{p['name']}:{p['type']}"
    return f"<{text}>" if p["required"] else f"[{text}={p.get('default')!r}]"
