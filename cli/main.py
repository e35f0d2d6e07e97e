"""sctl: the operator's command line (DESIGN §7). Thin: every command calls into broker/ or actors/.

Exit codes: 0 ok; 1 the actor answered with an error; 2 bad usage or a bad site file; 3 nothing
came back in time (the message says why: actor unknown, not running, or silent).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from broker.config import SiteConfig, load_site
from broker.wire.errors import BusError, ConfigError, EnvelopeError, SctlError

EXIT_ERROR_REPLY = 1
EXIT_USAGE = 2
EXIT_NO_REPLY = 3


def _setup_logging(verbose: int, default: int = logging.WARNING) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else default
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"sctl: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config", default=None, metavar="SITE.toml",
              help="site file (default $SCTL_CONFIG, then deploy/site.toml)")
@click.option("-v", "--verbose", count=True, help="more log output (-vv for debug)")
@click.option("--as", "identity", default=None, metavar="NAME",
              help="with [router.security]: the CURVE key to act as (default $SCTL_AS, then "
              "operator)")
@click.pass_context
def app(ctx: click.Context, config: str | None, verbose: int, identity: str | None) -> None:
    """sctl: run and talk to the actors of a site."""
    import os

    from broker.security import IDENTITY_ENV

    if identity:
        os.environ[IDENTITY_ENV] = identity  # every Bus this command opens acts as it
    ctx.obj = {"config": config, "verbose": verbose}


def site_of(ctx: click.Context) -> SiteConfig:
    try:
        return load_site(ctx.obj["config"])
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)


def _bus(site: SiteConfig, wait: float,
         subscribe: Sequence[tuple[str, int | None]] = ()) -> Any:
    """A connected client Bus, or exit 3 saying the router does not answer. Subscriptions are
    made before connecting, so the sync handshake fixes where they start."""
    from broker.client.bus import Bus, client_name

    try:
        bus = Bus(site.router, client_name())
    except BusError as exc:  # CURVE on and no key for the chosen identity
        _fail(str(exc), EXIT_USAGE)
    for prefix, since in subscribe:
        bus.subscribe(prefix, since=since)
    if not bus.connect(wait=wait):
        bus.close()
        _fail(f"the router at {site.router.connect_url('ingress')} did not answer within "
              f"{wait:g} s — is it running? (sctl status)", EXIT_NO_REPLY)
    return bus


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    return repr(obj)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, ensure_ascii=False)


# ---------------------------------------------------------------- processes


@app.command()
@click.pass_context
def router(ctx: click.Context) -> None:
    """Run the router of the site (binds ingress, egress, query)."""
    from broker.router.server import serve

    _setup_logging(ctx.obj["verbose"], logging.INFO)
    sys.exit(serve(site_of(ctx).router))


@app.command()
@click.argument("name")
@click.pass_context
def actor(ctx: click.Context, name: str) -> None:
    """Run actor NAME from the site file (any registered type)."""
    from cli.runner import run_actor

    _setup_logging(ctx.obj["verbose"], logging.INFO)
    site = site_of(ctx)
    try:
        site.actor(name)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    sys.exit(run_actor(site, name))


def _setting_value(text: str) -> Any:
    """``--set key=VALUE``: VALUE as a TOML value (``4001``, ``true``, ``["a", "b"]``,
    ``"text"``), else the plain string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


@app.command(context_settings={"ignore_unknown_options": False})
@click.argument("kind")
@click.option("--name", default=None, help="actor name of the simulator on the bus "
              "(default sim-KIND); if the site file has [actors.NAME], its settings are used")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="a setting, VALUE in TOML syntax (repeatable): --set port=4001")
@click.pass_context
def sim(ctx: click.Context, kind: str, name: str | None, sets: tuple[str, ...]) -> None:
    """Run the device simulator KIND as an actor (springcore-tcp, springcore-mqtt,
    spec-server, instrument, iec104-master). `sctl describe NAME` lists its commands."""
    from actors.registry import sim_config
    from cli.runner import run_actor

    _setup_logging(ctx.obj["verbose"], logging.INFO)
    site = site_of(ctx)
    overrides: dict[str, Any] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--set {item!r}: expected KEY=VALUE", EXIT_USAGE)
        overrides[key] = _setting_value(value)
    try:
        cfg = sim_config(site, kind, name, overrides)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    sys.exit(run_actor(site, cfg.name, cfg=cfg))


@app.command()
@click.option("--host", default=None, help="watch only the programs placed on this host "
              "(runs_on); default: every program of the site")
@click.pass_context
def watchdog(ctx: click.Context, host: str | None) -> None:
    """Run the watchdog: restart hung and dead actors with growing delays, stop a program
    that restarts too often and raise sys.alarm (started by supervisord, see deploy render)."""
    import signal
    import threading

    from cli.ops import watchdog as wd

    _setup_logging(ctx.obj["verbose"], logging.INFO)
    site = site_of(ctx)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    sys.exit(wd.run(site, host, stopping.is_set))


@app.group()
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
        _fail(f"--host {host!r}: no program of {site.path} runs on it (hosts: "
              f"{', '.join(repr(h) for h in site.hosts())})", EXIT_USAGE)
    target = Path(output) if output and output != "-" else site.folder / "actors.conf"
    text = render_site(site, target, host)
    if output == "-":
        click.echo(text, nl=False)
    elif check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            _fail(f"{target} is stale: run `sctl -c {site.path} deploy render"
                  f"{'' if host is None else ' --host ' + host}`", EXIT_ERROR_REPLY)
        click.echo(f"{target} is up to date")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        click.echo(f"wrote {target}")


# ---------------------------------------------------------------- keys


@app.group()
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
        _fail(f"{site.path} has no [router.security] table: add one (keys_dir = \"keys\") "
              f"or give --dir", EXIT_USAGE)
    return site.router.security["keys_dir"]


@keys.command("gen")
@click.argument("name")
@click.option("--role", type=click.Choice(["operator", "actor", "reader"]), default=None,
              help="default: actor for an actor of the site file, else reader")
@click.pass_context
def keys_gen(ctx: click.Context, name: str, role: str | None) -> None:
    """Create the key pair of NAME (`router` for the router's own)."""
    from broker.security import gen_key

    keys_dir = _keys_dir(ctx)
    if role is None:
        in_site = not ctx.obj.get("keys_dir") and name in site_of(ctx).actors
        role = "actor" if in_site else "reader"
    try:
        public = gen_key(keys_dir, name, role)
    except (ConfigError, OSError) as exc:
        _fail(str(exc), EXIT_USAGE)
    what = "the router's key pair" if name == "router" else f"{name} ({role})"
    click.echo(f"wrote {what}: {public} and {public}_secret (mode 0600)")


@keys.command("allow")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--role", type=click.Choice(["operator", "actor", "reader"]), default=None,
              help="default: the file's role metadata, else reader")
@click.option("--name", default=None, help="key name (default: the file name before .key)")
@click.pass_context
def keys_allow(ctx: click.Context, file: str, role: str | None, name: str | None) -> None:
    """Let the key of FILE in: its public key is copied to keys_dir (never its secret)."""
    from pathlib import Path

    from broker.security import allow_key, role_of

    try:
        target = allow_key(_keys_dir(ctx), Path(file), role, name)
    except (ConfigError, OSError) as exc:
        _fail(str(exc), EXIT_USAGE)
    click.echo(f"allowed {target.name[:-4]} ({role_of(target)}): {target}")


@keys.command("revoke")
@click.argument("name")
@click.pass_context
def keys_revoke(ctx: click.Context, name: str) -> None:
    """Refuse NAME's key from now on (a running router picks it up within a second)."""
    from broker.security import revoke_key

    try:
        target = revoke_key(_keys_dir(ctx), name)
    except (ConfigError, OSError) as exc:
        _fail(str(exc), EXIT_USAGE)
    click.echo(f"revoked {name}: {target}")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    """Every key: name, role, allowed/revoked, whether its secret is on this host."""
    from broker.security import list_keys

    rows = list_keys(_keys_dir(ctx))
    if as_json:
        click.echo(_dumps(rows))
        return
    click.echo(f"{'NAME':<24}{'ROLE':<10}{'STATE':<9}SECRET")
    for r in rows:
        click.echo(f"{r['name']:<24}{r['role']:<10}{r['state']:<9}"
                   f"{'here' if r['has_secret'] else '-'}")


# ---------------------------------------------------------------- talking to actors


def _command(ctx: click.Context, actor_name: str, command: str, words: tuple[str, ...],
             timeout: float) -> Any:
    """Send one command and return the reply envelope, or exit 3 explaining the silence."""
    from cli.ops.heartbeats import explain_silence, heartbeats

    _setup_logging(ctx.obj["verbose"])
    site = site_of(ctx)
    argv = list(words)  # the actor binds `name=value` words to its declared parameters
    start = time.monotonic()
    bus = _bus(site, timeout)
    try:
        if actor_name not in site.actors and actor_name not in heartbeats(bus, timeout):
            # not in the site file (a simulator started by hand may still be running)
            _fail(f"{actor_name} is not in {site.path} and has no heartbeat on the bus",
                  EXIT_NO_REPLY)
        left = max(0.1, timeout - (time.monotonic() - start))
        return bus.request(actor_name, command, {}, timeout=left, argv=argv)
    except BusError:
        _fail(explain_silence(bus, actor_name, command, time.monotonic() - start), EXIT_NO_REPLY)
    finally:
        bus.close()


@app.command(context_settings={"ignore_unknown_options": True})
@click.argument("actor_name", metavar="ACTOR")
@click.argument("command")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--timeout", default=5.0, show_default=True, help="seconds to wait for the reply")
@click.option("--json", "as_json", is_flag=True, help="print the whole reply as JSON")
@click.pass_context
def send(ctx: click.Context, actor_name: str, command: str, args: tuple[str, ...],
         timeout: float, as_json: bool) -> None:
    """Send COMMAND to ACTOR and print the reply.

    ARGS fill the command's declared parameters in order; NAME=VALUE names one when NAME
    is one of its parameters (other words are positional, "=" or not).
    Exit 0 ok, 1 error reply, 3 no reply in time.
    """
    reply = _command(ctx, actor_name, command, args, timeout)
    data = reply.data
    if as_json:
        click.echo(_dumps(data))
    elif data.get("status") == "ok":
        result = data.get("result")
        if result is not None:
            click.echo(result if isinstance(result, str) else _dumps(result))
    if data.get("status") != "ok":
        if not as_json:
            click.echo(f"{actor_name}: {data.get('error') or 'error'}", err=True)
        sys.exit(EXIT_ERROR_REPLY)


@app.command()
@click.argument("actor_name", metavar="ACTOR")
@click.option("--timeout", default=5.0, show_default=True)
@click.pass_context
def describe(ctx: click.Context, actor_name: str, timeout: float) -> None:
    """List ACTOR's commands and their parameters."""
    reply = _command(ctx, actor_name, "describe", (), timeout)
    result = reply.data.get("result") or {}
    if reply.data.get("status") != "ok" or not isinstance(result, dict):
        _fail(f"{actor_name}: {reply.data.get('error')}", EXIT_ERROR_REPLY)
    click.echo(f"{actor_name} ({result.get('type', '?')})")
    for cmd in result.get("commands", []):
        params = " ".join(_param_text(p) for p in cmd.get("params", []))
        click.echo(f"  {cmd.get('name')} {params}".rstrip())
        if cmd.get("doc"):
            click.echo(f"      {cmd['doc']}")


def _param_text(p: dict[str, Any]) -> str:
    text = f"{p.get('name')}:{p.get('type')}"
    return f"[{text}={p.get('default')!r}]" if not p.get("required", True) else f"<{text}>"


@app.command()
@click.argument("actor_name", metavar="ACTOR")
@click.option("--timeout", default=5.0, show_default=True)
@click.pass_context
def ping(ctx: click.Context, actor_name: str, timeout: float) -> None:
    """Round trip to ACTOR through the router."""
    start = time.monotonic()
    reply = _command(ctx, actor_name, "ping", (), timeout)
    rtt = (time.monotonic() - start) * 1000
    info = reply.data.get("result") or {}
    click.echo(f"{actor_name}: pong in {rtt:.1f} ms — {_dumps(info)}")


# ---------------------------------------------------------------- the feed


@app.command()
@click.argument("prefixes", nargs=-1)
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="exit 0 after N messages")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="exit 3 if this many seconds pass first")
@click.option("--since", type=click.IntRange(min=0), default=None,
              help="start at this gseq (0 = everything the journal still holds)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.pass_context
def sub(ctx: click.Context, prefixes: tuple[str, ...], count: int | None,
        timeout: float | None, since: int | None, as_json: bool) -> None:
    """Print messages whose topic matches PREFIX (all if none), gap-free and in order."""
    from broker.wire.topics import check_prefix

    _setup_logging(ctx.obj["verbose"])
    site = site_of(ctx)
    try:
        for p in prefixes:
            check_prefix(p)
    except SctlError as exc:
        _fail(str(exc), EXIT_USAGE)
    bus = _bus(site, timeout if timeout is not None else 5.0,
               subscribe=[(p, since) for p in prefixes or ("",)])
    end = None if timeout is None else time.monotonic() + timeout
    seen = 0
    try:
        while count is None or seen < count:
            left = 1.0 if end is None else end - time.monotonic()
            if left <= 0:
                _fail(f"timeout: {seen} message(s) in {timeout:g} s", EXIT_NO_REPLY)
            for d in bus.poll(min(left, 1.0)):
                _print_delivery(d, as_json)
                seen += 1
                if count is not None and seen >= count:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        bus.close()


def _print_delivery(d: Any, as_json: bool) -> None:
    try:
        env = d.envelope.to_map()
    except EnvelopeError as exc:
        env = {"error": str(exc), "raw": d.body[:64].hex()}
    if as_json:
        click.echo(_dumps({"topic": d.topic, "gseq": d.gseq, "envelope": env}))
    else:
        click.echo(f"{d.gseq:>8} {d.topic} [{env.get('src')}] {_dumps(env.get('data'))}")
    sys.stdout.flush()


_KIND_BY_PREFIX = {"evt": "event", "hb": "heartbeat", "log": "log", "sys": "system"}


@app.command()
@click.argument("topic")
@click.argument("data", metavar="JSON")
@click.option("--kind", type=click.Choice(["event", "heartbeat", "log", "system"]),
              default=None, help="envelope kind (default from the topic prefix)")
@click.option("--timeout", default=5.0, show_default=True,
              help="seconds to wait for the router's acknowledgement")
@click.pass_context
def pub(ctx: click.Context, topic: str, data: str, kind: str | None, timeout: float) -> None:
    """Publish one envelope with JSON object DATA on TOPIC; exit 0 once the router has it."""
    from broker.wire.topics import check_topic

    _setup_logging(ctx.obj["verbose"])
    site = site_of(ctx)
    try:
        check_topic(topic)
        payload = json.loads(data)
    except (SctlError, json.JSONDecodeError) as exc:
        _fail(f"bad argument: {exc}", EXIT_USAGE)
    if not isinstance(payload, dict):
        _fail("JSON must be an object, e.g. '{\"value\": 1}'", EXIT_USAGE)
    head = topic.split(".", 1)[0]
    if head in ("cmd", "rep", "ack", "ctl"):
        _fail(f"{head}.* topics are not for sctl pub (use sctl send for commands)", EXIT_USAGE)
    bus = _bus(site, timeout)
    try:
        env = bus.publish(topic, kind or _KIND_BY_PREFIX.get(head, "event"), payload)
        if not bus.flush(timeout):
            _fail(f"the router did not acknowledge {topic} within {timeout:g} s", EXIT_NO_REPLY)
        if bus.counters.get("denied"):
            _fail(f"the router refused {topic}: key {bus.identity!r} may not publish it "
                  "(see sys.router.denied)", EXIT_ERROR_REPLY)
        click.echo(f"published {topic} id {env.id} seq {env.seq}")
    finally:
        bus.close()


# ---------------------------------------------------------------- status


@app.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--timeout", default=2.0, show_default=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool, timeout: float) -> None:
    """Every program of the site: supervisord state, pid, uptime, link, last event, counts,
    restarts and alarms. Works with the router or supervisord down (says so)."""
    from cli.ops.status import site_status

    _setup_logging(ctx.obj["verbose"])
    report = site_status(site_of(ctx), timeout)
    if as_json:
        click.echo(_dumps(report))
    else:
        _print_status(report)


def _age(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def _print_status(report: dict[str, Any]) -> None:
    r = report["router"]
    if r is None:
        click.echo(f"router: DOWN — {report.get('router_error')}")
    else:
        c = r.get("counts") or {}
        click.echo(f"router: up, epoch {r.get('router_epoch')}, gseq {r.get('first')}.."
                   f"{r.get('last')}, journal {'file' if r.get('persistent') else 'memory'}; "
                   f"lost: ingress gaps {c.get('gaps_lost', 0)}, evicted before a subscriber "
                   f"got them {c.get('egress_missed', 0)}, bad input "
                   f"{(c.get('bad') or {}).get('total', 0)}")
    if report.get("supervisor_error"):
        click.echo(f"supervisord: {report['supervisor_error']}")
    if not report.get("watchdog"):
        click.echo("watchdog: no recent view (not running?)")
    now = time.time()
    head = (f"{'PROGRAM':<16}{'TYPE':<20}{'HOST':<8}{'SUPERVISOR':<11}{'PID':<8}{'UP':<6}"
            f"{'LINK':<16}{'LAST EVT':<9}{'EVENTS':<8}{'DROPS':<6}{'RESTARTS':<9}ALARM")
    click.echo(head)
    for name, a in report["programs"].items():
        link = a.get("link") or {}
        if link:
            since = link.get("since")
            link_text = f"{link.get('state')} {_age(now - since) if since else ''}".strip()
        else:
            link_text = "-" if a.get("alive") is None else "NO HEARTBEAT" \
                if not a.get("alive") else "-"
        events = (a.get("counters") or {}).get("events", "-")
        click.echo(f"{name[:15]:<16}{a['type'][:19]:<20}{a['host'][:7]:<8}"
                   f"{a.get('supervisor_state') or '?':<11}{a.get('pid') or '-'!s:<8}"
                   f"{_age(a.get('uptime')):<6}{link_text:<16}{_age(a.get('last_event_age')):<9}"
                   f"{events!s:<8}{a.get('dropped', '-')!s:<6}{a.get('restarts', 0)!s:<9}"
                   f"{a.get('alarm') or ''}")
    for alarm in report["alarms"]:
        click.echo(f"ALARM {alarm['program']}: {alarm['reason']}")


@app.command()
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="seconds between refreshes")
@click.option("--window", type=click.FloatRange(min=1.0), default=10.0, show_default=True,
              help="seconds over which rates and latencies are computed")
@click.option("--once", is_flag=True, help="print one screen after INTERVAL and exit")
@click.option("--json", "as_json", is_flag=True, help="with --once: the figures as JSON")
@click.pass_context
def top(ctx: click.Context, interval: float, window: float, once: bool, as_json: bool) -> None:
    """Live view of the site: actors, links, per-topic rates, event latency, drops, restarts,
    alarms (Ctrl-C to quit)."""
    from cli.ops.top import TopView, render

    _setup_logging(ctx.obj["verbose"])
    bus = _bus(site_of(ctx), 5.0)
    for prefix in ("evt.", "hb.", "sys.", "log."):
        bus.subscribe(prefix, gapless=False)  # a view: best effort, no journal replays
    view = TopView(window)
    clear = sys.stdout.isatty() and not once
    try:
        while True:
            end = time.monotonic() + interval
            while (left := end - time.monotonic()) > 0:
                for d in bus.poll(left):
                    view.feed(d.topic, lambda d=d: d.envelope, time.monotonic(), time.time())
            snap = view.snapshot(time.monotonic(), time.time())
            if as_json:
                click.echo(_dumps(snap))
            else:
                click.echo(("\x1b[H\x1b[2J" if clear else "") + render(snap))
            if once:
                return
    except KeyboardInterrupt:
        pass
    finally:
        bus.close()


# ---------------------------------------------------------------- benchmarks


@app.command()
@click.argument("names", nargs=-1, metavar="[BENCHMARK]...")
@click.option("--quick", is_flag=True, help="reduced counts and durations (a first look)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object of figures")
@click.pass_context
def bench(ctx: click.Context, names: tuple[str, ...], quick: bool, as_json: bool) -> None:
    """Run the benchmarks and print a table: throughput, latency, device, commands, recovery,
    footprint (all if none named). Needs a source checkout (tests/bench) with the dev tools;
    it starts and stops its own routers, simulators, supervisord and mosquitto."""
    from pathlib import Path

    _setup_logging(ctx.obj["verbose"])
    root = Path(__file__).resolve().parent.parent
    if not (root / "tests" / "bench" / "runner.py").is_file():
        _fail(f"no benchmarks in {root}: sctl bench runs from a source checkout", EXIT_USAGE)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tests.bench.runner import run

    sys.exit(run(names, quick=quick, as_json=as_json))


def main(argv: Any = None) -> None:
    app.main(args=argv, prog_name="sctl")
