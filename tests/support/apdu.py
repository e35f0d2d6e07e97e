"""Minimal IEC 60870-5-104 APDU encoding and decoding, to drive the iec104-server over TLS from
Python's ``ssl`` (the c104 2.2.1 client cannot do TLS, see protocols/c104.md). Test support, not
a codec of the project: just what a master needs for STARTDT and a general interrogation.

Wire layout (the frame formats of IEC 60870-5-104, all multi-byte integers little-endian)::

    APDU  = 0x68, length (of the rest, 4..253), 4 control octets, [ASDU]
    I     = ctrl1 bit0 = 0: N(S) = (ctrl1|ctrl2<<8) >> 1, N(R) = (ctrl3|ctrl4<<8) >> 1; ASDU
    S     = 01 00, N(R) << 1 in ctrl3/4 (acknowledges I-frames); no ASDU
    U     = ctrl1 = 03 | function: STARTDT act 07 / con 0B, STOPDT act 13 / con 23,
            TESTFR act 43 / con 83; no ASDU
    ASDU  = TypeId, VSQ (SQ bit 7, number of objects bits 0..6), COT (T bit 7, P/N bit 6,
            cause bits 0..5), originator address, common address (2), objects
    object = IOA (3) + element; with SQ = 1 one IOA, then consecutive elements

Elements decoded (`ELEMENTS`): single points (SIQ: value bit 0), double points (DIQ: bits 0-1),
normalized / scaled / short float measurements (+ QDS), integrated totals (BCR: i32 + sequence
octet), the CP56Time2a-tagged variants of these (time kept as 7 raw bytes), and the
interrogation command C_IC_NA_1 (QOI). Anything else is a `RemoteProtocolError`, as is a frame
that does not start with 0x68, has a bad length, or an ASDU whose size does not match its VSQ.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from broker.wire.errors import LocalProtocolError, RemoteProtocolError

START: Final = 0x68
MAX_LENGTH: Final = 253
STARTDT_ACT: Final = 0x07
STARTDT_CON: Final = 0x0B
STOPDT_ACT: Final = 0x13
STOPDT_CON: Final = 0x23
TESTFR_ACT: Final = 0x43
TESTFR_CON: Final = 0x83
U_FUNCTIONS: Final = (STARTDT_ACT, STARTDT_CON, STOPDT_ACT, STOPDT_CON, TESTFR_ACT,
                      TESTFR_CON)

# Causes of transmission used here
COT_SPONTANEOUS: Final = 3
COT_ACTIVATION: Final = 6
COT_ACTIVATION_CON: Final = 7
COT_ACTIVATION_TERM: Final = 10
COT_INTERROGATED: Final = 20  # "inrogen": answer to the station interrogation
QOI_STATION: Final = 20

C_IC_NA_1: Final = 100
CP56: Final = 7  # octets of a CP56Time2a time tag


def _siq(b: bytes) -> Any:
    return bool(b[0] & 0x01)


def _diq(b: bytes) -> Any:
    return b[0] & 0x03


def _nva(b: bytes) -> Any:
    return struct.unpack_from("<h", b)[0] / 32768.0


def _sva(b: bytes) -> Any:
    return struct.unpack_from("<h", b)[0]


def _float(b: bytes) -> Any:
    return struct.unpack_from("<f", b)[0]


def _bcr(b: bytes) -> Any:
    return struct.unpack_from("<i", b)[0]


def _qoi(b: bytes) -> Any:
    return b[0]


# TypeId -> (name, element size without time tag, value parser, time-tagged)
ELEMENTS: Final[dict[int, tuple[str, int, Callable[[bytes], Any], bool]]] = {
    1: ("M_SP_NA_1", 1, _siq, False),
    3: ("M_DP_NA_1", 1, _diq, False),
    9: ("M_ME_NA_1", 3, _nva, False),
    11: ("M_ME_NB_1", 3, _sva, False),
    13: ("M_ME_NC_1", 5, _float, False),
    15: ("M_IT_NA_1", 5, _bcr, False),
    30: ("M_SP_TB_1", 1, _siq, True),
    31: ("M_DP_TB_1", 1, _diq, True),
    34: ("M_ME_TD_1", 3, _nva, True),
    35: ("M_ME_TE_1", 3, _sva, True),
    36: ("M_ME_TF_1", 5, _float, True),
    37: ("M_IT_TB_1", 5, _bcr, True),
    C_IC_NA_1: ("C_IC_NA_1", 1, _qoi, False),
}


@dataclass(frozen=True)
class InfoObject:
    ioa: int
    value: Any
    raw: bytes  # the element (with its quality octet and time tag, if any)


@dataclass(frozen=True)
class Asdu:
    type_id: int
    cause: int
    negative: bool
    test: bool
    originator: int
    common_address: int
    objects: tuple[InfoObject, ...]

    @property
    def type_name(self) -> str:
        return ELEMENTS[self.type_id][0]


@dataclass(frozen=True)
class IFrame:
    send_seq: int
    recv_seq: int
    asdu: Asdu


@dataclass(frozen=True)
class SFrame:
    recv_seq: int


@dataclass(frozen=True)
class UFrame:
    function: int


Apdu = IFrame | SFrame | UFrame


# --- encoding ---------------------------------------------------------------------------------

def encode_u(function: int) -> bytes:
    if function not in U_FUNCTIONS:
        raise LocalProtocolError(f"U-frame function {function:#04x} is not one of "
                                 f"{[hex(f) for f in U_FUNCTIONS]}")
    return bytes([START, 4, function, 0, 0, 0])


def encode_s(recv_seq: int) -> bytes:
    return bytes([START, 4, 0x01, 0]) + struct.pack("<H", (recv_seq & 0x7FFF) << 1)


def encode_i(send_seq: int, recv_seq: int, asdu: bytes) -> bytes:
    if not 0 < len(asdu) <= MAX_LENGTH - 4:
        raise LocalProtocolError(f"an ASDU is 1..{MAX_LENGTH - 4} bytes, got {len(asdu)}")
    return (bytes([START, 4 + len(asdu)])
            + struct.pack("<HH", (send_seq & 0x7FFF) << 1, (recv_seq & 0x7FFF) << 1) + asdu)


def encode_interrogation(common_address: int, qoi: int = QOI_STATION) -> bytes:
    """The ASDU of a general interrogation C_IC_NA_1, cause activation, IOA 0."""
    if not 0 <= common_address <= 0xFFFF or not 0 <= qoi <= 0xFF:
        raise LocalProtocolError(f"common address {common_address} or QOI {qoi} out of range")
    return bytes([C_IC_NA_1, 1, COT_ACTIVATION, 0]) + struct.pack("<H", common_address) \
        + bytes([0, 0, 0, qoi])


# --- decoding ---------------------------------------------------------------------------------

def decode_asdu(data: bytes) -> Asdu:
    if len(data) < 6:
        raise RemoteProtocolError(f"ASDU of {len(data)} bytes is shorter than its 6-byte "
                                  "header", data)
    type_id, vsq, cot, originator = data[0], data[1], data[2], data[3]
    common_address = struct.unpack_from("<H", data, 4)[0]
    if type_id not in ELEMENTS:
        raise RemoteProtocolError(f"TypeId {type_id} is not one these helpers decode", data)
    _, size, parse, timed = ELEMENTS[type_id]
    size += CP56 if timed else 0
    count, sequence = vsq & 0x7F, bool(vsq & 0x80)
    body = data[6:]
    expected = (3 + count * size) if sequence else count * (3 + size)
    if count == 0 or len(body) != expected:
        raise RemoteProtocolError(f"{ELEMENTS[type_id][0]} with VSQ {vsq:#04x} needs "
                                  f"{expected} object bytes, got {len(body)}", data)
    return Asdu(type_id, cot & 0x3F, bool(cot & 0x40), bool(cot & 0x80), originator,
                common_address, tuple(_objects(body, count, size, sequence, parse)))


def _objects(body: bytes, count: int, size: int, sequence: bool,
             parse: Callable[[bytes], Any]) -> Iterator[InfoObject]:
    pos = 0
    ioa = 0
    for i in range(count):
        if not sequence or i == 0:
            ioa = int.from_bytes(body[pos:pos + 3], "little")
            pos += 3
        else:
            ioa += 1
        element = body[pos:pos + size]
        pos += size
        yield InfoObject(ioa, parse(element), element)


def decode_apdu(frame: bytes) -> Apdu:
    """One whole APDU (start octet to the end of its length)."""
    if len(frame) < 6 or frame[0] != START or frame[1] != len(frame) - 2:
        raise RemoteProtocolError(f"not a 104 APDU: {frame[:16].hex()}", frame)
    c1, c3 = frame[2], frame[4]
    if c1 & 0x01 == 0:
        send_seq, recv_seq = struct.unpack_from("<HH", frame, 2)
        return IFrame(send_seq >> 1, recv_seq >> 1, decode_asdu(frame[6:]))
    if len(frame) != 6:
        raise RemoteProtocolError(f"S/U frame with {len(frame) - 6} bytes after its control "
                                  "field", frame)
    if c1 & 0x03 == 0x01:
        return SFrame(struct.unpack_from("<H", frame, 4)[0] >> 1)
    if c1 not in U_FUNCTIONS or c3 != 0:
        raise RemoteProtocolError(f"unknown U-frame control {frame[2:6].hex()}", frame)
    return UFrame(c1)


class ApduReader:
    """Bytes from the stream in, whole APDUs out (`feed` then `apdus`); framing lost (a byte
    other than 0x68 where an APDU starts) is a `RemoteProtocolError`."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def apdus(self) -> Iterator[Apdu]:
        while len(self._buffer) >= 2:
            if self._buffer[0] != START:
                raise RemoteProtocolError("104 framing lost: expected 0x68, got "
                                          f"{bytes(self._buffer[:16]).hex()}",
                                          bytes(self._buffer))
            end = 2 + self._buffer[1]
            if len(self._buffer) < end:
                return
            frame = bytes(self._buffer[:end])
            del self._buffer[:end]
            yield decode_apdu(frame)
