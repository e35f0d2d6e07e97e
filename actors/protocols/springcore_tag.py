"""The tag event both SpringCore readers publish (``evt.<actor>.tag``), sans-IO.

One schema for the TCP reader (`$SCRDR` lines) and the MQTT reader (JSON READER EVENT or
`$SCRDR` text payloads), so a subscriber (the 104 server's mapping, an outside tool) does not care
which transport a reader uses. Every key is always present; a value the transport does not carry
is None.

========== ======================================================================================
key        value
========== ======================================================================================
tag_id     str, the TagId as sent (hex, upper-cased for $SCRDR)
interface  str: "13" ($SCRDR hex code) or "13.56" (JSON) — opaque, as the device sent it
protocol   str: "01" ($SCRDR hex code) or "NFC-A" (JSON) — opaque
template   int or None
rssi       int or None (BLE/UHF only)
move       "insert", "remove", "insert,remove" or None (movement tracking off)
tag_data   str or None
tag_details str or None
checksum   "ok", "bad" or "absent" ($SCRDR); "absent" for JSON
raw        str: the line or payload as received (decoded as latin-1 if not UTF-8)
device     str or None: the reader's id (MQTT topic) or None when unknown (TCP)
seq        int or None: the device's own event counter (older JSON firmware "Sequence")
device_time str or None: the device's "Uptime" or "DateTime" when it sends one
========== ======================================================================================
"""

from __future__ import annotations

from typing import Any, Final

TAG_KEYS: Final = ("tag_id", "interface", "protocol", "template", "rssi", "move", "tag_data",
                   "tag_details", "checksum", "raw", "device", "seq", "device_time")

INSERT: Final = "insert"
REMOVE: Final = "remove"
INSERT_REMOVE: Final = "insert,remove"

_MOVES: Final[dict[str, str]] = {
    # $SCRDR field 6 (DOC-2021 adds a trailing space: stripped first)
    "I": INSERT, "R": REMOVE, "IR": INSERT_REMOVE,
    # JSON "Move" (current) and "State" (older firmware)
    "INSERT": INSERT, "REMOVE": REMOVE, "INSERT,REMOVE": INSERT_REMOVE,
    "INSERT/REMOVE": INSERT_REMOVE,
}


def normalize_move(text: str | None) -> str | None:
    """The canonical move for a device's spelling; None for empty; ValueError if unknown."""
    if text is None:
        return None
    key = text.strip().upper()
    if not key:
        return None
    try:
        return _MOVES[key]
    except KeyError:
        raise ValueError(f"unknown move {text!r} (expected I, R, IR, Insert, Remove, "
                         "Insert,Remove or Insert/Remove)") from None


def tag_event(*, tag_id: str, raw: str, interface: str | None = None,
              protocol: str | None = None, template: int | None = None, rssi: int | None = None,
              move: str | None = None, tag_data: str | None = None,
              tag_details: str | None = None, checksum: str = "absent",
              device: str | None = None, seq: int | None = None,
              device_time: str | None = None) -> dict[str, Any]:
    """The ``data`` of ``evt.<actor>.tag``, every key of `TAG_KEYS` present."""
    return {"tag_id": tag_id, "interface": interface, "protocol": protocol,
            "template": template, "rssi": rssi, "move": move, "tag_data": tag_data,
            "tag_details": tag_details, "checksum": checksum, "raw": raw, "device": device,
            "seq": seq, "device_time": device_time}
