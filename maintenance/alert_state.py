"""The alert manager's knowledge kept on disk, for a gateway that starts while the database is away.

A restarted gateway loads the open alerts (with who acknowledged them and how far they escalated) and the
maintenance windows from the database before it analyses anything (edge/analytics.py). When the database was
not there at that moment (a power cut: the gateway is up before PostgreSQL has finished its recovery; a cut
network path) the manager started empty, and until the database answered:

- every condition still active was raised again under a new id and paged again, alerts already acknowledged too,
  and those then escalated and paged again;
- conditions inside a planned maintenance window raised alerts and paged the crew working on the machine;
- alerts that were open and unacknowledged never escalated;
- a condition back within ``reopen_within_s`` of its alert's clear paged as a new alert instead of re-opening it.

So the gateway writes what it knows (`content`: open alerts, windows, alerts it cleared lately) to
``<state_dir>/alert_state.msgpack`` after each sync with the database, a few seconds after its own changes, and when
it stops; and `restore` reads it when the first sync fails. A file older than `MAX_AGE` is not used: the world has
moved on since (alerts cleared in the console). The database stays the record: its first answer replaces what was
restored (`AlertManager.load`) and forgets alerts cleared in the console meanwhile.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from pathlib import Path

import msgpack

from edge.files import write_atomic
from edge.records import Alert
from edge.spool import _msgpack_default  # numpy values in evidence, as the spool packs them
from maintenance.alerts import AlertManager, Window

STATE_FILE = "alert_state.msgpack"
FORMAT = 1
MAX_AGE = timedelta(days=1)


def content(manager: AlertManager, *, seen: bool = True) -> bytes:
    """The manager's open alerts, windows and recently cleared alerts (`AlertManager.recent`), packed (on the event
    loop: a copy of small records). ``seen=False`` leaves out when each condition was last seen, which moves with
    every active sample: what tells whether the file needs writing again (a write a second of a condition that
    lasts would wear a gateway's flash)."""
    alerts = [[dataclasses.asdict(o.alert), o.occurrences, o.last_seen if seen else None, o.escalation_level,
               o.escalated_at] for o in manager.open.values()]
    windows = [dataclasses.asdict(w) for w in manager.windows]
    recent = [[dataclasses.asdict(o.alert), o.occurrences, o.last_seen, o.escalation_level, o.escalated_at]
              for o, _ in manager.recent.values()]  # each alert carries its cleared_at
    # Conditions a maintenance window suppressed and that were still active at their last observation, to be raised
    # at its end (`AlertManager.held`); their evidence moves with every sample (left out with ``seen=False``).
    held = [[key, kw if seen else {k: kw[k] for k in ("asset", "tag", "kind", "severity")}, since]
            for key, (kw, since) in manager.held.items()]
    return msgpack.packb([alerts, windows, recent, held], use_bin_type=True, datetime=True,
                         default=_msgpack_default)


def write(path: Path, packed: bytes) -> None:
    """`content` with the time it was saved, atomically (a crash leaves the old file or the new one); called in a
    worker thread."""
    write_atomic(path, msgpack.packb({"format": FORMAT, "saved": time.time(), "content": packed}, use_bin_type=True))


def read(path: Path, max_age: timedelta | None = MAX_AGE) -> tuple[list, list[Window], list] | None:
    """The saved (open alerts as `AlertManager.load` takes them, windows, recently cleared alerts as
    `AlertManager.load_recent` takes them); None when there is no usable file
    (missing, unreadable, another format, older than ``max_age``)."""
    try:
        state = msgpack.unpackb(path.read_bytes(), raw=False)
        if state.get("format") != FORMAT or (max_age is not None
                                             and time.time() - state["saved"] > max_age.total_seconds()):
            return None
        saved = msgpack.unpackb(state["content"], raw=False, timestamp=3)
        saved_alerts, saved_windows, saved_recent = (*saved, [])[:3]  # older files: no recent
        alerts = [(Alert(**a), n, seen, level, at) for a, n, seen, level, at in saved_alerts]
        windows = [Window(**w) for w in saved_windows]
        recent = [(Alert(**a), n, seen, level, at) for a, n, seen, level, at in saved_recent]
    except (OSError, ValueError, TypeError, KeyError, msgpack.UnpackException):
        return None
    return alerts, windows, recent


def held(path: Path) -> dict[str, tuple[dict, object]]:
    """The conditions a maintenance window held when the file was saved (`AlertManager.held`: key -> (observation,
    active since)), for a restart inside the window: a tag reported by exception sends nothing new after the restart,
    and its condition, still active, was forgotten and never raised at the window's end. Empty when there is no
    usable file (or one older than `MAX_AGE`, or written before held conditions were kept)."""
    try:
        state = msgpack.unpackb(path.read_bytes(), raw=False)
        if state.get("format") != FORMAT or time.time() - state["saved"] > MAX_AGE.total_seconds():
            return {}
        saved = msgpack.unpackb(state["content"], raw=False, timestamp=3)
        return {str(key): (dict(kw), since) for key, kw, since in (saved[3] if len(saved) > 3 else [])}
    except (OSError, ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException):
        return {}


def last_known(path: Path) -> dict[str, tuple]:
    """The open alerts as this gateway last knew them (and so as it last notified them: it notifies each change it
    makes and each one of the console it sees), by id, however old the file: what the receivers heard last.
    Each as `AlertManager.load` takes it: (alert, occurrences, last_seen, escalation_level, escalated_at)."""
    got = read(path, max_age=None)
    return {row[0].id: row for row in got[0]} if got else {}


def restore(manager: AlertManager, path: Path) -> tuple[int, int] | None:
    """Load the saved open alerts, windows and recently cleared alerts into ``manager``; (alerts, windows), or None
    when there is no usable file (missing, unreadable, another format, older than `MAX_AGE`)."""
    got = read(path)
    if got is None:
        return None
    alerts, windows, recent = got
    manager.load(alerts)
    manager.windows = windows
    manager.load_recent(recent)
    manager.load_held(held(path))
    return len(alerts), len(windows)
