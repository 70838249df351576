"""Normalisation of primary values to mg/Nm³, dry gas, 273.15 K, 101.325 kPa and reference O2 (DESIGN.md §8).

Input is a `Primary`: one stack's primary values (means of the readings over ``primary_s``, normally
one minute) on a regular time grid, NaN where a tag had no valid reading. Everything is vectorised:
a year of minutes is one numpy expression per step. NaN propagates, so a missing peripheral value
(O2, H2O, T, p) makes the normalised value invalid; *why* it is invalid is kept as a bitmask for the
reports. Where the analyser is invalid and a PEMS prediction exists, the prediction (in the
analyser's own unit and basis) takes its place and the value is flagged substituted.

Formulas, in order (each only where the basis asks for it):
  ppm -> mg/Nm³:           c = ppm × M / 22.414
  actual -> standard:      c_std = c × (T / 273.15 K) × (101.325 kPa / p)
  wet -> dry:              c_dry = c_wet / (1 − H2O/100)
  reference O2:            E_ref = E × (21 − O2_ref) / (21 − O2_dry)
  dry standard flow:       Q = Q_act × (273.15 K / T) × (p / 101.325 kPa) × (1 − H2O/100)
  mass rate:               kg/h = c_dry_std [mg/Nm³] × Q [Nm³/h] × 1e−6   (without the O2 correction)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from emissions import units
from emissions.config import Pollutant, Signal, StackConfig


class Why(enum.IntFlag):
    """Why a primary value is not valid (or what was done to it)."""

    NONE = 0
    ANALYSER = 1 << 0  # no valid analyser reading in the interval
    O2_MISSING = 1 << 1
    O2_HIGH = 1 << 2  # O2 at or above the configured maximum: the correction would blow up
    H2O_MISSING = 1 << 3
    H2O_HIGH = 1 << 4
    T_P_MISSING = 1 << 5  # temperature or pressure missing, or implausible (emissions.units.PLAUSIBLE_K / _KPA)
    SUBSTITUTED = 1 << 6  # a PEMS value stands in for the analyser
    NOT_OPERATING = 1 << 7  # excluded operating state (start-up, shut-down): not invalid, not counted
    STATE_UNKNOWN = 1 << 8  # no operating-state reading yet: not counted as operating
    ANALYSER_STATUS = 1 << 9  # the analyser's status said calibration / maintenance / fault: its value left out


@dataclass
class Primary:
    """Primary values of one stack on a regular grid starting at ``t0`` (Unix seconds), ``step_s`` apart.

    ``values[role]`` holds the mean of the valid readings of that role's tag in each interval, NaN where
    there were none; roles are pollutant names, ``o2``, ``h2o``, ``temperature``, ``pressure``, ``flow``
    and ``pems:NAME``. ``substituted[role]`` marks intervals whose readings were already substituted
    upstream. ``operating`` is False in excluded operating states (None: always operating);
    ``state_unknown`` marks intervals before the first operating-state reading (not operating).
    ``excluded[pollutant]`` marks intervals in which the analyser's status tag said it was not measuring
    (`exclude` leaves the pollutant's value out there: missing data, as far as every average is concerned).
    """

    t0: int
    step_s: int
    n: int
    values: dict[str, np.ndarray]
    substituted: dict[str, np.ndarray] = field(default_factory=dict)
    operating: np.ndarray | None = None
    state_unknown: np.ndarray | None = None
    excluded: dict[str, np.ndarray] = field(default_factory=dict)

    def exclude(self, excluded: dict[str, np.ndarray]) -> Primary:
        """Leave each pollutant's values out where its analyser status said "not measuring" (``excluded``:
        pollutant -> bool per interval): they become missing (NaN, not substituted), recorded in ``excluded``."""
        for name, mask in excluded.items():
            if not mask.any():
                continue
            self.excluded[name] = mask
            if name in self.values:
                self.values[name] = np.where(mask, np.nan, self.values[name])
            if name in self.substituted:
                self.substituted[name] = self.substituted[name] & ~mask
        return self

    def times(self) -> np.ndarray:
        return self.t0 + self.step_s * np.arange(self.n, dtype=np.int64)

    def operating_mask(self) -> np.ndarray:
        return np.ones(self.n, dtype=bool) if self.operating is None else self.operating


@dataclass
class Normalised:
    """One pollutant's primary values after normalisation; NaN where not valid."""

    name: str
    raw: np.ndarray  # analyser value in its own unit (after substitution), for the record
    dry_std: np.ndarray  # mg/Nm³ dry at standard conditions, no O2 correction (for mass)
    ref: np.ndarray  # mg/Nm³ dry, standard conditions, reference O2: what limits apply to
    valid: np.ndarray  # bool: ref is usable and the plant was operating
    substituted: np.ndarray  # bool
    why: np.ndarray  # uint16 bitmask of `Why`
    mass_kg_h: np.ndarray  # NaN where the flow (or concentration) is not valid


def _signal(primary: Primary, role: str, sig: Signal) -> np.ndarray | None:
    if sig.tag is not None:
        v = primary.values.get(role)
        return v if v is not None else np.full(primary.n, np.nan)
    if sig.value is not None:
        return np.full(primary.n, float(sig.value))
    return None


def _h2o(cfg: StackConfig, primary: Primary, why: np.ndarray) -> np.ndarray | None:
    h2o = _signal(primary, "h2o", cfg.h2o)
    if h2o is None:
        return None
    bad = ~np.isfinite(h2o)
    high = ~bad & ((h2o >= cfg.h2o.max_percent) | (h2o < 0))
    why |= np.where(bad, Why.H2O_MISSING, 0).astype(np.uint16) | np.where(high, Why.H2O_HIGH, 0).astype(np.uint16)
    return np.where(high, np.nan, h2o)


def _std_factor(cfg: StackConfig, primary: Primary, why: np.ndarray) -> np.ndarray:
    t = _signal(primary, "temperature", cfg.temperature)
    p = _signal(primary, "pressure", cfg.pressure)
    t_k = units.kelvin(t, cfg.temperature.unit) if t is not None else np.full(primary.n, np.nan)
    p_kpa = units.kpa(p, cfg.pressure.unit) if p is not None else np.full(primary.n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = units.std_factor(t_k, p_kpa)
    plausible = units.plausible_k(t_k) & units.plausible_kpa(p_kpa)  # else missing, not converted
    f = np.where(plausible, f, np.nan)
    why |= np.where(np.isfinite(f), 0, Why.T_P_MISSING).astype(np.uint16)
    return f


def o2_dry(cfg: StackConfig, primary: Primary, h2o: np.ndarray | None) -> np.ndarray:
    o2 = _signal(primary, "o2", cfg.o2)
    if o2 is None:
        return np.full(primary.n, np.nan)
    if cfg.o2.basis == "wet":
        o2 = o2 * units.dry_factor(h2o) if h2o is not None else np.full(primary.n, np.nan)
    return o2


def dry_std_flow(cfg: StackConfig, primary: Primary) -> np.ndarray | None:
    """Flue-gas flow in Nm³/h, dry, standard conditions; None when the stack has no flow measurement."""
    q = _signal(primary, "flow", cfg.flow)
    if q is None:
        return None
    why = np.zeros(primary.n, dtype=np.uint16)
    if cfg.flow.unit == "m3/s":
        q = q * 3600.0
    if cfg.flow.conditions == "actual":
        q = q / _std_factor(cfg, primary, why)
    if cfg.flow.moisture == "wet":
        h2o = _h2o(cfg, primary, why)
        q = q * (1.0 - h2o / 100.0) if h2o is not None else np.full(primary.n, np.nan)
    return q


def normalise_pollutant(cfg: StackConfig, pol: Pollutant, primary: Primary,
                        flow_nm3_h: np.ndarray | None = None) -> Normalised:
    """Normalise one pollutant's primary values; ``flow_nm3_h`` from `dry_std_flow` (computed once per stack)."""
    n = primary.n
    why = np.zeros(n, dtype=np.uint16)
    raw = primary.values.get(pol.name, np.full(n, np.nan))
    subst = primary.substituted.get(pol.name, np.zeros(n, dtype=bool)).copy()
    missing = ~np.isfinite(raw)
    pems = primary.values.get(f"pems:{pol.name}")
    if pems is not None and cfg.regulatory.substitution_counts_as_valid:
        use = missing & np.isfinite(pems)
        raw = np.where(use, pems, raw)
        subst |= use
        missing &= ~use
    status = primary.excluded.get(pol.name)
    if status is not None:  # left out by the analyser's status: that reason, not "no reading"
        why |= np.where(status, Why.ANALYSER_STATUS, np.where(missing, Why.ANALYSER, 0)).astype(np.uint16)
    else:
        why |= np.where(missing, Why.ANALYSER, 0).astype(np.uint16)
    why |= np.where(subst, Why.SUBSTITUTED, 0).astype(np.uint16)

    conc, at_std = units.to_mg_m3(raw, pol.unit, pol.molar_mass())
    if not at_std and pol.conditions == "actual":
        conc = conc * _std_factor(cfg, primary, why)
    corrected = pol.o2_correction and cfg.reference_o2_percent is not None
    # The water content only where this pollutant uses it (its own dry basis, or the O2 it is corrected with): a
    # missing H2O is no reason for a value that never needed it.
    h2o = _h2o(cfg, primary, why) if (pol.moisture == "wet" or (corrected and cfg.o2.basis == "wet")) else None
    if pol.moisture == "wet":
        conc = conc * units.dry_factor(h2o)
    dry_std = conc

    ref = dry_std
    if corrected:
        o2 = o2_dry(cfg, primary, h2o)
        # The O2 reading's own absence: a wet O2 that cannot be dried for want of H2O carries the H2O reason only (it
        # was also counted "O2 missing", sending the operator to an O2 analyser that was measuring).
        measured = _signal(primary, "o2", cfg.o2)
        o2_missing = ~np.isfinite(measured) if measured is not None else np.ones(primary.n, dtype=bool)
        why |= np.where(o2_missing, Why.O2_MISSING, 0).astype(np.uint16)
        high = (o2 >= cfg.regulatory.o2_max_percent) | (o2 < 0)
        why |= np.where(high, Why.O2_HIGH, 0).astype(np.uint16)
        o2 = np.where(high, np.nan, o2)  # guard: near 21 % the factor tends to infinity
        factor = units.o2_factor(o2, cfg.reference_o2_percent)
        if cfg.regulatory.o2_correct_only_above_reference:
            factor = np.where(o2 > cfg.reference_o2_percent, factor, np.where(np.isfinite(o2), 1.0, np.nan))
        ref = dry_std * factor

    operating = primary.operating_mask()
    why |= np.where(operating, 0, Why.NOT_OPERATING).astype(np.uint16)
    if primary.state_unknown is not None:
        why |= np.where(primary.state_unknown, Why.STATE_UNKNOWN, 0).astype(np.uint16)
    valid = np.isfinite(ref) & operating
    mass = dry_std * flow_nm3_h * 1e-6 if flow_nm3_h is not None else np.full(n, np.nan)
    return Normalised(pol.name, raw, dry_std, np.where(valid, ref, np.nan), valid, subst & valid, why,
                      np.where(operating, mass, np.nan))


def normalise_stack(cfg: StackConfig, primary: Primary) -> dict[str, Normalised]:
    """Normalise every pollutant of a stack."""
    flow = dry_std_flow(cfg, primary)
    return {p.name: normalise_pollutant(cfg, p, primary, flow) for p in cfg.pollutants}
