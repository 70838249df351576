"""Mass emissions: kg/h and tonnes per period, and CO2 from fuel data (DESIGN.md §8).

Measured pollutants: the rate is the concentration at dry standard conditions *without* the O2
correction times the dry standard flue-gas flow (`emissions.normalise`), averaged per period over the
operating primary values that have both (a missing or too high O2 reading invalidates the corrected
concentration, not the mass); the period's mass is that mean rate over its operating time, so gaps
inside an hour are filled with the hour's own mean while hours without a rate contribute nothing
(their operating time is reported as the gap). CO2 can also come from measured CO2 (a pollutant in
vol % with the flow) or from fuel data: tonnes = activity × NCV / 1000 × EF × OF
(activity in fuel units, NCV in GJ per unit, EF in t CO2 / TJ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emissions import periods
from emissions.averages import Averages, StackResult
from emissions.config import Fuel, StackConfig
from emissions.normalise import Primary


def fuel_co2_t(activity: float | np.ndarray, ncv_gj_per_unit: float, ef_t_co2_per_tj: float,
               oxidation_factor: float = 1.0) -> float | np.ndarray:
    """Tonnes of CO2 from a fuel quantity: activity × NCV [GJ/unit] / 1000 × EF [t/TJ] × OF."""
    return activity * ncv_gj_per_unit / 1000.0 * ef_t_co2_per_tj * oxidation_factor


@dataclass
class FuelTotals:
    fuel: str
    unit: str
    start: np.ndarray
    end: np.ndarray
    activity: np.ndarray  # fuel units consumed in the period (measured intervals only)
    co2_t: np.ndarray
    availability: np.ndarray  # share of intervals with a valid fuel-rate reading


def fuel_co2_by_period(cfg: StackConfig, fuel: Fuel, primary: Primary, period: str) -> FuelTotals:
    """Fuel consumption and calculated CO2 per ``period`` from the fuel-rate primary values."""
    end_s = primary.t0 + primary.n * primary.step_s
    bounds = periods.boundaries(period, primary.t0, end_s, cfg.timezone)
    nb = len(bounds) - 1
    idx = periods.locate(bounds, primary.times())
    rate = primary.values.get(f"fuel:{fuel.name}", np.full(primary.n, np.nan))
    ok = np.isfinite(rate)
    activity = np.bincount(idx[ok], weights=rate[ok] * primary.step_s / 3600.0, minlength=nb)[:nb]
    have = np.bincount(idx[ok], minlength=nb)[:nb]
    total = np.bincount(idx, minlength=nb)[:nb]
    return FuelTotals(fuel.name, fuel.unit, bounds[:-1], bounds[1:], activity,
                      fuel_co2_t(activity, fuel.ncv_gj_per_unit, fuel.ef_t_co2_per_tj, fuel.oxidation_factor),
                      np.where(total > 0, have / np.maximum(total, 1), np.nan))


@dataclass(frozen=True)
class MassTotal:
    pollutant: str
    start: int
    end: int
    tonnes: float
    mean_kg_h: float
    operating_h: float
    gap_h: float  # operating time in sub-periods without any valid rate


def totals(result: StackResult, start: int, end: int, sub_period: str = "hour") -> list[MassTotal]:
    """Mass emitted per pollutant in [start, end) from the ``sub_period`` averages."""
    out = []
    for pol, levels in result.averages.items():
        av: Averages = levels[sub_period]
        m = (av.start >= start) & (av.end <= end)
        op_h = av.n_operating[m] * result.step_s / 3600.0
        has = np.isfinite(av.mass_kg_h[m])
        # Operating time without any rate (no flow configured, or no flow reading): the mass is unknown (NaN), not 0 t.
        known = bool(op_h[has].sum()) or not op_h.sum()
        kg = float(np.nansum(av.mass_kg[m])) if known else float("nan")
        rate = float(np.nansum(av.mass_kg_h[m] * op_h) / op_h[has].sum()) if op_h[has].sum() else float("nan")
        out.append(MassTotal(pol, start, end, kg / 1000.0, rate, float(op_h.sum()), float(op_h[~has].sum())))
    return out
