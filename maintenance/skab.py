"""SKAB (Skoltech Anomaly Benchmark) files and the benchmark's outlier-detection metrics.

A file is ``;``-separated: ``datetime``, eight sensor columns, then ``anomaly`` and ``changepoint``
(absent in the anomaly-free file). The benchmark's protocol: in every file the first 400 rows are
training data (normal operation), the rest is test; outlier detection is scored point-wise, pooled
over the test rows of all files: F1, FAR = FP/(FP+TN)·100, MAR = FN/(FN+TP)·100.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRAIN_ROWS = 400
SIGNALS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
           "Voltage", "Volume Flow RateRMS")


@dataclass(slots=True)
class SkabFile:
    name: str
    columns: list[str]
    x: np.ndarray  # (rows, signals) float
    anomaly: np.ndarray | None  # (rows,) int 0/1, None in the anomaly-free file
    changepoint: np.ndarray | None
    time: np.ndarray  # datetime64[s]


def load(path: str | Path) -> SkabFile:
    """One SKAB csv file."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        header = fh.readline().strip().split(";")
        rows = [line.rstrip("\n").split(";") for line in fh if line.strip()]
    if not header or header[0] != "datetime":
        raise ValueError(f"{path}: not a SKAB file (first column {header[:1]!r}, expected 'datetime')")
    cols = [c for c in header[1:] if c not in ("anomaly", "changepoint")]
    idx = {c: i for i, c in enumerate(header)}

    def label(name: str) -> np.ndarray | None:
        return np.array([int(float(r[idx[name]])) for r in rows], dtype=np.int8) if name in idx else None

    try:  # a cell that is no number, a short row: the file named (the bare numpy/float message named none)
        data = np.array([[float(r[idx[c]]) for c in cols] for r in rows], dtype=float)
        time = np.array([r[0].replace(" ", "T") for r in rows], dtype="datetime64[s]")
        anomaly, changepoint = label("anomaly"), label("changepoint")
    except ValueError as exc:
        raise ValueError(f"{path}: not a SKAB file of numbers ({exc})") from None
    except IndexError:
        short = next(i for i, r in enumerate(rows, start=2) if len(r) < len(header))
        raise ValueError(f"{path}, line {short}: fewer fields than the header's {len(header)}") from None
    return SkabFile(path.stem if path.parent.name in ("", ".") else f"{path.parent.name}/{path.stem}", cols,
                    data, anomaly, changepoint, time)


@dataclass(slots=True)
class Scores:
    f1: float
    far: float  # % of normal test rows flagged
    mar: float  # % of anomalous test rows missed
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    tn: int

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


def score(truth: np.ndarray, pred: np.ndarray) -> Scores:
    """Point-wise binary scores as SKAB defines them (pool the test rows of all files before calling)."""
    truth = np.asarray(truth).astype(bool)
    pred = np.asarray(pred).astype(bool)
    tp = int(np.sum(truth & pred))
    fp = int(np.sum(~truth & pred))
    fn = int(np.sum(truth & ~pred))
    tn = int(np.sum(~truth & ~pred))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    far = 100.0 * fp / (fp + tn) if fp + tn else 0.0
    mar = 100.0 * fn / (fn + tp) if fn + tp else 0.0
    return Scores(f1, far, mar, precision, recall, tp, fp, fn, tn)
