"""NASA C-MAPSS turbofan files: loading, run-to-failure targets, the PHM08 score.

Files are space-separated without a header: unit, cycle, three operational settings, 21 sensors.
``RUL_FD00x.txt`` holds the true remaining life after each test engine's last cycle, in unit order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SETTINGS = ("setting1", "setting2", "setting3")
SENSORS = tuple(f"s{i}" for i in range(1, 22))
COLUMNS = ("unit", "cycle", *SETTINGS, *SENSORS)
RUL_CAP = 125


@dataclass(slots=True)
class Fleet:
    """Rows of one file, sorted by (unit, cycle)."""

    unit: np.ndarray  # (rows,) int
    cycle: np.ndarray  # (rows,) int
    settings: np.ndarray  # (rows, 3)
    sensors: np.ndarray  # (rows, 21)

    def units(self) -> np.ndarray:
        return np.unique(self.unit)

    def select(self, mask: np.ndarray) -> Fleet:
        return Fleet(self.unit[mask], self.cycle[mask], self.settings[mask], self.sensors[mask])

    def rul(self, cap: float | None = RUL_CAP) -> np.ndarray:
        """Run-to-failure target: last cycle of the unit minus the cycle, capped (piecewise linear)."""
        last = np.zeros(int(self.unit.max()) + 1)
        np.maximum.at(last, self.unit, self.cycle)
        r = last[self.unit] - self.cycle
        return np.minimum(r, cap) if cap is not None else r


def load(path: str | Path) -> Fleet:
    """One ``train_FD00x`` / ``test_FD00x`` file."""
    try:
        data = np.loadtxt(path, dtype=float, ndmin=2)
    except ValueError as exc:  # numpy's message names a row and column, not the file
        raise ValueError(f"{path}: {exc}") from None
    if data.ndim != 2 or data.shape[1] != len(COLUMNS):
        raise ValueError(f"{path}: expected {len(COLUMNS)} columns (unit, cycle, 3 settings, 21 sensors), "
                         f"found {data.shape[-1] if data.ndim == 2 else 'none'}")
    order = np.lexsort((data[:, 1], data[:, 0]))
    data = data[order]
    return Fleet(data[:, 0].astype(int), data[:, 1].astype(int), data[:, 2:5], data[:, 5:])


def load_rul(path: str | Path) -> np.ndarray:
    """True RUL per test engine, in unit order."""
    try:
        return np.loadtxt(path, dtype=float).reshape(-1)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def phm08_score(pred: np.ndarray, true: np.ndarray) -> float:
    """PHM08 asymmetric score: sum of exp(-d/13)-1 for early (d<0) and exp(d/10)-1 for late predictions."""
    d = np.asarray(pred, float) - np.asarray(true, float)
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)))


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    d = np.asarray(pred, float) - np.asarray(true, float)
    return float(np.sqrt(np.mean(d * d)))
