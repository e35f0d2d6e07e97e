"""`sctl keys gen|allow|revoke|list`: the CURVE keys of a site with [router.security]. The
keys live in its keys_dir (or --dir); `broker.security` does the work, these commands choose
the folder and the role and print what changed."""

from __future__ import annotations

from typing import Any

import click

from broker.wire.errors import ConfigError
from cli.common import EXIT_USAGE, dumps, fail, json_option, site_of


@click.group()
@click.option("--dir", "keys_dir", default=None, metavar="DIR",
              help="keys folder (default: [router.security] keys_dir of the site file)")
@click.pass_context
def keys(ctx: click.Context, keys_dir: str | None) -> None:
    """CURVE keys of the site ([router.security]): NAME.key public, NAME.key_secret 0600."""
    ctx.obj["keys_dir"] = keys_dir


def _keys_dir(ctx: click.Context) -> Any:
    from pathlib import Path

    if ctx.obj.get("keys_dir"):
        return Path(ctx.obj["keys_dir"])
    site = site_of(ctx)
    if "keys_dir" not in site.router.security:
        fail(f"{site.path} has no [router.security] table: add one (keys_dir = \"keys\") "
             f"or give --dir", EXIT_USAGE)
    return site.router.security["keys_dir"]


@keys.command("gen")
@click.argument("name")
@click.option("--role", type=click.Choice(["operator", "actor", "reader"]), default=None,
              help="default: actor for an actor of the site file, else reader")
@json_option
@click.pass_context
def keys_gen(ctx: click.Context, name: str, role: str | None, as_json: bool) -> None:
    """Create the key pair of NAME (`router` for the router's own)."""
    from broker.security import gen_key

    keys_dir = _keys_dir(ctx)
    if role is None:
        in_site = not ctx.obj.get("keys_dir") and name in site_of(ctx).actors
        role = "actor" if in_site else "reader"
    try:
        public = gen_key(keys_dir, name, role)
    except (ConfigError, OSError) as exc:
        fail(str(exc), EXIT_USAGE)
    if as_json:
        click.echo(dumps({"name": name, "role": role, "public": str(public),
                          "secret": f"{public}_secret"}))
        return
    what = "the router's key pair" if name == "router" else f"{name} ({role})"
    click.echo(f"wrote {what}: {public} and {public}_secret (mode 0600)")


@keys.command("allow")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--role", type=click.Choice(["operator", "actor", "reader"]), default=None,
              help="default: the file's role metadata, else reader")
@click.option("--name", default=None, help="key name (default: the file name before .key)")
@json_option
@click.pass_context
def keys_allow(ctx: click.Context, file: str, role: str | None, name: str | None,
               as_json: bool) -> None:
    """Let the key of FILE in: its public key is copied to keys_dir (never its secret)."""
    from pathlib import Path

    from broker.security import allow_key, role_of

    try:
        target = allow_key(_keys_dir(ctx), Path(file), role, name)
    except (ConfigError, OSError) as exc:
        fail(str(exc), EXIT_USAGE)
    if as_json:
        click.echo(dumps({"name": target.name[:-4], "role": role_of(target),
                          "public": str(target)}))
    else:
        click.echo(f"allowed {target.name[:-4]} ({role_of(target)}): {target}")


@keys.command("revoke")
@click.argument("name")
@json_option
@click.pass_context
def keys_revoke(ctx: click.Context, name: str, as_json: bool) -> None:
    """Refuse NAME's key from now on (a running router picks it up within a second)."""
    from broker.security import revoke_key

    try:
        target = revoke_key(_keys_dir(ctx), name)
    except (ConfigError, OSError) as exc:
        fail(str(exc), EXIT_USAGE)
    if as_json:
        click.echo(dumps({"name": name, "revoked": str(target)}))
    else:
        click.echo(f"revoked {name}: {target}")


@keys.command("list")
@json_option
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    """Every key: name, role, allowed/revoked, whether its secret is on this host."""
    from broker.security import list_keys

    rows = list_keys(_keys_dir(ctx))
    if as_json:
        click.echo(dumps(rows))
        return
    click.echo(f"{'NAME':<24}{'ROLE':<10}{'STATE':<9}SECRET")
    for r in rows:
        click.echo(f"{r['name']:<24}{r['role']:<10}{r['state']:<9}"
                   f"{'here' if r['has_secret'] else '-'}")
