"""Feature tables: the training and evaluation data of a model, from CSV files or TimescaleDB.

A `FeatureTable` is named float columns in time order, with optional timestamps, the segments it was
concatenated from (e.g. one per year file) and a fingerprint: the sha256 of its column names and values,
which a model card records so the data behind a model can be identified later.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge.errors import ConfigError

GAS_TURBINE_INPUTS = ("AT", "AP", "AH", "AFDP", "GTEP", "TIT", "TAT", "TEY", "CDP")
GAS_TURBINE_TARGETS = ("CO", "NOX")
GAS_TURBINE_UNITS = {"AT": "°C", "AP": "mbar", "AH": "%", "AFDP": "mbar", "GTEP": "mbar", "TIT": "°C", "TAT": "°C",
                     "TEY": "MWh", "CDP": "mbar", "CO": "mg/m³", "NOX": "mg/m³"}


@dataclass
class FeatureTable:
    """Columns of equal length in time order. ``segments``: (label, first row, end row) of each source."""

    columns: dict[str, np.ndarray]
    times: np.ndarray | None = None  # datetime64[us] per row, or None when the source has no timestamps
    segments: list[tuple[str, int, int]] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.columns = {k: np.asarray(v, dtype=np.float64) for k, v in self.columns.items()}
        lengths = {v.size for v in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")
        if not self.segments:
            self.segments = [("all", 0, len(self))]

    def __len__(self) -> int:
        return next(iter(self.columns.values())).size if self.columns else 0

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def matrix(self, names: Sequence[str]) -> np.ndarray:
        """``(n, len(names))`` float64 matrix of those columns; a missing one is a `ConfigError` naming it."""
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise ConfigError(f"data has no column(s) {', '.join(missing)}; it has {', '.join(self.names)}")
        return np.column_stack([self.columns[n] for n in names]) if names else np.empty((len(self), 0))

    def column(self, name: str) -> np.ndarray:
        return self.matrix([name])[:, 0]

    def rows(self, start: int, stop: int | None = None) -> FeatureTable:
        """Rows ``start:stop`` (segments clipped, labels kept)."""
        n = len(self)
        stop = n if stop is None else min(stop, n)
        start = max(0, min(start, stop))
        segs = [(lab, max(a, start) - start, min(b, stop) - start) for lab, a, b in self.segments
                if min(b, stop) > max(a, start)]
        return FeatureTable({k: v[start:stop] for k, v in self.columns.items()},
                            None if self.times is None else self.times[start:stop], segs, self.sources)

    def fingerprint(self, names: Sequence[str] | None = None) -> str:
        """sha256 over the names and float64 values of ``names`` (default: all columns), in order."""
        h = hashlib.sha256()
        for n in names or self.names:
            h.update(n.encode() + b"\0")
            h.update(np.ascontiguousarray(self.columns[n], dtype="<f8").tobytes())
        if self.times is not None:
            h.update(self.times.astype("datetime64[us]").astype("<i8").tobytes())
        return h.hexdigest()

    def span(self) -> dict:
        """Where the rows come from: time range when timestamped, segment labels and row count always."""
        d: dict = {"rows": len(self), "segments": [{"label": s[0], "rows": s[2] - s[1]} for s in self.segments]}
        if self.times is not None and len(self):
            d["start"] = str(self.times.min())
            d["end"] = str(self.times.max())
        return d

    @staticmethod
    def concat(tables: Iterable[FeatureTable]) -> FeatureTable:
        tables = list(tables)
        if not tables:
            raise ValueError("nothing to concatenate")
        names = tables[0].names
        for t in tables[1:]:
            if t.names != names:
                raise ConfigError(f"tables have different columns: {names} vs {t.names}")
        segs, off = [], 0
        for t in tables:
            segs += [(lab, a + off, b + off) for lab, a, b in t.segments]
            off += len(t)
        times = None if any(t.times is None for t in tables) else np.concatenate([t.times for t in tables])
        return FeatureTable({n: np.concatenate([t.columns[n] for t in tables]) for n in names}, times, segs,
                            [s for t in tables for s in t.sources])


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _utc_naive(t: datetime) -> datetime:
    """numpy datetime64 has no zone: store UTC (naive input is taken as UTC already)."""
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _iso(path: Path, line: int, column: str, text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{path}: line {line}: time column {column!r}: {text[:40]!r} is not an ISO 8601 "
                          "time") from None


def read_csv(path: str | Path, *, time_column: str | None = None, label: str | None = None) -> FeatureTable:
    """A CSV file (``,`` or ``;``) with a header as a table. Header names are stripped of whitespace and a BOM.

    ``time_column`` (ISO 8601 text) becomes the table's times; every other column must be numeric.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: is a folder, not a data file" if path.is_dir() else f"{path}: no such data file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            delim = ";" if sample.count(";") > sample.count(",") else ","
            reader = csv.reader(fh, delimiter=delim)
            first = next(reader, None)
            if first is None:
                raise ConfigError(f"{path}: empty file (a CSV file with a header line is expected)")
            header = [h.strip() for h in first]
            # (line number, fields): a row with more or fewer fields than the header (a cut-off last line, a stray
            # delimiter) had its cells read into the wrong columns or as missing values, with no word of it.
            raw = [(reader.line_num, r) for r in reader if r]
    except UnicodeDecodeError as exc:  # said without the file: "'utf-8' codec can't decode byte 0xb0 ..."
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1].hex()} at offset "
                          f"{exc.start}): save it as UTF-8") from None
    if len(header) > 1 and not header[-1] and all(len(r) == len(header) and not r[-1].strip() for _, r in raw):
        # a delimiter at the end of every line (some exports write one): no column
        header, raw = header[:-1], [(line, r[:-1]) for line, r in raw]
    # A repeated name kept only its last column, an empty one became a feature called "": both silently.
    empty = [str(j + 1) for j, h in enumerate(header) if not h]
    if empty:
        raise ConfigError(f"{path}: header field(s) {', '.join(empty)} have no name")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise ConfigError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header")
    for line, r in raw:
        if len(r) != len(header):
            raise ConfigError(f"{path}: line {line} has {len(r)} field(s), the header {len(header)}: fix or drop it")
    times = None
    cols: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        values = [r[j].strip() for _, r in raw]
        if name == time_column:
            times = np.array([np.datetime64(_utc_naive(_iso(path, raw[i][0], name, v)), "us")
                              for i, v in enumerate(values)])
            continue
        try:
            cols[name] = np.array([float(v) if v else np.nan for v in values])
        except ValueError:
            bad = next(i for i, v in enumerate(values) if v and not _is_float(v))
            # A time column nobody named (`--time-column` left off) read as "not numeric" and nothing more.
            hint = f" (if it is the time column, name it: --time-column {name})" if _is_time(values[bad]) else ""
            raise ConfigError(f"{path}: line {raw[bad][0]}: column {name!r} is not numeric: "
                              f"{values[bad][:40]!r}{hint}") from None
    if time_column and times is None:
        raise ConfigError(f"{path}: no time column {time_column!r}; columns are {', '.join(header)}")
    return FeatureTable(cols, times, [(label or path.stem, 0, len(raw))],
                        [{"path": str(path), "sha256": _sha256_file(path), "rows": len(raw)}])


def read_csvs(files: Sequence[str | Path], *, time_column: str | None = None) -> FeatureTable:
    """`read_csv` of each file, concatenated in the order given. The same content twice (a file named twice, or a
    copy) is a `ConfigError`: its rows would count twice in a report or the gate, and be trained on and held out
    at once."""
    tables = [read_csv(f, time_column=time_column) for f in files]
    for f, t in zip(files[1:], tables[1:], strict=True):
        if t.names != tables[0].names:  # concat's message named no file
            raise ConfigError(f"{f}: columns {', '.join(t.names)} are not those of {files[0]}: "
                              f"{', '.join(tables[0].names)}")
    seen: dict[str, str] = {}
    for t in tables:
        for s in t.sources:
            if s["sha256"] in seen:
                raise ConfigError(f"{s['path']} is the same data as {seen[s['sha256']]} (same sha256): give each "
                                  "file once")
            seen[s["sha256"]] = s["path"]
    return FeatureTable.concat(tables)


def load_gas_turbine(folder: str | Path, years: Sequence[int | str]) -> FeatureTable:
    """The UCI gas-turbine CO/NOx files ``gt_<year>.csv`` of ``folder``, concatenated in the order given."""
    folder = Path(folder)
    tables = []
    for y in years:
        path = folder / f"gt_{y}.csv"
        if not path.is_file():
            have = sorted(p.name for p in folder.glob("gt_*.csv")) if folder.is_dir() else []
            raise ConfigError(f"{path}: no such file (have: {', '.join(have) or 'nothing'})")
        tables.append(read_csv(path, label=str(y)))
    return FeatureTable.concat(tables)


def from_database(dsn: str, tags: dict[str, str], start: datetime, end: datetime, *, bucket: str = "1 hour",
                  good_only: bool = True) -> FeatureTable:
    """Bucket means of stored readings, one column per feature, rows where every tag has a value.

    ``tags`` maps feature name -> tag name. Readings of bad quality are left out (``good_only`` also drops
    uncertain ones). Works on TimescaleDB and plain PostgreSQL (``Features.bucket``).
    """
    import psycopg

    from edge.db.features import detect

    with psycopg.connect(dsn) as conn:
        features = detect(conn)
        b = features.bucket(bucket, "r.time")
        q = (f"SELECT {b} AS t, tg.name, avg(r.value) FROM readings r JOIN tags tg ON tg.id = r.tag_id "
             "WHERE tg.name = ANY(%s) AND r.time >= %s AND r.time < %s AND r.value IS NOT NULL "
             "AND r.quality <= %s GROUP BY 1, 2 ORDER BY 1")
        rows = conn.execute(q, (list(tags.values()), start, end, 0 if good_only else 1)).fetchall()
    by_time: dict = {}
    for t, name, v in rows:
        by_time.setdefault(t, {})[name] = v
    full = [(t, vals) for t, vals in by_time.items() if len(vals) == len(tags)]
    cols = {feat: np.array([vals[tag] for _, vals in full], dtype=np.float64) for feat, tag in tags.items()}
    times = np.array([np.datetime64(t.astimezone(UTC).replace(tzinfo=None), "us") for t, _ in full],
                     dtype="datetime64[us]")
    return FeatureTable(cols, times, [(f"{start:%Y-%m-%d}..{end:%Y-%m-%d}", 0, len(full))],
                        [{"database": "readings", "bucket": bucket, "tags": dict(tags), "start": start.isoformat(),
                          "end": end.isoformat(), "rows": len(full)}])
