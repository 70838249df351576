"""Replay of a CSV file as tags: one row per ``row_seconds`` of simulated time, in file order.

The delimiter (``,`` or ``;``) is taken from the header line. Numeric columns become tags:
``--replay-map COL=TAG`` names them (then only mapped columns are replayed), otherwise every
numeric column becomes ``<prefix>.<COL>``. Column names are stripped of whitespace and a UTF-8
byte-order mark (some public copies have ``AFDP `` with a trailing space). A cell that is not a
number is left out of its row. Rows are read lazily, so large files cost no memory.

    replay = CsvReplay(ReplaySpec(Path("gt_2011.csv"), mapping={"NOX": "K1.NOx", "CO": "K1.CO"}))
    for t_s, samples in replay.advance(3600.0):   # rows due in the next simulated hour
        ...
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from collectors.simulator.plant import Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    path: Path
    mapping: dict[str, str] = field(default_factory=dict)  # column -> tag; empty: every numeric column
    prefix: str = "replay"
    row_seconds: float = 3600.0  # simulated time between rows
    loop: bool = False  # start again at the first row after the last
    # A column of row times (ISO 8601; without an offset UTC): each row is due at its time after the first row's,
    # not at row_seconds steps (SKAB's "1 s" rows have 2 s and 76 s gaps); row_seconds then separates loops.
    time_column: str | None = None


def parse_mapping(items: list[str]) -> dict[str, str]:
    """``["CO=K1.CO", "NOX=K1.NOx,TAT=K1.T"]`` -> ``{"CO": "K1.CO", ...}``; ValueError names the bad item."""
    out: dict[str, str] = {}
    for item in items:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            col, sep, tag = pair.partition("=")
            if not sep or not col.strip() or not tag.strip():
                raise ValueError(f"replay mapping {pair!r}: expected COLUMN=TAG, e.g. NOX=K1.NOx")
            out[col.strip()] = tag.strip()
    return out


class CsvReplay:
    def __init__(self, spec: ReplaySpec) -> None:
        if spec.row_seconds <= 0:
            raise ValueError("row_seconds must be positive")
        self.spec = spec
        self._file: TextIO | None = None
        self._rows: Iterator[list[str]] | None = None
        self.header, self.delimiter = self._read_header()
        self.columns = self._columns()  # (index in row, tag)
        if not self.columns:
            # A file read wrongly (space-separated, no header) replayed nothing, and the simulator said nothing.
            raise ValueError(f"replay file {spec.path}: no column with a number in its first row (header: "
                             f"{', '.join(self.header)[:120]}); --replay reads ',' or ';' separated files with a "
                             "header line")
        self.tags = [tag for _, tag in self.columns]
        self.time_index = self._time_index()
        self.rows_done = 0
        self.rows_skipped = 0  # rows whose time cell is not a time (time_column only)
        self.finished = False
        self._t_s = 0.0
        self._next_row_s = 0.0  # the first row is due at once
        self._pending: list[str] | None = None  # the next row, read to learn its time (time_column)
        self._first_time: datetime | None = None
        self._cycle_s = 0.0  # simulated time at which the current loop through the file began
        self._last_row_s = 0.0

    def _read_header(self) -> tuple[list[str], str]:
        try:
            with open(self.spec.path, encoding="utf-8-sig", newline="") as f:
                first = f.readline()
        except OSError as exc:
            raise ValueError(f"replay file {self.spec.path}: {exc.strerror}") from exc
        if not first.strip():
            raise ValueError(f"replay file {self.spec.path}: empty (no header line)")
        delimiter = ";" if first.count(";") > first.count(",") else ","
        return [c.strip() for c in next(csv.reader([first], delimiter=delimiter))], delimiter

    def _columns(self) -> list[tuple[int, str]]:
        mapping = self.spec.mapping
        if mapping:
            missing = sorted(set(mapping) - set(self.header))
            if missing:
                raise ValueError(f"replay file {self.spec.path}: no column {', '.join(missing)}; "
                                 f"columns are {', '.join(self.header)}")
            return [(self.header.index(col), tag) for col, tag in mapping.items()]
        first = self._first_row()
        return [(i, f"{self.spec.prefix}.{name}") for i, name in enumerate(self.header)
                if i < len(first) and _number(first[i]) is not None]

    def _time_index(self) -> int | None:
        col = self.spec.time_column
        if col is None:
            return None
        if col not in self.header:
            raise ValueError(f"replay file {self.spec.path}: no time column {col}; "
                             f"columns are {', '.join(self.header)}")
        return self.header.index(col)

    @property
    def first_time(self) -> datetime | None:
        """The time of the file's first row (time_column only): what simulated time 0 stands for."""
        if self.time_index is None:
            return None
        if self._first_time is None:
            for row in self._data_rows():
                if (t := self._row_time(row)) is not None:
                    self._first_time = t
                    break
        return self._first_time

    def _data_rows(self) -> Iterator[list[str]]:
        with open(self.spec.path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=self.delimiter)
            next(reader, None)
            yield from (row for row in reader if row and any(cell.strip() for cell in row))

    def _row_time(self, row: list[str]) -> datetime | None:
        assert self.time_index is not None
        try:
            t = datetime.fromisoformat(row[self.time_index].strip())
        except (IndexError, ValueError):
            return None
        return t if t.tzinfo is not None else t.replace(tzinfo=UTC)

    def _first_row(self) -> list[str]:
        with open(self.spec.path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=self.delimiter)
            next(reader, None)
            return next(reader, [])

    def _open(self) -> None:
        self.close()
        self._file = open(self.spec.path, encoding="utf-8-sig", newline="")  # open while replaying
        self._rows = csv.reader(self._file, delimiter=self.delimiter)
        next(self._rows, None)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._rows = None

    def advance(self, dt_s: float) -> list[tuple[float, list[Sample]]]:
        """Move simulated time on by ``dt_s``; the rows now due, each with its simulated time."""
        self._t_s += dt_s
        out: list[tuple[float, list[Sample]]] = []
        while not self.finished:
            if self._pending is None:
                self._pending = self._next_timed_row()
                if self._pending is None:
                    self.finished = True
                    break
            if self._next_row_s > self._t_s + 1e-9:
                break
            row, self._pending = self._pending, None
            out.append((self._next_row_s, [Sample(tag, v) for (i, tag) in self.columns
                                           if i < len(row) and (v := _number(row[i])) is not None]))
            self.rows_done += 1
            self._last_row_s = self._next_row_s
            if self.time_index is None:
                self._next_row_s += self.spec.row_seconds
        return out

    def _next_timed_row(self) -> list[str] | None:
        """The next row, with ``_next_row_s`` set to when it is due (from its time cell with a time column)."""
        while (row := self._next_row()) is not None:
            if self.time_index is None:
                return row
            t = self._row_time(row)
            if t is None:
                self.rows_skipped += 1
                if self.rows_skipped == 1:
                    log.warning("replay file %s: a row whose %s is not a time (%r) is left out, and any more like it",
                                self.spec.path, self.spec.time_column, row[self.time_index:self.time_index + 1])
                continue
            first = self.first_time
            assert first is not None
            # Never back in time (a file out of order): such a row comes at once, after the one before it.
            self._next_row_s = max(self._cycle_s + (t - first).total_seconds(), self._last_row_s)
            return row
        return None

    def _next_row(self) -> list[str] | None:
        if self._rows is None:
            self._open()
        for _ in range(2):  # at most one wrap-around per call
            assert self._rows is not None
            for row in self._rows:
                if row and any(cell.strip() for cell in row):
                    return row
            if not self.spec.loop:
                self.close()
                return None
            self._open()
            self._cycle_s = self._last_row_s + self.spec.row_seconds  # the next loop, row_seconds after the last row
        return None


def _number(text: str) -> float | None:
    """The cell as a float (NaN and inf included: they are data too), None if it is not a number."""
    try:
        return float(text)
    except ValueError:
        return None
