"""Readings of one message whose time is the receive time (no source time): pure functions, no I/O.

The database keeps one reading per (tag, time), the first one stored. A message's readings without a source time
all get its receive time, so:

- several of one tag (a JSON array of bare values, samples of a batch without times) collided and all but the
  first were lost without a word. `spread` gives the k-th of a tag (in message order) the receive time plus k µs:
  every sample is kept and their order with it, the flag ``NO_SOURCE_TIME`` still says the time is the gateway's.
  Readings of different tags keep the receive time itself, so the values one message carries stay aligned in time.
- a retained message is the broker's last known value, sent again at every new subscription (a clean session, a
  new filter, a broker that lost the session). Stored at the receive time it would be a fresh reading of an old
  value, once per subscription. `without_untimed` drops such readings (the default) and `mark_retained` flags them
  ``RETAINED`` where the configuration keeps them. Readings with a source time are stored as usual: their time
  is true, and a copy of one the database holds finds its key.
"""

from __future__ import annotations

from datetime import timedelta

from edge.columns import Rows
from edge.records import Flag, Reading

NO_TIME = int(Flag.NO_SOURCE_TIME)
RETAINED = int(Flag.RETAINED)
_US = timedelta(microseconds=1)


def _untimed(readings: Rows | list[Reading]) -> list[int]:
    """Positions of the readings without a source time."""
    if readings.__class__ is Rows:
        flags = readings.flags
        # Rows hold exactly 0 or NO_TIME (the JSON decoder): one scan in C decides for the usual timed message.
        return [i for i, f in enumerate(flags) if f & NO_TIME] if NO_TIME in flags else []
    return [i for i, r in enumerate(readings) if r.flags & NO_TIME]


def spread(readings: Rows | list[Reading]) -> int:
    """Give the k-th untimed reading of each tag the receive time + k µs, in place; returns the microseconds the
    untimed readings take from the receive time (0: there are none), which a later message's must not reuse."""
    idx = _untimed(readings)
    if len(idx) < 2:
        return len(idx)
    rows = readings.__class__ is Rows
    tags = readings.tags if rows else [r.tag for r in readings]
    if len({tags[i] for i in idx}) == len(idx):
        return 1
    seen: dict[str, int] = {}
    for i in idx:
        k = seen.get(tags[i], 0)
        seen[tags[i]] = k + 1
        if not k:
            continue
        if rows:
            readings.times[i] += k
        else:
            readings[i].time += k * _US
    return max(seen.values())


def without_untimed(readings: Rows | list[Reading]) -> tuple[Rows | list[Reading], int]:
    """The readings that have a source time, and how many were left out."""
    idx = _untimed(readings)
    if not idx:
        return readings, 0
    if readings.__class__ is not Rows:
        return [r for r in readings if not r.flags & NO_TIME], len(idx)
    out = Rows(readings.recv_us)
    drop, bad = set(idx), set(readings.bad)
    for i, (tag, t, v, f) in enumerate(zip(readings.tags, readings.times, readings.values, readings.flags,
                                           strict=True)):
        if i in drop:
            continue
        if i in bad:
            out.bad.append(len(out.tags))
        if i in readings.source:
            out.source[len(out.tags)] = readings.source[i]
        out.tags.append(tag)
        out.times.append(t)
        out.values.append(v)
        out.flags.append(f)
    return out, len(idx)


def mark_retained(readings: Rows | list[Reading]) -> None:
    """Flag the untimed readings of a retained message ``RETAINED``, in place."""
    for i in _untimed(readings):
        if readings.__class__ is Rows:
            readings.flags[i] |= RETAINED
        else:
            readings[i].flags |= RETAINED
