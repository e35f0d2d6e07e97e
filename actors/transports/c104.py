"""Conversions between neutral values and the c104 package's types.

A neutral value is what the bus carries and `actors.protocols.iec104_map.coerce` produces:
a bool, int, float, str (a double point's state name) or None. The 104 server and the master
simulator both convert through here.
"""

from typing import Any

import c104


def to_c104(kind: str, value: Any) -> Any:
    """A neutral value (see `actors.protocols.iec104_map.coerce`) as the c104 object for `kind`."""
    if kind == "double":
        return getattr(c104.Double, value)
    if kind == "scaled":
        return c104.Int16(value)
    if kind == "normalized":
        return c104.NormalizedFloat(value)
    return value


def from_c104(value: Any) -> Any:
    """A c104 point value as a neutral, msgpack-native value."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, c104.Double):
        return value.name
    if isinstance(value, c104.Int16):
        return int(value)  # type: ignore[call-overload]  # the stub lacks __int__
    if isinstance(value, c104.NormalizedFloat):
        return float(value)  # type: ignore[arg-type]  # the stub lacks __float__
    return str(value)


def c104_type(name: str) -> c104.Type:
    return getattr(c104.Type, name)  # type: ignore[no-any-return]
