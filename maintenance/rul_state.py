"""The RUL assets' kept cycles on disk: a snapshot file and an append-only journal of closed cycles.

``rul_state.npz`` (`edge.files.pack_state`) holds every asset's kept history, current cycle and age; it is
rewritten whole (atomically) only at shutdown and when the journal has grown as large as it (at a periodic save).
``rul_state.journal`` gets one line per group of readings that closed cycles: for each asset that closed one, the
rows closed since the previous line and the asset's scalars and current-cycle sums after them. A line is written
with one ``write`` and fsync'd before the group's predictions are handed on (`maintenance.live`), so a SIGKILL
after a close loses nothing. Each line has a sequence number and a CRC32: at a start, the snapshot is read, then
the journal's lines after the snapshot's ``journal_seq`` are applied in order (a line the snapshot already holds,
left by a crash between the snapshot's rename and the journal's truncation, is skipped: nothing twice); a torn
last line (a crash or power cut inside the append) fails its CRC, is left out and cut off the file before the
next append.

Why: rewriting the snapshot at every close wrote every RUL asset's whole history (2,000 cycles of 24 tags,
~400 KB an asset) per cycle; at cycles of seconds that is gigabytes a day of flash per asset.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.files import fsync_path

if TYPE_CHECKING:
    from maintenance.config import RulAssetConfig
    from maintenance.rul_live import _Asset

JOURNAL_FILE = "rul_state.journal"
ARRAYS = ("ages", "rows", "sums", "counts", "last")
COMPACT_MIN_BYTES = 64 * 1024  # a journal smaller than this is never folded into the snapshot before shutdown


def key(cfg: RulAssetConfig) -> dict:
    """What a saved history must match to be restored: the tags (their order is the raw columns') and cycles."""
    return {"settings": list(cfg.settings), "sensors": list(cfg.sensors), "cycle_s": cfg.cycle_s,
            "cycle_tag": cfg.cycle_tag, "start_cycle": cfg.start_cycle}


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def scalars(a: _Asset) -> dict:
    """The asset's position in its life: current cycle, counts, times (JSON)."""
    return {"key": key(a.cfg), "slot": a.slot, "first_slot": a.first_slot, "closed": a.closed, "cycles": a.cycles,
            "last_pred": a.last_pred, "first_time": _iso(a.first_time), "end_time": _iso(a.end_time)}


def asset_state(a: _Asset) -> tuple[dict, dict[str, np.ndarray]]:
    """What `restore` needs: scalars, and copies of the arrays (cheap on the event loop; written later)."""
    n = len(a.sums)
    arrays = {"ages": np.fromiter((age for age, _ in a.history), np.int64, len(a.history)),
              "rows": np.array([raw for _, raw in a.history]) if a.history else np.zeros((0, n)),
              "sums": a.sums.copy(), "counts": a.counts.copy(), "last": a.last.copy()}
    return scalars(a), arrays


def _set_scalars(a: _Asset, s: dict) -> None:
    a.slot, a.closed = int(s["slot"]), bool(s["closed"])
    a.first_slot = int(s["first_slot"]) if s["first_slot"] is not None else None  # counter mode: unused
    a.cycles, a.last_pred = int(s["cycles"]), int(s["last_pred"])
    a.first_time = datetime.fromisoformat(s["first_time"]) if s["first_time"] else None
    a.end_time = datetime.fromisoformat(s["end_time"]) if s["end_time"] else None


def _vector(a: _Asset, name: str, values) -> np.ndarray:
    v = np.asarray(values, float)
    if v.shape != (len(a.sums),):
        raise ValueError(f"{name}: {v.shape} values, expected {len(a.sums)}")
    return v


def restore(a: _Asset, s: dict, arrays: dict[str, np.ndarray]) -> None:
    """Set the asset from a snapshot entry; ValueError (the asset unchanged) when its arrays do not fit."""
    n = len(a.sums)
    ages, rows = arrays["ages"], arrays["rows"]
    if rows.shape != (len(ages), n):
        raise ValueError(f"{rows.shape} history rows for {len(ages)} cycles of {n} tags")
    sums, counts, last = (_vector(a, k, arrays[k]) for k in ("sums", "counts", "last"))
    a.history = deque(((int(age), row.astype(float)) for age, row in zip(ages, rows, strict=True)),
                      maxlen=a.cfg.history_cycles)
    a.sums, a.counts, a.last = sums, counts, last
    _set_scalars(a, s)


# -- the journal ----------------------------------------------------------------------------------------------
def entry(a: _Asset) -> dict:
    """The asset's journal record: the rows closed since its previous record (after a new life: ``reset``, the
    history emptied first), its scalars and its current cycle's sums. Clears what it took."""
    new = [a.history[-k] for k in range(min(a.appended, len(a.history)), 0, -1)]  # from the end: O(new rows)
    rec = {**scalars(a), "reset": a.reset, "ages": [int(age) for age, _ in new],
           "rows": [row.tolist() for _, row in new], "sums": a.sums.tolist(), "counts": a.counts.tolist()}
    a.appended, a.reset = 0, False
    return rec


def apply(a: _Asset, rec: dict) -> None:
    """Bring the asset from the state before a journal record to the state after it (checked before any change)."""
    n = len(a.sums)
    rows = np.asarray(rec["rows"], float).reshape(-1, n) if rec["rows"] else np.zeros((0, n))
    if len(rows) != len(rec["ages"]):
        raise ValueError(f"{len(rows)} rows for {len(rec['ages'])} cycles")
    sums, counts = _vector(a, "sums", rec["sums"]), _vector(a, "counts", rec["counts"])
    if rec["reset"]:
        a.history.clear()
    a.history.extend((int(age), row) for age, row in zip(rec["ages"], rows, strict=True))
    a.sums, a.counts = sums, counts
    # The previous cycle's means: the last kept row (a new life empties both).
    a.last = a.history[-1][1].copy() if a.history else np.full(n, np.nan)
    _set_scalars(a, rec)


def encode(seq: int, records: dict[str, dict]) -> bytes:
    """One journal line: ``<crc32 hex> <json>\\n`` (NaN as JSON's NaN: Python reads it back)."""
    body = json.dumps({"seq": seq, "assets": records}, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def read(path: Path) -> tuple[list[dict], int, bool]:
    """The journal's intact lines in order, the byte length they fill, and whether anything followed them (a torn
    last line, or damage: nothing after it is trusted, since its records build on the one lost)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0, False
    out, good = [], 0
    while good < len(data):
        end = data.find(b"\n", good)
        if end < 0:
            break
        line = data[good:end]
        try:
            crc, body = line.split(b" ", 1)
            if int(crc, 16) != zlib.crc32(body):
                break
            out.append(json.loads(body))
        except ValueError:
            break
        good = end + 1
    return out, good, good < len(data)


def append(path: Path, line: bytes) -> None:
    """Append one line with one write and fsync it (and the folder when the file is new)."""
    new = not path.exists()
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        fsync_path(path.parent)


def keep_after(path: Path, seq: int) -> int:
    """After a snapshot holding every record up to ``seq`` was written: drop those lines (normally all of them);
    returns the journal's size in bytes after."""
    lines, _, _ = read(path)
    later = [encode(r["seq"], r["assets"]) for r in lines if r["seq"] > seq]
    if not later:
        if path.exists():
            os.truncate(path, 0)
            fsync_path(path)
        return 0
    from edge.files import write_atomic

    data = b"".join(later)
    write_atomic(path, data)
    return len(data)


def cut(path: Path, length: int) -> None:
    """Cut a torn or damaged tail off the journal, so the next append starts on a line of its own."""
    os.truncate(path, length)
    fsync_path(path)
