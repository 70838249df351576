"""Averages with data availability, validity and validated values (IED Annex V Part 3, Annex VI Part 8 1.2).

Levels:
- **10-minute, half-hour, hour** averages come from the normalised primary values. Only operating
  time counts (excluded states such as start-up are neither valid nor invalid); an average is valid
  when at least ``min_valid_share`` of its operating primary values are valid.
- **day** averages are the mean of the valid hour (LCP) or half-hour (waste) averages of the day; a day
  with more than ``day_max_invalid`` invalid sub-averages is invalid (Annex V: 3 hours; Annex VI: 5
  half-hours).
- **month** and **year** averages are the mean of the valid sub-averages inside valid days; valid when
  at least one day is valid and the share of valid operating days reaches the configured minimum.

Validated values: a valid average minus the 95 % confidence interval (a percentage of the ELV), and a
day, month or year's validated value is the mean of its sub-averages' validated values before any is
clamped at zero (IED Annex V Part 3 point 10: determined from the valid hourly averages after subtracting the
CI), i.e. its measured average minus the CI, clamped itself where configured. Availability is
always valid primary values / operating primary values over the whole period, so it is comparable
across levels; the substituted share is substituted / valid primary values, carried up from the
shortest level (a substituted minute shows in its hour, day, month and year).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from emissions import periods
from emissions.config import StackConfig
from emissions.normalise import Normalised, Primary, normalise_stack


class Status(enum.IntEnum):
    VALID = 0
    INVALID = 1  # operating, but not enough valid data (or too many invalid sub-averages)
    NOT_OPERATING = 2  # no operating time in the period: neither valid nor invalid


@dataclass
class Averages:
    """One pollutant's averages of one period kind; arrays indexed by period."""

    period: str
    start: np.ndarray  # int64 Unix seconds
    end: np.ndarray
    value: np.ndarray  # mg/Nm³ dry, standard, reference O2; NaN when there is no valid data
    validated: np.ndarray  # value − CI (clamped at 0 if configured); NaN unless valid
    raw: np.ndarray  # mean analyser value in its own unit
    status: np.ndarray  # int8 `Status`
    n_expected: np.ndarray  # primary values the period would hold
    n_operating: np.ndarray
    n_valid: np.ndarray
    n_substituted: np.ndarray
    mass_kg_h: np.ndarray  # mean mass rate over operating primary values with a concentration and a flow (longer
    # periods: their sub-averages' rates weighted by operating time)
    mass_kg: np.ndarray  # mass emitted in the operating time (mean rate × operating hours)
    sub_valid: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # valid sub-averages (days…)
    sub_invalid: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def valid(self) -> np.ndarray:
        return self.status == Status.VALID

    @property
    def availability(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_operating > 0, self.n_valid / np.maximum(self.n_operating, 1), np.nan)

    @property
    def substituted_share(self) -> np.ndarray:
        return np.where(self.n_valid > 0, self.n_substituted / np.maximum(self.n_valid, 1), 0.0)

    def __len__(self) -> int:
        return len(self.start)

    def subset(self, mask: np.ndarray) -> Averages:
        """The averages where ``mask`` is True (e.g. those inside a report's period)."""
        has_sub = len(self.sub_valid) == len(self)
        return Averages(self.period, self.start[mask], self.end[mask], self.value[mask], self.validated[mask],
                        self.raw[mask], self.status[mask], self.n_expected[mask], self.n_operating[mask],
                        self.n_valid[mask], self.n_substituted[mask], self.mass_kg_h[mask], self.mass_kg[mask],
                        self.sub_valid[mask] if has_sub else self.sub_valid,
                        self.sub_invalid[mask] if has_sub else self.sub_invalid)


def _sum(idx: np.ndarray, nb: int, w: np.ndarray) -> np.ndarray:
    return np.bincount(idx, weights=w, minlength=nb)[:nb]


def _count(idx: np.ndarray, nb: int, mask: np.ndarray) -> np.ndarray:
    return np.bincount(idx[mask], minlength=nb)[:nb].astype(np.int64)


def _mean(idx: np.ndarray, nb: int, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    s = _sum(idx[mask], nb, x[mask])
    c = _count(idx, nb, mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def _validate(value: np.ndarray, valid: np.ndarray, ci: float, clamp: bool) -> np.ndarray:
    v = value - ci
    if clamp:
        v = np.maximum(v, 0.0)
    return np.where(valid, v, np.nan)


def primary_averages(period: str, bounds: np.ndarray, times: np.ndarray, step_s: int, norm: Normalised,
                     operating: np.ndarray, *, min_share: float, ci: float, clamp: bool) -> Averages:
    """10-minute, half-hour or hour averages from normalised primary values."""
    nb = len(bounds) - 1
    idx = periods.locate(bounds, times)
    inside = (idx >= 0) & (idx < nb)
    if not inside.all():
        idx, times = idx[inside], times[inside]
        operating = operating[inside]
        norm = _slice(norm, inside)
    valid = norm.valid
    n_op = _count(idx, nb, operating)
    n_valid = _count(idx, nb, valid)
    value = _mean(idx, nb, norm.ref, valid)
    # The mass rate needs the dry standard concentration and the flow, not the O2 correction (finite only while
    # operating): a minute whose O2 is missing is not a valid concentration but still gives its mass.
    mass_rate = _mean(idx, nb, norm.mass_kg_h, np.isfinite(norm.mass_kg_h))
    status = np.where(n_op == 0, Status.NOT_OPERATING,
                      np.where(n_valid >= min_share * n_op - 1e-9, Status.VALID, Status.INVALID)).astype(np.int8)
    ok = status == Status.VALID
    return Averages(
        period=period, start=bounds[:-1], end=bounds[1:], value=value,
        validated=_validate(value, ok, ci, clamp), raw=_mean(idx, nb, norm.raw, valid), status=status,
        n_expected=(bounds[1:] - bounds[:-1]) // step_s, n_operating=n_op, n_valid=n_valid,
        n_substituted=_count(idx, nb, norm.substituted & valid), mass_kg_h=mass_rate,
        mass_kg=np.nan_to_num(mass_rate) * n_op * step_s / 3600.0)


def _slice(norm: Normalised, m: np.ndarray) -> Normalised:
    return Normalised(norm.name, norm.raw[m], norm.dry_std[m], norm.ref[m], norm.valid[m], norm.substituted[m],
                      norm.why[m], norm.mass_kg_h[m])


def combine(period: str, bounds: np.ndarray, sub: Averages, *, ci: float, clamp: bool, clamp_first: bool = False,
            include: np.ndarray | None = None, max_invalid: int | None = None, days: Averages | None = None,
            min_valid_days_share: float = 0.0) -> Averages:
    """Averages of a longer period from the valid averages of a shorter one.

    Days: ``max_invalid`` invalid sub-averages at most. Months and years: ``include`` restricts the
    sub-averages to those in valid days, and ``days`` gives the day counts for validity. The validated value is
    the mean minus ``ci`` (clamped at 0 if ``clamp``); ``clamp_first``: the mean of the sub-averages' validated
    values as they are reported, each already clamped.
    """
    nb = len(bounds) - 1
    idx = periods.locate(bounds, sub.start)
    use = sub.valid if include is None else (sub.valid & include)
    n_op = _sum(idx, nb, sub.n_operating).astype(np.int64)
    n_valid = _sum(idx, nb, sub.n_valid).astype(np.int64)
    value = _mean(idx, nb, sub.value, use)
    # The mean of the sub-averages' unclamped validated values (value - ci each) is the mean minus ci. Averaging
    # the clamped ones raised a day of 12 hours at 0 and 12 at 250 mg/Nm³ (CI 20) from 105 to 115 mg/Nm³.
    if clamp_first:
        validated_mean = _mean(idx, nb, sub.validated, use)
    else:
        validated_mean = _validate(value, np.isfinite(value), ci, clamp)
    if days is None:
        sub_valid = _count(idx, nb, sub.status == Status.VALID)
        sub_invalid = _count(idx, nb, sub.status == Status.INVALID)
        ok = (sub_valid > 0) & (sub_invalid <= (max_invalid if max_invalid is not None else np.iinfo(np.int64).max))
    else:
        didx = periods.locate(bounds, days.start)
        sub_valid = _count(didx, nb, days.status == Status.VALID)
        sub_invalid = _count(didx, nb, days.status == Status.INVALID)
        op_days = sub_valid + sub_invalid
        ok = (sub_valid > 0) & (sub_valid >= min_valid_days_share * op_days - 1e-9)
    status = np.where(n_op == 0, Status.NOT_OPERATING, np.where(ok, Status.VALID, Status.INVALID)).astype(np.int8)
    valid = status == Status.VALID
    # The mean mass rate goes with ``mass_kg``, which every sub-average with a rate adds to (an invalid concentration
    # average too): their rates weighted by operating time, so mass_kg = mass_kg_h × those operating hours.
    has_rate = np.isfinite(sub.mass_kg_h)
    weight = np.where(has_rate, sub.n_operating, 0)
    op_with_rate = _sum(idx, nb, weight)
    rate_x_op = _sum(idx, nb, np.where(has_rate, sub.mass_kg_h, 0.0) * weight)
    mass_rate = np.where(op_with_rate > 0, rate_x_op / np.maximum(op_with_rate, 1), np.nan)
    return Averages(
        period=period, start=bounds[:-1], end=bounds[1:], value=value,
        validated=np.where(valid, validated_mean, np.nan), raw=_mean(idx, nb, sub.raw, use), status=status,
        n_expected=_sum(idx, nb, sub.n_expected).astype(np.int64), n_operating=n_op, n_valid=n_valid,
        n_substituted=_sum(idx, nb, sub.n_substituted).astype(np.int64), mass_kg_h=mass_rate,
        mass_kg=_sum(idx, nb, np.nan_to_num(sub.mass_kg)), sub_valid=sub_valid, sub_invalid=sub_invalid)


@dataclass
class StackResult:
    """Everything computed for one stack over one span: normalised primary values and all averages."""

    stack: str
    t0: int
    step_s: int
    normalised: dict[str, Normalised]
    averages: dict[str, dict[str, Averages]]  # pollutant -> period -> averages
    config_sha256: str


def compute(cfg: StackConfig, primary: Primary) -> StackResult:
    """Normalise a stack's primary values and compute every averaging level for every pollutant."""
    reg = cfg.regulatory
    norm = normalise_stack(cfg, primary)
    times = primary.times()
    start, end = int(primary.t0), int(primary.t0 + primary.n * primary.step_s)
    base = ["half_hour", "hour"] + (["ten_min"] if cfg.ten_min else [])
    bounds = {p: periods.boundaries(p, start, end, cfg.timezone) for p in [*base, "day", "month", "year"]}
    operating = primary.operating_mask()
    out: dict[str, dict[str, Averages]] = {}
    for pol in cfg.pollutants:
        n = norm[pol.name]
        ci = cfg.ci_value(pol)
        levels = {p: primary_averages(p, bounds[p], times, primary.step_s, n, operating,
                                      min_share=reg.min_valid_share[p], ci=ci, clamp=reg.clamp_validated_at_zero)
                  for p in base}
        sub = levels[reg.day_from]
        validation = {"ci": ci, "clamp": reg.clamp_validated_at_zero, "clamp_first": reg.clamp_before_averaging}
        day = combine("day", bounds["day"], sub, max_invalid=reg.day_max_invalid, **validation)
        in_valid_day = day.valid[periods.locate(bounds["day"], sub.start)]
        levels["day"] = day
        longer = ({"sub": day, "include": None} if reg.month_mean_of == "days"
                  else {"sub": sub, "include": in_valid_day})
        levels["month"] = combine("month", bounds["month"], **longer, days=day,
                                  min_valid_days_share=reg.month_min_valid_days_share, **validation)
        levels["year"] = combine("year", bounds["year"], **longer, days=day,
                                 min_valid_days_share=reg.year_min_valid_days_share, **validation)
        out[pol.name] = levels
    return StackResult(cfg.name, start, primary.step_s, norm, out, cfg.fingerprint())
