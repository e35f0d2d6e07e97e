"""The MQTT side of the ``mqtt-bridge``: bus messages as JSON, commands from JSON, sans-IO.

Bus → MQTT. A publish rule names a bus topic prefix and an MQTT topic template; every matching
message is published as one JSON object (UTF-8):

- ``payload = "envelope"`` (default): ``{"topic", "gseq", "src", "ts", "kind", "data"}``, with
  ``topic`` the bus topic, ``gseq`` its journal position, ``ts`` the sender's Unix time;
- ``payload = "data"``: the envelope's ``data`` map alone.

Values JSON has no type for: binary (msgpack bin, such as the ``data`` of an array
``{"dtype", "shape", "data"}``) becomes a base64 string (``binary = "base64"``, RFC 4648
standard alphabet, padded) or is left out (``binary = "omit"``: the key disappears from its map;
in a list the element becomes null); NaN and infinities become null.

Template placeholders, from the bus topic ``evt.reader1.tag``: ``{kind}`` = ``evt``,
``{actor}`` = ``reader1``, ``{event}`` = ``tag`` (every segment after the actor, joined with
``/``), ``{topic}`` = ``evt/reader1/tag``, ``{path}`` = ``reader1/tag`` for ``evt.*`` and
``{topic}`` otherwise. The default template ``sctl/{path}`` gives ``sctl/<actor>/<event>`` for
events and ``sctl/sys/alarm`` or ``sctl/hb/<actor>`` for the rest. Empty levels (a placeholder
with nothing in it) are dropped. A template may not hold the wildcards ``+`` ``#`` nor start
with ``$`` (the broker's own topics).

MQTT → bus. A command arrives on ``{command_topic}/<actor>`` as::

    {"command": "accept", "args": {"device": "DA1275B0"}, "argv": ["..."], "id": "42",
     "timeout": 5}

``command`` is required; ``args`` (a map), ``argv`` (a list of words, as ``sctl send`` takes
them), ``id`` (the caller's correlation id: a string or an integer, at most `MAX_ID` characters)
and ``timeout`` (seconds, 0 < t ≤ `MAX_TIMEOUT`) are optional. The answer goes to
``{reply_topic}/<actor>``: ``{"id", "actor", "command", "status": "ok" | "error", "result",
"error"}``, the actor's reply, or the bridge's own error when the command was refused (payload
not JSON or not such an object, actor or command not allowed, retained message, too many
commands in flight) or not answered in time. A payload over `MAX_COMMAND_BYTES` is refused.
"""

from __future__ import annotations

import base64
import json
import math
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from broker.wire import topics
from broker.wire.errors import RemoteProtocolError

DEFAULT_TEMPLATE: Final = "sctl/{path}"
PLACEHOLDERS: Final = ("path", "topic", "kind", "actor", "event")
ENVELOPE: Final = "envelope"
DATA: Final = "data"
PAYLOADS: Final = (ENVELOPE, DATA)
BASE64: Final = "base64"
OMIT: Final = "omit"
BINARY: Final = (BASE64, OMIT)
MAX_COMMAND_BYTES: Final = 65536
MAX_ID: Final = 128
MAX_TIMEOUT: Final = 3600.0
COMMAND_KEYS: Final = frozenset({"command", "args", "argv", "id", "timeout"})
_OMITTED: Final = object()


# --- bus → MQTT ---------------------------------------------------------------------------------

def check_template(template: Any) -> None:
    """ValueError unless `template` is a usable MQTT topic template (module doc)."""
    if not isinstance(template, str) or not template:
        raise ValueError("must be a non-empty MQTT topic template")
    if "+" in template or "#" in template:
        raise ValueError("an MQTT topic to publish on cannot hold the wildcards + or #")
    if template.startswith("$"):
        raise ValueError("topics starting with $ belong to the broker")
    try:
        names = [name for _, name, spec, conv in string.Formatter().parse(template)
                 if name is not None]
    except ValueError as exc:
        raise ValueError(f"not a template: {exc} (write {{{{ and }}}} for braces)") from None
    unknown = [n for n in names if n not in PLACEHOLDERS]
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} (known: "
                         f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)})")


def mqtt_topic(template: str, bus_topic: str) -> str:
    """The MQTT topic a message on `bus_topic` goes to (module doc)."""
    parts = bus_topic.split(".")
    kind = parts[0]
    actor = parts[1] if len(parts) > 1 else ""
    event = "/".join(parts[2:])
    whole = "/".join(parts)
    path = "/".join(parts[1:]) if kind == topics.EVENT and len(parts) > 1 else whole
    text = template.format(path=path, topic=whole, kind=kind, actor=actor, event=event)
    return "/".join(level for level in text.split("/") if level)


def to_json(value: Any, binary: str = BASE64) -> Any:
    """`value` (msgpack-native) with binary and non-finite numbers made JSON-safe."""
    out = _plain(value, binary)
    return None if out is _OMITTED else out


def _plain(value: Any, binary: str) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii") if binary == BASE64 else _OMITTED
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            item = _plain(v, binary)
            if item is not _OMITTED:
                out[str(k)] = item
        return out
    if isinstance(value, list | tuple):
        return [None if (item := _plain(v, binary)) is _OMITTED else item for v in value]
    return value


def _base64(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode_message(payload: str, binary: str, *, topic: str, gseq: int, src: str, ts: float,
                   kind: str, data: Mapping[str, Any]) -> bytes:
    """The MQTT payload of one bus message: the envelope form or its data alone."""

    def wrap(body: Any) -> Any:
        if payload == ENVELOPE:
            return {"topic": topic, "gseq": gseq, "src": src, "ts": ts, "kind": kind,
                    "data": body}
        return body

    if binary == BASE64:  # the common case in one pass; NaN or infinity: the walk below
        try:
            return json.dumps(wrap(data), ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False, default=_base64).encode("utf-8")
        except ValueError:
            pass
    return json.dumps(wrap(to_json(data, binary)), ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


# --- MQTT → bus ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class MqttCommand:
    """A command that came over MQTT, checked."""

    actor: str
    command: str
    args: dict[str, Any]
    argv: list[str]
    id: str | None
    timeout: float | None


def command_id(payload: bytes) -> str | None:
    """The caller's ``id`` of a payload, when one can be read (for an error reply to a
    payload that is refused for another reason); else None."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = doc.get("id") if isinstance(doc, dict) else None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)[:MAX_ID]


def decode_command(actor: str, payload: bytes) -> MqttCommand:
    """The command in `payload` for `actor` (the topic's last level); RemoteProtocolError saying
    what is wrong with it, `raw` its first bytes."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise RemoteProtocolError(f"command payload of {len(payload)} bytes (at most "
                                  f"{MAX_COMMAND_BYTES})", payload)
    try:
        topics.check_name(actor, "actor")
    except ValueError as exc:
        raise RemoteProtocolError(f"command topic: {exc}", payload) from None
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RemoteProtocolError(f"payload is not JSON: {exc}", payload) from None
    if not isinstance(doc, dict):
        raise RemoteProtocolError("payload must be a JSON object such as {\"command\": "
                                  "\"ping\"}", payload)
    unknown = sorted(set(doc) - COMMAND_KEYS)
    if unknown:
        raise RemoteProtocolError(f"unknown key {unknown[0]!r} (known: "
                                  f"{', '.join(sorted(COMMAND_KEYS))})", payload)
    name = doc.get("command")
    if not isinstance(name, str) or not name:
        raise RemoteProtocolError("\"command\" (a non-empty string) is required", payload)
    args = doc.get("args", {})
    if not isinstance(args, dict):
        raise RemoteProtocolError("\"args\" must be a JSON object", payload)
    argv = doc.get("argv", [])
    if not isinstance(argv, list) or not all(isinstance(w, str) for w in argv):
        raise RemoteProtocolError("\"argv\" must be a list of strings", payload)
    ident = doc.get("id")
    if ident is not None and (isinstance(ident, bool) or not isinstance(ident, str | int)
                              or len(str(ident)) > MAX_ID):
        raise RemoteProtocolError(f"\"id\" must be a string or an integer of at most {MAX_ID} "
                                  "characters", payload)
    timeout = doc.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not 0 < timeout <= MAX_TIMEOUT):
        raise RemoteProtocolError(f"\"timeout\" must be seconds, more than 0 and at most "
                                  f"{MAX_TIMEOUT:g}", payload)
    return MqttCommand(actor, name, args, argv, None if ident is None else str(ident),
                       None if timeout is None else float(timeout))


def encode_reply(*, id: str | None, actor: str, command: str | None, status: str,
                 result: Any = None, error: str = "") -> bytes:
    """The answer on ``{reply_topic}/<actor>`` (binary in a result as base64)."""
    body = {"id": id, "actor": actor, "command": command, "status": status,
            "result": to_json(result), "error": error}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")
