"""Talking over the bus: commands to one actor (`sctl send`, `describe`, `ping`) and the feed
(`sctl sub` prints deliveries gap-free and in order, `sctl pub` publishes one envelope).

A command to an actor that is not in the site file is still sent if the actor has a heartbeat
on the bus (a simulator started by hand). A command to an actor known to be down (its newest
heartbeat is stale or says ``stopping``) fails at once; when no reply comes, `cli.ops.heartbeats`
says whether the actor is unknown, not running, or silent.
"""

from __future__ import annotations

import array
import base64
import json
import sys
import time
from typing import Any, Final

import click

from broker.wire.errors import BusError, EnvelopeError, SctlError
from cli.common import (
    EXIT_ERROR_REPLY,
    EXIT_NO_REPLY,
    EXIT_USAGE,
    connect_bus,
    dumps,
    fail,
    json_option,
    setup_logging,
    site_of,
)

TIMEOUT = click.FloatRange(min=0, min_open=True)


def _command(ctx: click.Context, actor_name: str, command: str, words: tuple[str, ...],
             timeout: float) -> Any:
    """Send one command and return the reply envelope, or exit 3 explaining the silence."""
    from cli.ops.heartbeats import explain_silence, heartbeats

    setup_logging(ctx.obj["verbose"])
    site = site_of(ctx)
    argv = list(words)  # the actor binds `name=value` words to its declared parameters
    start = time.monotonic()
    bus = connect_bus(site, timeout)
    try:
        beat = heartbeats(bus, timeout).get(actor_name)
        if actor_name not in site.actors and beat is None:
            # not in the site file (a simulator started by hand may still be running)
            fail(f"{actor_name} is not in {site.path} and has no heartbeat on the bus",
                 EXIT_NO_REPLY)
        if beat is not None and not beat.alive:  # known to be down: fail at once
            fail(explain_silence(bus, actor_name, command, time.monotonic() - start),
                 EXIT_NO_REPLY)
        left = max(0.1, timeout - (time.monotonic() - start))
        return bus.request(actor_name, command, {}, timeout=left, argv=argv)
    except BusError:
        fail(explain_silence(bus, actor_name, command, time.monotonic() - start), EXIT_NO_REPLY)
    finally:
        bus.close()


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("actor_name", metavar="ACTOR")
@click.argument("command")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--timeout", type=TIMEOUT, default=5.0, show_default=True,
              help="seconds to wait for the reply")
@json_option
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
        click.echo(dumps(shown_arrays(data, as_json=True)))
    elif data.get("status") == "ok":
        result = shown_arrays(data.get("result"), as_json=False)
        if result is not None:
            click.echo(result if isinstance(result, str) else dumps(result))
    if data.get("status") != "ok":
        if not as_json:
            click.echo(f"{actor_name}: {data.get('error') or 'error'}", err=True)
        sys.exit(EXIT_ERROR_REPLY)


@click.command()
@click.argument("actor_name", metavar="ACTOR")
@click.option("--timeout", type=TIMEOUT, default=5.0, show_default=True)
@json_option
@click.pass_context
def describe(ctx: click.Context, actor_name: str, timeout: float, as_json: bool) -> None:
    """List ACTOR's commands and their parameters; for an actor TYPE (springcore-tcp, ...)
    that is no actor's name, the type's settings and commands, with no actor running."""
    from cli.commands.types import is_type, show_type

    if is_type(ctx, actor_name):
        show_type(actor_name)
        return
    reply = _command(ctx, actor_name, "describe", (), timeout)
    result = reply.data.get("result") or {}
    if reply.data.get("status") != "ok" or not isinstance(result, dict):
        fail(f"{actor_name}: {reply.data.get('error')}", EXIT_ERROR_REPLY)
    if as_json:
        click.echo(dumps(result))
        return
    click.echo(f"{actor_name} ({result.get('type', '?')})")
    for cmd in result.get("commands", []):
        params = " ".join(_param_text(p) for p in cmd.get("params", []))
        click.echo(f"  {cmd.get('name')} {params}".rstrip())
        if cmd.get("doc"):
            click.echo(f"      {cmd['doc']}")


def _param_text(p: dict[str, Any]) -> str:
    text = f"{p.get('name')}:{p.get('type')}"
    return f"[{text}={p.get('default')!r}]" if not p.get("required", True) else f"<{text}>"


@click.command()
@click.argument("actor_name", metavar="ACTOR")
@click.option("--timeout", type=TIMEOUT, default=5.0, show_default=True)
@json_option
@click.pass_context
def ping(ctx: click.Context, actor_name: str, timeout: float, as_json: bool) -> None:
    """Round trip to ACTOR through the router."""
    start = time.monotonic()
    reply = _command(ctx, actor_name, "ping", (), timeout)
    rtt = (time.monotonic() - start) * 1000
    info = reply.data.get("result") or {}
    if as_json:
        click.echo(dumps({"actor": actor_name, "rtt_ms": round(rtt, 1), "result": info}))
    else:
        click.echo(f"{actor_name}: pong in {rtt:.1f} ms — {dumps(info)}")


@click.command()
@click.argument("prefixes", nargs=-1)
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="exit 0 after N messages")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="exit 3 if this many seconds pass first")
@click.option("--since", type=click.IntRange(min=0), default=None,
              help="start at this gseq (0 = everything the journal still holds)")
@json_option
@click.pass_context
def sub(ctx: click.Context, prefixes: tuple[str, ...], count: int | None,
        timeout: float | None, since: int | None, as_json: bool) -> None:
    """Print messages whose topic matches PREFIX (all if none), gap-free and in order."""
    from broker.wire.topics import check_prefix

    setup_logging(ctx.obj["verbose"])
    site = site_of(ctx)
    for p in prefixes:
        try:
            check_prefix(p)
        except SctlError as exc:
            fail(f"PREFIX {p!r}: {exc}", EXIT_USAGE)
    bus = connect_bus(site, timeout if timeout is not None else 5.0,
                      subscribe=[(p, since) for p in prefixes or ("",)])
    end = None if timeout is None else time.monotonic() + timeout
    seen = 0
    try:
        while count is None or seen < count:
            left = 1.0 if end is None else end - time.monotonic()
            if left <= 0:
                fail(f"timeout: {seen} message(s) in {timeout:g} s", EXIT_NO_REPLY)
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
    env = shown_arrays(env, as_json)
    if as_json:
        click.echo(dumps({"topic": d.topic, "gseq": d.gseq, "envelope": env}))
    else:
        click.echo(f"{d.gseq:>8} {d.topic} [{env.get('src')}] {dumps(env.get('data'))}")
    sys.stdout.flush()


_ARRAY_CODES: Final = {"f8": "d", "f4": "f", "i4": "i", "u4": "I", "i2": "h", "u2": "H",
                       "i1": "b", "u1": "B", "i8": "q", "u8": "Q"}  # numpy kind → array code


def shown_arrays(value: Any, as_json: bool) -> Any:
    """`value` with every binary array (``{"dtype", "shape", "data": bytes}``, the bus layout
    of data arrays) made printable: a one-line summary (dtype, shape, min/max, size) for the
    terminal, or with `as_json` the same map with the data in base64 (``"encoding":
    "base64"``)."""
    if isinstance(value, dict):
        if value.keys() == {"dtype", "shape", "data"} and isinstance(value["data"], bytes):
            return _json_array(value) if as_json else _array_summary(value)
        return {k: shown_arrays(v, as_json) for k, v in value.items()}
    if isinstance(value, list):
        return [shown_arrays(v, as_json) for v in value]
    return value


def _json_array(value: dict[str, Any]) -> dict[str, Any]:
    return {"dtype": value["dtype"], "shape": value["shape"], "encoding": "base64",
            "data": base64.b64encode(value["data"]).decode("ascii")}


def _array_summary(value: dict[str, Any]) -> str:
    dtype, shape, data = str(value["dtype"]), value["shape"], value["data"]
    dims = "x".join(str(n) for n in shape) if isinstance(shape, list) else str(shape)
    text = f"<array {dtype} {dims}, {len(data)} bytes"
    code = _ARRAY_CODES.get(dtype[1:])
    if code is not None and data and len(data) % array.array(code).itemsize == 0:
        items = array.array(code, data)
        if dtype[:1] in "<>" and dtype[:1] != ("<" if sys.byteorder == "little" else ">"):
            items.byteswap()
        numbers = [x for x in items if x == x] if code in "df" else items  # NaN is no bound
        if len(numbers):
            text += f", min {min(numbers):g} max {max(numbers):g}"
    return text + ">"


_KIND_BY_PREFIX: Final = {"evt": "event", "hb": "heartbeat", "log": "log", "sys": "system"}


@click.command()
@click.argument("topic")
@click.argument("data", metavar="JSON")
@click.option("--kind", type=click.Choice(["event", "heartbeat", "log", "system"]),
              default=None, help="envelope kind (default from the topic prefix)")
@click.option("--timeout", type=TIMEOUT, default=5.0, show_default=True,
              help="seconds to wait for the router's acknowledgement")
@json_option
@click.pass_context
def pub(ctx: click.Context, topic: str, data: str, kind: str | None, timeout: float,
        as_json: bool) -> None:
    """Publish one envelope with JSON object DATA on TOPIC; exit 0 once the router has it."""
    from broker.wire.topics import check_topic

    setup_logging(ctx.obj["verbose"])
    site = site_of(ctx)
    try:
        check_topic(topic)
    except SctlError as exc:
        fail(f"TOPIC {topic!r}: {exc}", EXIT_USAGE)
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        fail(f"JSON: not valid JSON: {exc}", EXIT_USAGE)
    if not isinstance(payload, dict):
        fail("JSON must be an object, e.g. '{\"value\": 1}'", EXIT_USAGE)
    head = topic.split(".", 1)[0]
    if head in ("cmd", "rep", "ack", "ctl"):
        fail(f"TOPIC {topic!r}: {head}.* topics are not for sctl pub (use sctl send for "
             "commands)", EXIT_USAGE)
    bus = connect_bus(site, timeout)
    try:
        env = bus.publish(topic, kind or _KIND_BY_PREFIX.get(head, "event"), payload)
        if not bus.flush(timeout):
            fail(f"the router did not acknowledge {topic} within {timeout:g} s", EXIT_NO_REPLY)
        if bus.counters.get("denied"):
            fail(f"the router refused {topic}: key {bus.identity!r} may not publish it "
                 "(see sys.router.denied)", EXIT_ERROR_REPLY)
        if as_json:
            click.echo(dumps({"topic": topic, "id": env.id, "seq": env.seq}))
        else:
            click.echo(f"published {topic} id {env.id} seq {env.seq}")
    finally:
        bus.close()
