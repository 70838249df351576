"""OPC UA DataValue -> `Reading`, with no I/O (testable on its own).

Contracts (DESIGN.md §2, §4):
- the status code becomes quality by its top two bits (00 Good, 01 Uncertain, 1x Bad); the code
  itself goes into ``status`` and its name (``BadSensorFailure``) into ``status_name``;
- a Bad status never replaces the value by text: the value is kept as the server sent it
  (usually null, which the OPC UA specification asks of servers);
- time is the source timestamp, else the server timestamp, else the receive time with
  `Flag.NO_SOURCE_TIME`; the server timestamp is kept alongside. The encoding's two ends (1601-01-01: "none",
  9999-12-31: "unknown") count as no timestamp.
"""

from __future__ import annotations

from datetime import UTC, datetime

from asyncua import ua
from asyncua.ua.status_codes import code_to_name_doc

from edge.records import Flag, Quality, Reading
from edge.source_quality import from_opcua_status as quality_of  # the severity bits, as JSON's opcua format reads

# OPC UA encodes "no timestamp" as 0, which asyncua decodes as 1601-01-01.
_EPOCH_FLOOR = datetime(1601, 1, 2, tzinfo=UTC)
# The other end of the encoding (Part 6 §5.2.2.5: MaxInt64, decoded as 9999-12-31 23:59:59): what devices send for
# "unknown" (.NET's DateTime.MaxValue). Never a real time: as one, every value of the tag would share the same
# (tag, time) key and the database would keep only the first.
_EPOCH_CEILING = datetime(9999, 12, 31, tzinfo=UTC)
_CODE_MASK = 0xFFFF0000  # the low 16 bits are info bits (limits, overflow), not part of the name

_SCALARS = (bool, int, float, str)
# Info bits (OPC UA Part 4 §7.39.1): InfoType DataValue (bits 10-11 = 01) with the Overflow bit (7) set: the
# server's queue of this monitored item was full and it discarded values next to this one (§5.12.1.5).
OVERFLOW_MASK = 0x0C80
OVERFLOW = 0x0480


def overflowed(code: int) -> bool:
    """Whether ``code`` carries the Overflow info bit: values of the item were lost in the server's queue."""
    return code & OVERFLOW_MASK == OVERFLOW


def status_name(code: int) -> str:
    """Symbolic name of a status code ("BadSensorFailure"), ignoring its info bits."""
    entry = code_to_name_doc.get(code) or code_to_name_doc.get(code & _CODE_MASK)
    if entry is not None:
        return entry[0]
    return {Quality.GOOD: "Good", Quality.UNCERTAIN: "Uncertain"}.get(quality_of(code), "Bad") + f"_0x{code:08X}"


def _time(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    return None if ts < _EPOCH_FLOOR or ts >= _EPOCH_CEILING else ts


def plain_value(v: object) -> tuple[object, bool]:
    """A Reading-compatible value and whether the type was usable.

    Scalars pass through; text-like OPC UA types become str; datetimes become ISO-8601 text.
    Arrays and structures are not readings yet (issue 3: flatten or reject as configured),
    so they give (None, False).
    """
    if v is None or isinstance(v, _SCALARS):
        return v, True
    if isinstance(v, ua.LocalizedText):
        return v.Text, True
    if isinstance(v, ua.QualifiedName):
        return v.to_string(), True
    if isinstance(v, datetime):
        return v.isoformat(), True
    if isinstance(v, ua.StatusCode):
        return v.value, True
    if isinstance(v, ua.NodeId):
        return v.to_string(), True
    return None, False


def to_reading(tag: str, dv: ua.DataValue, receive_time: datetime) -> Reading:
    """One DataValue of ``tag`` as a Reading (see the module contract)."""
    variant = dv.Value
    raw = variant.Value if variant is not None else None
    value, usable = plain_value(raw)
    code = dv.StatusCode.value if dv.StatusCode is not None else 0
    flags = 0
    quality = Quality.GOOD
    name = ""
    if code:
        quality = quality_of(code)
        if quality is not Quality.GOOD:
            flags |= Flag.SOURCE_STATUS
        name = status_name(code)
    if not usable:
        flags |= Flag.TYPE_MISMATCH
        quality = Quality.BAD
        name = name or ("UnsupportedArray" if isinstance(raw, list | tuple) else f"Unsupported{type(raw).__name__}")
    server_time = _time(dv.ServerTimestamp)
    t = _time(dv.SourceTimestamp) or server_time
    if t is None:
        t = receive_time
        flags |= Flag.NO_SOURCE_TIME
    return Reading(tag=tag, time=t, value=value, receive_time=receive_time, quality=quality, flags=int(flags),
                   status=code, status_name=name, server_time=server_time)



def _flat(values: list) -> list:
    out: list = []
    for v in values:
        if isinstance(v, list | tuple):
            out.extend(_flat(list(v)))
        else:
            out.append(v)
    return out


def to_readings(tag: str, dv: ua.DataValue, receive_time: datetime, *, flatten: bool) -> list[Reading]:
    """Like `to_reading`; with ``flatten`` an array becomes one reading per element, ``tag[i]``.

    Multi-dimensional arrays are flattened in row-major order (``tag[i]`` counts elements). A Bad
    array (no value) gives one reading of ``tag`` carrying the status.
    """
    variant = dv.Value
    raw = variant.Value if variant is not None else None
    if not flatten or not isinstance(raw, list | tuple):
        return [to_reading(tag, dv, receive_time)]
    out = []
    for i, v in enumerate(_flat(list(raw))):
        out.append(to_reading(f"{tag}[{i}]", ua.DataValue(ua.Variant(v), dv.StatusCode, dv.SourceTimestamp,
                                                            dv.ServerTimestamp), receive_time))
    return out
