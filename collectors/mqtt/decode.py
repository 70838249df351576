"""Payload decoders: ``(payload, topic, receive_time) -> list[Reading]``, no I/O.

Each subscription gets its own decoder from `make_decoder`. A malformed payload raises
`edge.errors.DataError` whose message says what is wrong and where (sample index, field path);
the collector dead-letters it. A JSON message's malformed samples are left out and named while its
good ones are kept (`JsonDecoder.rows`); the collector stores those and dead-letters the message.
NaN and infinities are not errors: they become readings and the validation stage flags them.
Values without a source timestamp get the receive time and `Flag.NO_SOURCE_TIME`.

Values are kept in the types the spool can store exactly: bool, int within 64 bits (larger
integers become floats), float, str (valid UTF-8), or None (a null value, bad quality).

This is the hot path (hundreds of thousands of readings per second): readings are built
positionally, the tag text around ``{field}`` is cached per topic, and time conversion
dispatches on the exact type.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson

from collectors.mqtt.config import JsonMapping, Subscription
from collectors.mqtt.topics import TagTemplate
from edge.columns import MAX_US, MIN_US, Rows, to_us
from edge.errors import DataError
from edge.records import Flag, Quality, Reading
from edge.source_quality import from_opcda_quality, from_opcua_status, from_text

Decoder = Callable[[bytes, str, datetime], list[Reading]]

GOOD = Quality.GOOD
BAD = Quality.BAD
NO_TIME = int(Flag.NO_SOURCE_TIME)
SOURCE_STATUS = int(Flag.SOURCE_STATUS)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_modf = math.modf
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what the spool (msgpack) stores as an integer
_MISSING = object()


def make_decoder(sub: Subscription) -> Decoder:
    """The decoder for one subscription (a fresh tag cache each time)."""
    _, template = sub.compiled()
    if sub.format == "plain":
        return PlainDecoder(template)
    if sub.format == "json":
        return JsonDecoder(template, sub.json_)
    from collectors.mqtt.sparkplug import SparkplugDecoder

    return SparkplugDecoder(template, custom_tag=sub.tag is not None)


# -- values and times ---------------------------------------------------------------------------

def storable_int(v: int) -> int | float:
    """``v`` if the spool stores it as an integer, else as a float (DataError beyond float range)."""
    if _INT_MIN <= v <= _INT_MAX:
        return v
    try:
        return float(v)
    except OverflowError:
        raise DataError(f"integer {str(v)[:20]}... is beyond the float range") from None


def parse_plain(payload: bytes) -> float | int | bool:
    """A plain-text payload: a number (int or float, also nan/inf), or true/false (any case)."""
    try:
        text = payload.decode("ascii").strip()
    except UnicodeDecodeError:
        raise DataError(f"plain payload is not ASCII text: {payload[:40]!r}") from None
    if not text:
        raise DataError("empty payload (expected a number)")
    low = text.lower()
    if "_" in text:  # int() and float() take Python's digit-group underscores: a garbled "1_5" is not 15
        raise DataError(f"plain payload is not a number or true/false: {text[:40]!r}")
    if low == "true":
        return True
    if low == "false":
        return False
    try:
        return storable_int(int(text))
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise DataError(f"plain payload is not a number or true/false: {text[:40]!r}") from None


def epoch_to_datetime(v: float | int, unit: str) -> datetime:
    """Epoch number in ``unit`` (s, ms, us, ns, or auto by magnitude) to an aware UTC datetime."""
    if unit == "auto":
        a = abs(v)
        unit = "s" if a < 1e11 else "ms" if a < 1e14 else "us" if a < 1e17 else "ns"
    try:
        if type(v) is int and unit in ("us", "ns"):
            # Integer arithmetic: float division would be off by a microsecond at this magnitude.
            return EPOCH + timedelta(microseconds=v if unit == "us" else v // 1000)
        if unit == "s":
            return datetime.fromtimestamp(v, UTC)
        return datetime.fromtimestamp(v / (1e3 if unit == "ms" else 1e6 if unit == "us" else 1e9), UTC)
    except (OverflowError, ValueError, OSError):
        raise DataError(f"timestamp {v!r} (epoch {unit}) is out of range") from None


def parse_time(v: object, fmt: str) -> datetime:
    """A JSON timestamp: ISO-8601 text (naive = UTC) or an epoch number, per ``time_format``."""
    t = type(v)
    if t is str:
        if fmt in ("auto", "iso8601"):
            try:
                dt = datetime.fromisoformat(v)
            except ValueError:
                dt = _iso_lower_case(v)
                if dt is None and fmt == "iso8601":
                    raise DataError(f"time {v[:40]!r} is not ISO-8601") from None
            if dt is not None:
                if dt.tzinfo is None:
                    return dt.replace(tzinfo=UTC)
                if dt.tzinfo is UTC:
                    return dt
                try:
                    return dt.astimezone(UTC)
                except (OverflowError, ValueError):  # e.g. 0001-01-01T00:00:00+01:00 is in year 0 in UTC
                    raise DataError(f"time {v[:40]!r} is out of range in UTC (years 1 to 9999)") from None
        try:
            if "_" in v:  # int() and float() take digit-group underscores, no device means them
                raise ValueError
            num = float(v) if any(c in v for c in ".eE") else int(v)
        except ValueError:
            raise DataError(f"time {v[:40]!r} is neither ISO-8601 nor an epoch number") from None
        return parse_time(num, fmt)
    if t is int or t is float:
        if fmt == "iso8601":
            raise DataError(f"time {v!r} is a number but time_format is iso8601")
        if t is float and not math.isfinite(v):
            raise DataError(f"time {v!r} is not a finite number")
        return epoch_to_datetime(v, "auto" if fmt == "auto" else fmt[6:])
    raise DataError(f"time must be text or a number, not {_kind(v)}")


def _iso_lower_case(v: str) -> datetime | None:
    """RFC 3339 (§5.6) allows a lower-case ``t`` and ``z``, which `datetime.fromisoformat` refuses."""
    up = v.upper()
    if up == v:
        return None
    try:
        return datetime.fromisoformat(up)
    except ValueError:
        return None


def _kind(v: object) -> str:
    return _KINDS.get(type(v), type(v).__name__)


_KINDS = {dict: "an object", list: "an array", bool: "a boolean", type(None): "null", int: "a number",
          float: "a number", str: "text"}


def _check_str(s: str) -> str:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError("text with unpaired surrogates (not valid UTF-8)") from None
    return s


# -- decoders ----------------------------------------------------------------------------------

class PlainDecoder:
    """The payload is one value as text; the tag comes from the topic."""

    def __init__(self, template: TagTemplate) -> None:
        self.template = template

    def __call__(self, payload: bytes, topic: str, receive_time: datetime) -> list[Reading]:
        return [Reading(self.template.render(topic), receive_time, parse_plain(payload), receive_time, GOOD,
                        NO_TIME)]


def loads_json(payload: bytes) -> object:
    """Parse JSON; non-standard NaN / Infinity literals (sent by many devices) are accepted."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        first = exc
    # The stdlib parser accepts NaN/Infinity and numbers beyond double range; the round trip through
    # orjson refuses what the spool could not store (unpaired surrogates, integers beyond 64 bits).
    try:
        doc = json.loads(payload)
        orjson.dumps(doc)
        return doc
    except (ValueError, TypeError, RecursionError, orjson.JSONEncodeError):
        raise DataError(f"not JSON: {first}") from None


def _lookup(doc: object, path: tuple[str, ...]) -> object:
    """The value at a dotted path (as a tuple of keys); _MISSING where any step is absent."""
    if not path:
        return _MISSING
    for k in path:
        if type(doc) is not dict:
            return _MISSING
        doc = doc.get(k, _MISSING)
        if doc is _MISSING:
            break
    return doc


_AUTO_BANDS = ((1e11, 1.0), (1e14, 1e3), (1e17, 1e6))  # |epoch| below -> divisor to seconds
_UNIT_DIV = {"epoch_s": 1.0, "epoch_ms": 1e3, "epoch_us": 1e6}


def _at(i: int, n: int, exc: DataError) -> str:
    """A malformed sample's error, with its index where the message holds more than one."""
    return str(exc) if n == 1 else f"sample {i}: {exc}"


class JsonDecoder:
    """JSON with a field mapping (`JsonMapping`): one sample, arrays of samples, multi-tag batches."""

    def __init__(self, template: TagTemplate, mapping: JsonMapping) -> None:
        self.template = template
        self.m = mapping
        self.fmt = mapping.time_format
        self.wide = mapping.value == "*"  # every key but time/tag is a tag

        def split(path: str) -> tuple[str, ...]:
            return tuple(path.split(".")) if path else ()

        self.vpath = () if self.wide else split(mapping.value)
        self.tpath, self.gpath, self.spath = split(mapping.time), split(mapping.tag), split(mapping.samples)
        self.qpath = split(mapping.quality)
        # Keys a wide sample skips: the first step of the time, tag and quality paths.
        self.skip = {p[0] for p in (self.tpath, self.gpath, self.qpath) if p}
        # Epoch numbers in a fixed unit (or, for auto, the unit of the previous number while the next is in
        # the same magnitude band) convert with one float division: for integer ms or µs below 2**53 the
        # double is within 0.12 µs of the exact value, so rounding to µs is exact.
        self.div = _UNIT_DIV.get(self.fmt)
        self.band = (0.0, 0.0, 1.0)  # auto: (low, high, divisor) of the last number seen

    def _epoch_us(self, t: float | int) -> int:
        """An epoch number as microseconds, rounded exactly as `datetime.fromtimestamp` rounds."""
        div = self.div
        if div is None:
            if self.fmt != "auto":
                return to_us(parse_time(t, self.fmt))  # iso8601 (error) or epoch_ns (integer arithmetic)
            lo, hi, div = self.band
            a = t if t >= 0 else -t
            if not lo <= a < hi:
                if t != t or a >= 1e17 or a == float("inf"):
                    return to_us(parse_time(t, "auto"))
                k = 0 if a < 1e11 else 1 if a < 1e14 else 2
                lo, (hi, div) = (0.0, 1e11, 1e14)[k], _AUTO_BANDS[k]
                self.band = (lo, hi, div)
        try:
            if type(t) is int:
                us = t * (1_000_000 // int(div))
            else:
                frac, whole = _modf(t / div)
                us = int(whole) * 1_000_000 + round(frac * 1e6)
        except (OverflowError, ValueError):
            raise DataError(f"timestamp {t!r} is out of range") from None
        if not MIN_US <= us <= MAX_US:
            raise DataError(f"timestamp {t!r} is out of range")
        return us

    def _quality(self, q: object) -> tuple[int, int] | None:
        """(quality, status code) of a sample whose device stated ``q`` at ``json.quality``; None for good without a
        code (nothing to mark). A statement that cannot be read makes the sample malformed: stored as good it would
        pass a failed sensor's value into averages and models, and a number is never guessed at (OPC UA's 0 is good,
        OPC DA's 0 bad)."""
        fmt, t = self.m.quality_format, type(q)
        quality: Quality | None = None
        code = 0
        if t is bool and fmt in ("auto", "bool"):
            quality = GOOD if q else BAD
        elif t is str and fmt in ("auto", "text", "opcua"):
            quality = from_text(q)
        elif fmt == "opcua" and (t is int or (t is dict and type(q.get("Code")) is int)):
            code = q if t is int else q["Code"]  # Part 6's non-reversible form: {"Code": n, "Symbol": "..."}
            if 0 <= code <= 0xFFFF_FFFF:
                quality = from_opcua_status(code)
        elif fmt == "opcda" and t is int and 0 <= q <= 0xFFFF:
            quality, code = from_opcda_quality(q), q
        if quality is None:
            hint = (' (a number: set json.quality_format to "opcua", a StatusCode good at 0, or "opcda", a code good '
                    'at 192)') if fmt == "auto" and t in (int, float) else ""
            raise DataError(f"quality {str(q)[:40]!r} at {self.m.quality!r} is none json.quality_format = "
                            f"{fmt!r} reads{hint}")
        return None if quality is GOOD and not code else (int(quality), code)

    def __call__(self, payload: bytes, topic: str, receive_time: datetime) -> list[Reading]:
        """The `Decoder` protocol (tools and tests): every sample or a `DataError` for the first malformed one.
        The collector uses `rows`, which keeps a message's good samples."""
        out = self.rows(payload, topic, receive_time)
        if out.errors:
            raise DataError(out.errors[0])
        return list(out)

    def rows(self, payload: bytes, topic: str, receive_time: datetime) -> Rows:
        """Decode one message into `Rows` (plain lists): no Reading or datetime per sample on the hot path.

        A malformed sample (or, in a wide object, a malformed value) is left out and named in ``errors``; the
        message's other samples are kept (a device's one bad value must not cost the good ones beside it). A
        message of which nothing is readable raises `DataError`."""
        doc = loads_json(payload)
        msg_time = msg_tag = msg_quality = _MISSING
        if self.spath:
            samples = _lookup(doc, self.spath)
            if type(samples) is not list:
                where = "missing" if samples is _MISSING else _kind(samples)
                raise DataError(f"samples at {self.m.samples!r}: expected an array, got {where}")
            msg_time = _lookup(doc, self.tpath)
            msg_tag = _lookup(doc, self.gpath)
            msg_quality = _lookup(doc, self.qpath)
        elif type(doc) is list:
            samples = doc
        else:
            samples = (doc,)
        pre, post = self.template.around_field(topic)
        needs_field = self.template.uses_field and not self.wide
        names = self.template.field_tags(topic) if needs_field else None
        wide, skip = self.wide, self.skip
        vpath, tpath, gpath, qpath = self.vpath, self.tpath, self.gpath, self.qpath
        vkey = vpath[0] if len(vpath) == 1 else None
        tkey = tpath[0] if len(tpath) == 1 else None
        gkey = gpath[0] if len(gpath) == 1 else None
        epoch = self._epoch_us
        out = Rows(to_us(receive_time))
        errors: list[str] = []
        tag_add, time_add, value_add, flag_add = out.tags.append, out.times.append, out.values.append, out.flags.append
        for i, s in enumerate(samples):
            try:
                if type(s) is dict:
                    t = s.get(tkey, msg_time) if tkey is not None else _lookup(s, tpath)
                    if t is _MISSING:
                        t = msg_time
                    if wide:
                        items = [(k, v) for k, v in s.items() if k not in skip]
                    else:
                        v = s.get(vkey, _MISSING) if vkey is not None else _lookup(s, vpath)
                        if v is _MISSING:
                            raise DataError(f"no value at {self.m.value!r}")
                    field = s.get(gkey, msg_tag) if gkey is not None else _lookup(s, gpath)
                    if field is _MISSING:
                        field = msg_tag
                    if qpath:
                        q = _lookup(s, qpath)
                        if q is _MISSING:
                            q = msg_quality
                elif wide or type(s) is list or s is None:
                    raise DataError(f"expected an object{'' if wide else ' or a value'}, got {_kind(s)}")
                else:
                    v, t, field, q = s, msg_time, msg_tag, msg_quality
                if t is _MISSING or t is None:
                    time_us, flags = out.recv_us, NO_TIME
                else:
                    tt = type(t)
                    time_us = epoch(t) if tt is int or tt is float else to_us(parse_time(t, self.fmt))
                    flags = 0
                mark = None
                # A sample without a stated quality (OPC UA's JSON leaves out a Good StatusCode) is good.
                if qpath and q is not _MISSING and q is not None:
                    mark = self._quality(q)
                    if mark is not None and mark[0] != GOOD:
                        flags |= SOURCE_STATUS
                if needs_field:
                    tag = names.get(field) if type(field) is str else None
                    if tag is None:
                        tag = self._field_tag(field, names, pre, post)
                else:
                    tag = pre
                if wide:
                    for k, v in items:
                        try:
                            if not k:
                                raise DataError("an empty key cannot name a tag")
                            self._add(out, pre + _check_str(k) + post, time_us, v, flags, k)
                            if mark is not None:
                                out.source[len(out.tags) - 1] = mark
                        except DataError as exc:
                            errors.append(_at(i, len(samples), exc))
                    continue
                tv = type(v)
                if tv is float or tv is bool:
                    tag_add(tag)
                    time_add(time_us)
                    value_add(v)
                    flag_add(flags)
                else:
                    self._add(out, tag, time_us, v, flags, None)
                if mark is not None:
                    out.source[len(out.tags) - 1] = mark
            except DataError as exc:
                # Nothing is appended for a sample before it is known good, so skipping it leaves no part behind.
                errors.append(_at(i, len(samples), exc))
        if errors:
            if not out.tags:
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                raise DataError(errors[0] + more)
            out.errors = errors
        return out

    def _field_tag(self, field: object, names: dict[str, str], pre: str, post: str) -> str:
        if field is _MISSING or field is None:
            raise DataError(f"no tag name at {self.m.tag!r}" if self.m.tag else
                            'the tag template needs {field}, which only json.tag or json.value = "*" provide')
        if type(field) is not str:
            raise DataError(f"tag name at {self.m.tag!r} is {_kind(field)}, not text")
        if not field:
            raise DataError(f"tag name at {self.m.tag!r} is empty")
        tag = pre + _check_str(field) + post
        self.template.remember(names, field, tag)
        return tag

    def _add(self, out: Rows, tag: str, time_us: int, v: object, flags: int, key: str | None) -> None:
        tv = type(v)
        if tv is float or tv is bool:
            pass
        elif tv is int:
            v = storable_int(v)
        elif tv is str:
            v = _check_str(v)
        elif v is None:
            out.bad.append(len(out.tags))  # a null value: bad quality, kept
        else:
            what = f"value of {key!r}" if key is not None else f"value at {self.m.value!r}"
            raise DataError(f"{what} is {_kind(v)}, not a number, boolean or text")
        out.tags.append(tag)
        out.times.append(time_us)
        out.values.append(v)
        out.flags.append(flags)
