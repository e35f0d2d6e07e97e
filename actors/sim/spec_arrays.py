"""Data arrays of the simulated SPEC session: the ones macros declare (``[shared] ushort array
IMG[1024][1024]``) and the live ones a simulated detector fills over time.

`DataArray` holds its elements in an `array.array` of the SPEC type (machine byte order); a
1-D array is ``1 x N`` as SPEC sends it. `snapshot` is the `SpecArray` a client reads.

Live arrays are produced frame by frame: the owner's clock advances `LiveArray.frame` once per
period (``1 / rate`` seconds; late ticks catch up, none is skipped), and a read gets the
current frame. Each frame carries its own number in its first elements
(``MCA[0]`` for the spectrum; ``IMG[0][0]`` + 65536 * ``IMG[0][1]`` for the image), so a
subscriber can tell a lost frame from a late one. Rendering costs a copy of precomputed bytes
(no per-element work), so a 1024 x 1024 frame a second is cheap; the precomputed patterns are
built on first use.
"""

from __future__ import annotations

import array
import math
import random
import struct
from typing import Any, Final

from actors.protocols.spec import DataType
from actors.protocols.spec_types import ELEMENTS, NATIVE, SpecArray

TYPE_NAMES: Final[dict[str, int]] = {
    "byte": DataType.SV_ARR_CHAR, "ubyte": DataType.SV_ARR_UCHAR,
    "short": DataType.SV_ARR_SHORT, "ushort": DataType.SV_ARR_USHORT,
    "long": DataType.SV_ARR_LONG, "ulong": DataType.SV_ARR_ULONG,
    "long64": DataType.SV_ARR_LONG64, "ulong64": DataType.SV_ARR_ULONG64,
    "float": DataType.SV_ARR_FLOAT, "double": DataType.SV_ARR_DOUBLE,
}
MAX_ELEMENTS: Final = 16 * 1024 * 1024  # a declaration beyond this is refused
MCA_VARIANTS: Final = 16  # precomputed spectra the live MCA cycles through


class ArrayError(Exception):
    """A data-array operation the simulated SPEC refuses; the message says why."""


class DataArray:
    """A SPEC data array: `rows` x `cols` elements of SPEC array type `type`."""

    def __init__(self, name: str, type: int, rows: int, cols: int) -> None:
        if type not in ELEMENTS:
            raise ArrayError(f"{name}: type {type} is not a numeric SPEC array type")
        if rows < 1 or cols < 1 or rows * cols > MAX_ELEMENTS:
            raise ArrayError(f"{name}: {rows} x {cols} elements is not a size the simulator "
                             f"takes (1 to {MAX_ELEMENTS})")
        self.name, self.type, self.rows, self.cols = name, type, rows, cols
        self.values = array.array(ELEMENTS[type], bytes(rows * cols *
                                                        struct.calcsize(ELEMENTS[type])))

    def snapshot(self) -> SpecArray:
        return SpecArray(self.type, self.rows, self.cols, data=self.values.tobytes(),
                         order=NATIVE)

    def index(self, keys: list[float]) -> int:
        """The flat index of ``NAME[i]`` (1-D) or ``NAME[i][j]``; ArrayError out of range."""
        if len(keys) == 1 and self.rows == 1:
            row, col = 0.0, keys[0]
        elif len(keys) == 2:
            row, col = keys
        else:
            shape = f"[{self.cols}]" if self.rows == 1 else f"[{self.rows}][{self.cols}]"
            raise ArrayError(f"{self.name} is a data array {shape}: give "
                             f"{1 if self.rows == 1 else 2} index(es)")
        if not (float(row).is_integer() and float(col).is_integer() and
                0 <= row < self.rows and 0 <= col < self.cols):
            raise ArrayError(f"{self.name}[{_index_text(keys)}]: index out of range "
                             f"(array is {self.rows} x {self.cols})")
        return int(row) * self.cols + int(col)

    def get(self, keys: list[float]) -> float:
        return float(self.values[self.index(keys)])

    def set(self, keys: list[float], value: float) -> None:
        self.values[self.index(keys)] = self._element(value)

    def fill(self, value: float) -> None:
        self.values = array.array(self.values.typecode, [self._element(value)]) * \
            (self.rows * self.cols)

    def assign(self, value: SpecArray) -> None:
        """Take `value`'s elements (converted to this array's type when they fit)."""
        if value.type not in ELEMENTS:
            raise ArrayError(f"{self.name}: a string array cannot be stored in a data array")
        if (value.rows, value.cols) != (self.rows, self.cols):
            self.rows, self.cols = value.rows, value.cols
        if value.type == self.type:
            self.values = value.native()
        else:
            self.values = array.array(self.values.typecode,
                                      (self._element(v) for v in value.native()))

    def _element(self, value: float) -> Any:
        code = self.values.typecode
        if code in "fd":
            return float(value)
        if not math.isfinite(value):
            raise ArrayError(f"{self.name}: {value} does not fit an integer array")
        number = math.trunc(value)
        bits = 8 * self.values.itemsize
        low, high = (0, 2**bits - 1) if code.isupper() else (-(2**(bits - 1)),
                                                             2**(bits - 1) - 1)
        if not low <= number <= high:
            raise ArrayError(f"{self.name}: {number} does not fit its element type "
                             f"({low} to {high})")
        return number


def from_spec(name: str, value: SpecArray) -> DataArray:
    """A new data array holding `value` (a client's CHAN_SEND of an array)."""
    made = DataArray(name, value.type, max(1, value.rows), max(1, value.cols))
    made.assign(value)
    return made


class LiveArray:
    """A data array a simulated detector refreshes `rate` times a second (read-only)."""

    def __init__(self, name: str, type: int, rows: int, cols: int, rate: float,
                 start: float) -> None:
        self.name, self.type, self.rows, self.cols = name, type, rows, cols
        self.rate, self.start = rate, start
        self.frame = 0  # the current frame number
        self._patterns: list[bytes] = []

    def next_due(self) -> float:
        """When (on the owner's clock) the frame after the current one is due."""
        return self.start + (self.frame + 1) / self.rate

    def render(self, frame: int) -> SpecArray:
        if not self._patterns:
            self._patterns = self._build()
        return SpecArray(self.type, self.rows, self.cols, data=self._frame(frame),
                         order=NATIVE)

    def _build(self) -> list[bytes]:
        raise NotImplementedError

    def _frame(self, frame: int) -> bytes:
        raise NotImplementedError


class LiveSpectrum(LiveArray):
    """A multichannel-analyser spectrum (``ulong``, 1 x channels): two peaks on a falling
    background with counting noise; element 0 is the frame number."""

    def __init__(self, name: str, channels: int, rate: float, start: float) -> None:
        super().__init__(name, DataType.SV_ARR_ULONG, 1, channels, rate, start)

    def _build(self) -> list[bytes]:
        rng = random.Random(1)
        n = self.cols
        shape = [200 * math.exp(-i / (n / 4)) + 5000 * math.exp(-((i - n * 0.3) / 12) ** 2)
                 + 2500 * math.exp(-((i - n * 0.62) / 20) ** 2) for i in range(n)]
        return [array.array("I", (max(0, int(v + rng.gauss(0, math.sqrt(v + 1))))
                                  for v in shape)).tobytes() for _ in range(MCA_VARIANTS)]

    def _frame(self, frame: int) -> bytes:
        data = bytearray(self._patterns[frame % MCA_VARIANTS])
        struct.pack_into("=I", data, 0, frame & 0xFFFFFFFF)
        return bytes(data)


class LiveImage(LiveArray):
    """A detector image (``ushort``, rows x cols): diagonal fringes that drift one row per
    frame; ``[0][0]`` and ``[0][1]`` hold the frame number (low and high 16 bits)."""

    def __init__(self, name: str, rows: int, cols: int, rate: float, start: float) -> None:
        super().__init__(name, DataType.SV_ARR_USHORT, rows, cols, rate, start)

    def _build(self) -> list[bytes]:
        width = self.cols
        line = array.array("H", (int(2000 + 1500 * math.sin(j / 9.0) + 400 * math.sin(j / 97.0))
                                 for j in range(width))).tobytes()
        rows = [line[(r * 6) % (2 * width):] + line[:(r * 6) % (2 * width)]
                for r in range(self.rows)]
        return [b"".join(rows)]

    def _frame(self, frame: int) -> bytes:
        base = self._patterns[0]
        cut = (frame % self.rows) * self.cols * 2
        data = bytearray(base[cut:] + base[:cut])
        struct.pack_into("=HH", data, 0, frame & 0xFFFF, (frame >> 16) & 0xFFFF)
        return bytes(data)


def frame_number(value: SpecArray) -> int:
    """The frame number a live array carries in its first elements."""
    first = value.native()
    if value.type == DataType.SV_ARR_USHORT:
        return int(first[0]) + 65536 * int(first[1])
    return int(first[0])


def _index_text(keys: list[float]) -> str:
    return "][".join(f"{k:g}" for k in keys)
