"""SPEC data arrays on the bus: the ``{"dtype", "shape", "data"}`` layout that numpy reads, what
the bus and JSON carry back to SPEC (`from_plain`), and how ``sctl sub``/``send`` print it."""

from __future__ import annotations

import base64
import struct

import msgpack
import numpy as np
import pytest

from actors.protocols.spec import BIG, LITTLE, Cmd, DataType, Message
from actors.protocols.spec_types import (
    SpecArray,
    decode_value,
    encode_value,
    from_plain,
    is_bus_array,
    to_bus,
)
from broker.wire.errors import LocalProtocolError
from cli.commands.messages import shown_arrays


@pytest.mark.parametrize("order", [LITTLE, BIG])
@pytest.mark.parametrize(("kind", "dtype"), [(DataType.SV_ARR_USHORT, np.uint16),
                                             (DataType.SV_ARR_DOUBLE, np.float64),
                                             (DataType.SV_ARR_LONG64, np.int64),
                                             (DataType.SV_ARR_UCHAR, np.uint8)])
def test_an_array_event_reads_back_with_numpy_through_msgpack(order: str, kind: int,
                                                              dtype: type) -> None:
    image = np.arange(12, dtype=dtype).reshape(3, 4)
    wire = image.astype(np.dtype(dtype).newbyteorder(order)).tobytes()
    msg = Message(cmd=Cmd.SV_EVENT, type=kind, rows=3, cols=4, data=wire, order=order)
    value = to_bus(decode_value(msg))
    assert value["data"] is msg.data  # the wire bytes, not a copy element by element
    plain = msgpack.unpackb(msgpack.packb({"value": value}))["value"]  # any language's msgpack
    got = np.frombuffer(plain["data"], dtype=plain["dtype"]).reshape(plain["shape"])
    assert got.tolist() == image.tolist()
    assert from_plain(plain) == decode_value(msg)  # and back to SPEC


def test_lists_and_tables_become_arrays_and_associative_arrays() -> None:
    row = from_plain([1, 2.5, 3])
    assert isinstance(row, SpecArray) and (row.type, row.rows, row.cols) == (
        DataType.SV_ARR_DOUBLE, 1, 3) and row.items == (1.0, 2.5, 3.0)
    grid = from_plain([[1, 2], [3, 4]])
    assert isinstance(grid, SpecArray) and (grid.rows, grid.cols) == (2, 2)
    assert encode_value(grid)[1] == struct.pack("<4d", 1, 2, 3, 4)
    assert from_plain({"a": 1, "b": "x", "c": {"d": 2.5}}) == {"a": "1", "b": "x",
                                                                "c\x1cd": "2.5"}
    assert (from_plain("text"), from_plain(3), from_plain(True), from_plain(1.5)) == (
        "text", "3", "1", 1.5)
    for bad, match in [(["a", "b"], "numbers only"), ([[1, 2], [3]], "same length"),
                       ({"a": [1]}, "not text or a number"), (None, "cannot send"),
                       ({"dtype": "<c16", "shape": [1], "data": b"x" * 16}, "not one SPEC"),
                       ({"dtype": "<u2", "shape": [3], "data": b"xx"}, "are not a 1 x 3")]:
        with pytest.raises(LocalProtocolError, match=match):
            from_plain(bad)
    assert is_bus_array({"dtype": "<u2", "shape": [1], "data": b"xx"})
    assert not is_bus_array({"dtype": "<u2", "shape": [1], "data": "xx"})


def test_sub_and_send_print_a_summary_or_base64() -> None:
    values = np.array([[1.5, np.nan], [-2.0, 7.25]], dtype=">f8")
    event = {"chan": "var/X", "value": {"dtype": ">f8", "shape": [2, 2],
                                        "data": values.tobytes()}, "n": [1, {"k": b"x"}]}
    text = shown_arrays(event, as_json=False)
    assert text["value"] == "<array >f8 2x2, 32 bytes, min -2 max 7.25>"
    assert text["n"] == [1, {"k": b"x"}]  # other bytes stay what they were
    js = shown_arrays(event, as_json=True)["value"]
    assert js["encoding"] == "base64" and js["shape"] == [2, 2]
    assert base64.b64decode(js["data"]) == values.tobytes()
    odd = {"dtype": "<u2", "shape": [1, 1], "data": b"abc"}  # not whole elements: no min/max
    assert shown_arrays(odd, as_json=False) == "<array <u2 1x1, 3 bytes>"
