"""SpringCore Smart Reader over MQTT: topics, payloads and commands, sans-IO.

Topics (the MQTT part of protocols/springcore.md), ``{id}`` being the reader's MQTT device id
(serial number in upper-case hex by default)::

    {prefix}/{id}/meta      device → host  META, once per connection to the broker
    {prefix}/{id}/status    device → host  STATUS, every ~30 s; also the Last Will
    {prefix}/{id}/rdr/evt   device → host  JSON READER EVENT, or a $SCRDR text line
    {prefix}/{id}/rdr/cmd   host → device  JSON READER COMMAND, or a $SCCMD text line

The payload carries no device field: the device is the ``{id}`` segment of the topic.

JSON READER EVENT, both firmware variants. Current: ``RSSI``, ``Move`` (``"Insert"``,
``"Remove"``, ``"Insert,Remove"``), ``Uptime``. Older: ``Rssi``, ``State`` (``"Insert/Remove"``
...), an integer ``Sequence`` event counter, ``DateTime``. ``TagId`` is the only field every
variant has; the others are optional here (a reader that leaves one out still reports its tag),
but a field that is present must have its documented JSON type, else the whole payload is a
`RemoteProtocolError`. Unknown keys are ignored. A payload starting with ``$`` is a $SCRDR line and
goes to the TCP reader's codec (`actors.protocols.springcore`), so both transports share one
parser; the all-empty ``$SCRDR;;;;;;;;*xx`` greeting is no tag (`decode_event` returns None).

STATUS: ``{"State": "online,ready" | "online,busy" | "offline" | "offline,dead", "Uptime",
"DateTime"}``; ``offline,dead`` is the Last Will. META: the reader's identity fields
(`META_FIELDS`).

Commands (JSON READER COMMAND): ``{"Sequence": "60"}``. ``"Sequence"`` as an *integer* is read as
decimal by the device, as a *string* as hex, so ``{"Sequence": 60}`` would play 0x3C: this encoder
always sends hex strings (``Buzzer`` too, for the same reason). A command is built from the $SCCMD
field tuples of the TCP codec (``seq_command("60")`` → ``("SEQ", "60")`` → ``"Sequence": "60"``),
so both transports validate arguments in one place. ``Sequence`` may not be combined with
``Leds``/``Buzzer`` (a `LocalProtocolError`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from actors.protocols import springcore
from actors.protocols.springcore import Field
from actors.protocols.springcore_tag import (
    INSERT,
    INSERT_REMOVE,
    REMOVE,
    normalize_move,
    tag_event,
)
from broker.wire.errors import LocalProtocolError, RemoteProtocolError

DEFAULT_PREFIX: Final = "springcard/springcore"
MAX_PAYLOAD: Final = 65536  # the device's own bound on a message: up to 64 kB
MAX_DEVICE_ID: Final = 24  # register 028F
ALL_DEVICES: Final = "+"

META_TOPIC: Final = "meta"
STATUS_TOPIC: Final = "status"
EVT_TOPIC: Final = "rdr/evt"
CMD_TOPIC: Final = "rdr/cmd"
_KINDS: Final = (META_TOPIC, STATUS_TOPIC, EVT_TOPIC, CMD_TOPIC)

JSON: Final = "json"
SCRDR: Final = "scrdr"
FORMATS: Final = (JSON, SCRDR)

ONLINE: Final = "online"
OFFLINE: Final = "offline"
DEAD_STATE: Final = "offline,dead"  # the Last Will's State

# META fields and their JSON types; others are ignored.
META_FIELDS: Final[dict[str, type]] = {
    name: str for name in (
        "VendorName", "ProductName", "ProductVariant", "SerialNumber", "Version", "Firmware",
        "Revision", "Hardware", "UniqueId", "ConfigId", "Inventory", "Location", "PhysAddress",
        "IpAddress", "Protocol", "Interfaces")
} | {"Open": bool}

# canonical move → (current firmware "Move", older firmware "State")
_MOVE_SPELLING: Final[dict[str, tuple[str, str]]] = {
    INSERT: ("Insert", "Insert"), REMOVE: ("Remove", "Remove"),
    INSERT_REMOVE: ("Insert,Remove", "Insert/Remove"),
}
_EXCERPT: Final = 64


# --- topics -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Topic:
    """A topic under the prefix, split: the reader's id and what the topic carries."""

    device: str
    kind: str  # META_TOPIC, STATUS_TOPIC, EVT_TOPIC or CMD_TOPIC


def check_prefix(prefix: str) -> None:
    """ValueError unless `prefix` can start a topic: non-empty, no wildcard, no edge slash."""
    if not prefix or prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError("must be a topic prefix such as 'springcard/springcore' "
                         "(not empty, no leading or trailing '/')")
    if any(c in prefix for c in "+#\0"):
        raise ValueError("must not contain the MQTT wildcards + or #")


def check_device_id(device: str) -> None:
    """ValueError unless `device` can be one topic segment ({id}, at most 24 characters)."""
    if not device or len(device) > MAX_DEVICE_ID or any(c in device for c in "/+#\0"):
        raise ValueError(f"device id {device!r} must be 1-{MAX_DEVICE_ID} characters without "
                         "'/', '+' or '#' (or the string \"+\" for every reader)")


def topic(prefix: str, device: str, kind: str) -> str:
    return f"{prefix}/{device}/{kind}"


def subscriptions(prefix: str, devices: Sequence[str] | str) -> list[str]:
    """What the host subscribes to: evt, status and meta of each device (or of ``+``)."""
    ids = [ALL_DEVICES] if devices == ALL_DEVICES else list(devices)
    return [topic(prefix, d, k) for d in ids for k in (EVT_TOPIC, STATUS_TOPIC, META_TOPIC)]


def parse_topic(prefix: str, name: str) -> Topic | None:
    """The device and kind of `name`, or None when it is not ``{prefix}/{id}/{kind}``."""
    head = prefix + "/"
    if not name.startswith(head):
        return None
    device, _, kind = name[len(head):].partition("/")
    if not device or kind not in _KINDS:
        return None
    return Topic(device, kind)


# --- device → host ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Status:
    """A STATUS payload: `online` is False for ``offline`` and the ``offline,dead`` Last Will."""

    state: str
    online: bool
    uptime: str | None
    date_time: str | None

    def to_data(self, device: str) -> dict[str, Any]:
        """The data of ``evt.<actor>.device``."""
        return {"device": device, "state": ONLINE if self.online else OFFLINE,
                "status": self.state, "uptime": self.uptime, "device_time": self.date_time}


def payload_text(payload: bytes) -> str:
    """The payload as text, bounded; RemoteProtocolError for oversize or non-UTF-8 bytes."""
    if len(payload) > MAX_PAYLOAD:
        raise RemoteProtocolError(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD}"
                                  " byte bound of a SpringCore message", payload)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"payload is not UTF-8 text (binary data?): {exc.reason} at "
                                  f"byte {exc.start}", payload) from None
    if not text.strip():
        raise RemoteProtocolError("empty payload", payload)
    return text.strip()


def _json_object(payload: bytes, what: str) -> dict[str, Any]:
    text = payload_text(payload)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RemoteProtocolError(f"{what}: malformed JSON ({exc.msg} at character {exc.pos})",
                                  payload) from None
    except RecursionError:
        raise RemoteProtocolError(f"{what}: JSON nested too deeply", payload) from None
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{what}: expected a JSON object, got {type(value).__name__}",
                                  payload)
    return value


def _field(obj: dict[str, Any], key: str, kind: type, what: str, payload: bytes) -> Any:
    """obj[key] checked against `kind` (bool is not an int), None when absent."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {str: "a string", int: "an integer", bool: "true/false"}
        raise RemoteProtocolError(f"{what}: {key} must be {names.get(kind, kind.__name__)}, "
                                  f"got {json.dumps(value)[:_EXCERPT]}", payload)
    return value


def _first(obj: dict[str, Any], keys: tuple[str, str], kind: type, what: str,
           payload: bytes) -> Any:
    """The current-firmware key if present, else the older one (RSSI/Rssi, Move/State)."""
    key = keys[0] if obj.get(keys[0]) is not None else keys[1]
    return _field(obj, key, kind, what, payload)


def decode_event(payload: bytes, device: str) -> dict[str, Any] | None:
    """A ``rdr/evt`` payload as the tag event data (`springcore_tag.tag_event`, `device` set),
    or None for the empty $SCRDR greeting. RemoteProtocolError for anything else."""
    text = payload_text(payload)
    if text.startswith("$"):
        return _scrdr_event(text, device, payload)
    what = "READER EVENT"
    obj = _json_object(payload, what)
    tag_id = _field(obj, "TagId", str, what, payload)
    if not tag_id:
        raise RemoteProtocolError(f"{what}: TagId is missing or empty", payload)
    move_text = _first(obj, ("Move", "State"), str, what, payload)
    try:
        move = normalize_move(move_text)
    except ValueError as exc:
        raise RemoteProtocolError(f"{what}: {exc}", payload) from None
    date_time = _field(obj, "DateTime", str, what, payload)
    uptime = _field(obj, "Uptime", str, what, payload)
    return tag_event(
        tag_id=tag_id, raw=text, device=device,
        interface=_field(obj, "Interface", str, what, payload),
        protocol=_field(obj, "Protocol", str, what, payload),
        template=_field(obj, "Template", int, what, payload),
        rssi=_first(obj, ("RSSI", "Rssi"), int, what, payload),
        move=move,
        tag_data=_field(obj, "TagData", str, what, payload),
        tag_details=_field(obj, "TagDetails", str, what, payload),
        seq=_field(obj, "Sequence", int, what, payload),
        device_time=date_time if date_time is not None else uptime,
    )


def _scrdr_event(text: str, device: str, payload: bytes) -> dict[str, Any] | None:
    """A $SCRDR line, parsed by the TCP reader's codec (one parser for both transports)."""
    try:
        message = springcore.decode_line(text)
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(f"$SCRDR payload: {exc}", payload) from None
    if isinstance(message, springcore.Greeting):
        return None
    data = dict(message)
    data["device"] = device
    return data


def decode_status(payload: bytes) -> Status:
    """A STATUS payload; RemoteProtocolError unless State is there and says online/offline."""
    what = "STATUS"
    obj = _json_object(payload, what)
    state = _field(obj, "State", str, what, payload)
    if state is None:
        raise RemoteProtocolError(f"{what}: State is missing", payload)
    head = state.split(",", 1)[0].strip().lower()
    if head not in (ONLINE, OFFLINE):
        raise RemoteProtocolError(f"{what}: State {state!r} is neither online,... nor "
                                  "offline,...", payload)
    return Status(state, head == ONLINE, _field(obj, "Uptime", str, what, payload),
                  _field(obj, "DateTime", str, what, payload))


def decode_meta(payload: bytes) -> dict[str, Any]:
    """The META fields present in `payload` (known ones only, type-checked)."""
    what = "META"
    obj = _json_object(payload, what)
    return {key: value for key, kind in META_FIELDS.items()
            if (value := _field(obj, key, kind, what, payload)) is not None}


# --- host → device ------------------------------------------------------------------------------

# $SCCMD field → JSON READER COMMAND key; the values (hex text) are the same in both forms.
_JSON_KEYS: Final[dict[str, str]] = {"SEQ": "Sequence", "LEDS": "Leds", "BUZZ": "Buzzer"}
_NOT_WITH_SEQUENCE: Final = frozenset({"Leds", "Buzzer", "RgbColor", "RgbMode"})


def _compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _check_json_command(obj: dict[str, Any]) -> None:
    if "Sequence" in obj and obj.keys() & _NOT_WITH_SEQUENCE:
        raise LocalProtocolError("Sequence cannot be combined with Leds, Buzzer, RgbColor or "
                                 "RgbMode in one JSON command (the device refuses it)")


def encode_json_command(fields: Sequence[Field]) -> bytes:
    """A JSON READER COMMAND from field tuples made by `springcore.seq_command`,
    `leds_command` and `buzz_command`: every value stays a hex string (see module doc)."""
    obj: dict[str, Any] = {}
    for name, value in fields:
        key = _JSON_KEYS.get(name)
        if key is None:
            raise LocalProtocolError(f"field {name} has no JSON READER COMMAND form (known: "
                                     f"{', '.join(_JSON_KEYS)})")
        obj[key] = value
    if not obj:
        raise LocalProtocolError("a command needs a sequence, LEDs or a buzzer duration")
    _check_json_command(obj)
    return _compact(obj)


def encode_command(fmt: str, fields: Sequence[Field]) -> bytes:
    """The ``rdr/cmd`` payload for `fields` in `fmt`: JSON, or a $SCCMD line (CR LF ended as
    the vendor shows it; no checksum, which is optional from the host)."""
    if fmt == JSON:
        return encode_json_command(fields)
    if fmt == SCRDR:
        return springcore.encode_command(fields)
    raise LocalProtocolError(f"command format {fmt!r} is not one of {', '.join(FORMATS)}")


def encode_raw_command(text: str) -> bytes:
    """An operator's raw command: a JSON object (``{...}``, checked, sent compact) or $SCCMD
    fields (``SEQ=60;BUZZ=0064``, optionally led by ``$SCCMD;``), sent as a $SCCMD line. The
    device reads both forms on rdr/cmd whatever its event format."""
    text = text.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LocalProtocolError(f"raw JSON command is malformed: {exc.msg} at character "
                                     f"{exc.pos}") from None
        if not isinstance(obj, dict) or not obj:
            raise LocalProtocolError("a raw JSON command must be a non-empty JSON object")
        _check_json_command(obj)
        return _compact(obj)
    body = text.removeprefix(springcore.SCCMD).lstrip(";")
    fields: list[Field] = []
    for item in filter(None, body.split(";")):
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise LocalProtocolError(f"raw command part {item!r} is not Field=Value "
                                     "(e.g. SEQ=60;BUZZ=0064) nor a JSON object")
        fields.append((name, value))
    return springcore.encode_command(fields)


# --- device side (the simulator) ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReaderCommand:
    """A ``rdr/cmd`` payload as a reader sees it: its format and its fields."""

    format: str
    fields: dict[str, Any]


def decode_command(payload: bytes) -> ReaderCommand:
    """A command the reader received: JSON object or $SCCMD line; RemoteProtocolError else."""
    text = payload_text(payload)
    if text.startswith("$"):
        try:
            sccmd = springcore.decode_command(text)
            return ReaderCommand(SCRDR, dict(sccmd.fields))
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(f"$SCCMD payload: {exc}", payload) from None
    return ReaderCommand(JSON, _json_object(payload, "READER COMMAND"))


def encode_json_event(tag_id: str, *, variant: str = "current", interface: str = "13.56",
                      protocol: str = "NFC-A", template: int = 1, rssi: int | None = None,
                      move: str | None = None, tag_data: str | None = None,
                      uptime: str | None = None, counter: int | None = None,
                      date_time: str | None = None) -> bytes:
    """A JSON READER EVENT as the `variant` ("current" or "old") firmware writes it. `move` is
    the canonical move (`springcore_tag`), written in the variant's spelling."""
    if variant not in ("current", "old"):
        raise LocalProtocolError(f"event variant {variant!r} is not 'current' or 'old'")
    old = variant == "old"
    obj: dict[str, Any] = {}
    if old and counter is not None:
        obj["Sequence"] = counter
    obj.update(Interface=interface, Protocol=protocol, Template=template)
    if rssi is not None:
        obj["Rssi" if old else "RSSI"] = rssi
    obj["TagId"] = tag_id
    canonical = normalize_move(move)
    if canonical is not None:
        obj["State" if old else "Move"] = _MOVE_SPELLING[canonical][old]
    if tag_data is not None:
        obj["TagData"] = tag_data
    if old:
        if date_time is not None:
            obj["DateTime"] = date_time
    elif uptime is not None:
        obj["Uptime"] = uptime
    return _compact(obj)


def encode_status(state: str, *, uptime: str | None = None,
                  date_time: str | None = None) -> bytes:
    obj: dict[str, str] = {"State": state}
    if uptime is not None:
        obj["Uptime"] = uptime
    if date_time is not None:
        obj["DateTime"] = date_time
    return _compact(obj)


def encode_meta(fields: dict[str, Any]) -> bytes:
    return _compact(fields)


# --- settings checks of a device type using this format (ValueError names the key) ------

def check_devices(value: Any) -> None:
    """``"+"`` or a non-empty list of distinct device ids."""
    if isinstance(value, str):
        if value != ALL_DEVICES:
            raise ValueError('must be a list of device ids or "+" for every reader')
        return
    if not value:
        raise ValueError('must not be empty (use "+" for every reader on the broker)')
    for device in value:
        if not isinstance(device, str):
            raise ValueError(f"device ids are strings, got {device!r}")
        check_device_id(device)
    if len(set(value)) != len(value):
        raise ValueError("lists a device id twice")


def check_format(value: Any) -> None:
    if value not in FORMATS:
        raise ValueError(f"must be one of {', '.join(FORMATS)}")
