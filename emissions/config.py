"""Stack configuration: what is measured where, on which basis, and the regulatory numbers (DESIGN.md §8).

One `StackConfig` per ``[[stacks]]`` entry of the site TOML (the site loader validates the section
with this model; see ``emissions/sample.toml``). Every regulatory number -- confidence intervals,
validity thresholds, compliance percentages -- lives here with the Industrial Emissions Directive
(2010/75/EU) value as its default, because permits differ. Defaults that depend on the regime
(large combustion plant, Annex V, or waste incineration, Annex VI) are filled in from
`emissions.regimes.REGIME_DEFAULTS` before validation, so they are written down exactly once.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.paths import ConfigPath
from edge.records import Flag, Quality
from emissions import units
from emissions.regimes import DEFAULT_MIN_VALID_SHARE, IED_CI_PERCENT, REGIME_DEFAULTS

# A reading UNCERTAIN for its age alone (STALE_TIME: older than validation.max_age_s when it came, a backfill;
# UNKNOWN_TAG lowers nothing) is a measurement as good as any: valid data also where the permit takes no UNCERTAIN
# readings (`Regulatory.accept_uncertain` false). Any other flag (the device's own doubt, out of range, frozen) keeps
# it out.
AGED_ONLY = int(Flag.STALE_TIME)
NOT_AGED_ONLY = sum(int(f) for f in Flag) & ~int(Flag.STALE_TIME | Flag.UNKNOWN_TAG)


def valid_quality(quality: int, flags: int, accept_uncertain: bool) -> bool:
    """Whether a reading of ``quality`` with ``flags`` counts as valid data (its value aside)."""
    if quality == Quality.GOOD or (quality == Quality.UNCERTAIN and accept_uncertain):
        return True
    return quality == Quality.UNCERTAIN and bool(flags & AGED_ONLY) and not flags & NOT_AGED_ONLY


Period = Literal["ten_min", "half_hour", "hour", "day", "month", "year"]
Window = Literal["each", "day", "month", "year"]
Regime = Literal["lcp", "waste_incineration"]

class Strict(BaseModel):
    """Configuration base: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Signal(Strict):
    """A peripheral measurement: a tag, or a constant where the stack has no analyser for it."""

    tag: str | None = None
    value: float | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Signal:
        if self.tag is not None and self.value is not None:
            raise ValueError("give either tag or value, not both")
        return self

    @property
    def configured(self) -> bool:
        return self.tag is not None or self.value is not None


class O2(Signal):
    basis: Literal["dry", "wet"] = "dry"  # zirconia probes in the duct measure wet, extractive analysers dry


class H2O(Signal):
    max_percent: float = Field(50.0, gt=0, lt=100)  # above this the dry conversion is not trusted


class _Condition(Signal):
    """Temperature or pressure for standard conditions: a configured constant must be a flue gas's (`units.PLAUSIBLE_K`,
    `PLAUSIBLE_KPA`); a gauge pressure configured as absolute made every concentration 338 times larger."""

    unit: str
    # Per kind: to the unit the plausible range is in, that unit, the range check, what the value must be.
    _to_si: ClassVar[Callable]
    _si: ClassVar[str]
    _plausible: ClassVar[Callable]
    _what: ClassVar[str]

    @model_validator(mode="after")
    def _refuse_implausible(self) -> _Condition:
        if self.value is not None:
            si = float(type(self)._to_si(np.float64(self.value), self.unit))
            if not type(self)._plausible(si):
                raise ValueError(f"value {self.value} {self.unit} ({si:g} {self._si}) is not {self._what}: is the "
                                 "unit right?")
        return self


class Temperature(_Condition):
    unit: Literal["degC", "K"] = "degC"
    _to_si, _si, _plausible, _what = units.kelvin, "K", units.plausible_k, "a flue-gas temperature (-50 to 1500 degC)"


class Pressure(_Condition):
    unit: Literal["kPa", "hPa", "mbar", "Pa", "bar"] = "kPa"
    _to_si, _si, _plausible = units.kpa, "kPa", units.plausible_kpa
    _what = "an absolute flue-gas pressure (50-150 kPa; a gauge pressure?)"


class Flow(Signal):
    unit: Literal["m3/h", "m3/s"] = "m3/h"
    moisture: Literal["wet", "dry"] = "wet"
    conditions: Literal["actual", "standard"] = "actual"


class PemsLink(Strict):
    """Where a pollutant's PEMS predictions are stored (as readings, in the analyser's unit and basis) and
    how the analyser is cross-checked against the prediction interval (emissions.pems)."""

    tag: str  # point prediction: substituted while the analyser is invalid (flagged substituted)
    lower_tag: str | None = None  # prediction interval, for the cross-check
    upper_tag: str | None = None
    # Live PEMS (emissions.pems_live): the champion of ``model_id`` in the models registry (models/, trained and
    # registered by `valvoja emissions pems train`), and which tag feeds each model input.
    model_id: str | None = Field(None, min_length=1)  # e.g. "pems-nox"
    registry: ConfigPath = "var/models"  # registry directory (model.onnx + card.json per version)
    registry_db: bool = False  # its index is the site database's model_registry table (else <registry>/index.json)
    inputs: dict[str, str] = {}  # model feature -> tag
    # How often the registry is asked for a new champion (hot swap); the gateway asks off the event loop.
    # 0: as often as it can, before every group of readings (a registry read per group, see the README).
    refresh_s: float = 30.0
    adaptive_window: int = Field(168, ge=10)  # adaptive conformal: recent errors kept (primary intervals)
    adaptive_gamma: float = Field(0.005, ge=0, lt=1)  # adaptive conformal: step of the level update
    window_s: int = Field(6 * 3600, gt=0)  # the analyser is flagged when, over this window, ...
    min_outside_share: float = Field(0.5, gt=0, le=1)  # ... at least this share of it lies outside the interval
    min_pairs_share: float = Field(0.5, gt=0, le=1)  # and at least this share of the window has both values

    @field_validator("refresh_s")
    @classmethod
    def _refresh_not_negative(cls, v: float) -> float:
        if not v >= 0:
            raise ValueError(f"pems.refresh_s must be >= 0 seconds, got {v}: the registry is asked for a new "
                             "champion every refresh_s (0: before every group of readings), off the gateway's "
                             "event loop")
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_model_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" in data:
            raise ValueError("pems.model (an ONNX file path) is no longer read: live PEMS serves the champion of "
                             "pems.model_id from the models registry (pems.registry); train and register with "
                             "`valvoja emissions pems train`")
        return data

    @model_validator(mode="after")
    def _both_bounds(self) -> PemsLink:
        if (self.lower_tag is None) != (self.upper_tag is None):
            raise ValueError("give both lower_tag and upper_tag, or neither")
        return self


class Pollutant(Strict):
    """One analyser channel and how its readings become mg/Nm³ dry at reference O2."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")  # e.g. NOx, SO2, CO, dust, TOC, HCl, CO2
    tag: str = Field(min_length=1)
    unit: Literal["mg/m3", "ug/m3", "g/m3", "ppm", "percent"] = "mg/m3"
    moisture: Literal["wet", "dry"] = "dry"
    # Only matters for mass concentrations: a volume fraction (ppm, %) is the same at any T and p.
    conditions: Literal["actual", "standard"] = "standard"
    # ppm -> mg/m³ needs the molar mass: NOx is expressed as NO2, TOC as C. Default from `units.MOLAR_MASS`.
    molar_mass_g_mol: float | None = Field(None, gt=0)
    elv: dict[str, float] = {}  # emission limit values in mg/Nm³ by key (a period name, or e.g. half_hour_97)
    ci_percent: float | None = Field(None, ge=0, le=100)  # default: regulatory.ci_percent[name]
    ci_elv: str | None = None  # which elv key the CI percentage applies to; default: regulatory.ci_elv
    o2_correction: bool = True  # False for e.g. CO2 or O2 itself
    pems: PemsLink | None = None  # predictive emission monitoring: cross-check and substitution
    # The analyser's status signal (calibration, maintenance, fault): a step signal, each reading holding until
    # the next. Where its value is not one of ``status_ok`` the analyser's readings are left out of every average,
    # as missing data (that time counts against availability). Several pollutants of one analyser name one tag.
    status_tag: str | None = Field(None, min_length=1)
    status_ok: list[float] = [0.0]  # values meaning "measuring normally" (a boolean tag: false = 0, true = 1)

    @field_validator("elv")
    @classmethod
    def _elv_keys(cls, v: dict[str, float]) -> dict[str, float]:
        for key, limit in v.items():
            if not limit > 0:
                raise ValueError(f"elv.{key}: must be > 0, got {limit}")
        return v

    @field_validator("status_ok")
    @classmethod
    def _status_ok(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("needs at least one value meaning \"measuring normally\" (e.g. [0])")
        bad = [x for x in v if not math.isfinite(x)]
        if bad:
            raise ValueError(f"values must be finite numbers, got {bad}")
        return v

    @model_validator(mode="after")
    def _status(self) -> Pollutant:
        if self.status_tag is None and self.status_ok != [0.0]:  # (the default round-trips through model_dump)
            raise ValueError(f"status_ok is set for {self.name!r} but status_tag is not: name the analyser's "
                             "status tag (e.g. status_tag = \"AN-1.status\")")
        if self.status_tag is not None and self.status_tag == self.tag:
            raise ValueError(f"status_tag of {self.name!r} is its measurement tag {self.tag!r}: the status is a "
                             "separate signal of the analyser (e.g. \"AN-1.status\")")
        return self

    @model_validator(mode="after")
    def _molar_mass_known(self) -> Pollutant:
        if self.unit in ("ppm", "percent") and self.molar_mass() is None:
            raise ValueError(f"unit {self.unit!r} needs molar_mass_g_mol for {self.name!r} "
                             f"(known: {', '.join(sorted(units.MOLAR_MASS))})")
        return self

    def molar_mass(self) -> float | None:
        return self.molar_mass_g_mol or units.MOLAR_MASS.get(self.name)


class Rule(Strict):
    """A compliance criterion on validated averages.

    A ``period`` average over ``percent``% of ``elv`` is an exceedance. With ``share`` = 100 each
    exceedance breaches the limit; with ``share`` < 100, a ``window`` (calendar day, month or year)
    breaches when fewer than ``share``% of its valid averages are within the limit.

    Rules with the same ``group`` are alternatives (IED Annex VI Part 8 1.1: column A *or* 97 % within
    column B; CO 95 % of 10-minute *or* all half-hourly averages in 24 h): the group passes when any member
    passes, judged over the widest window of its members (`emissions.compliance.evaluate_group`).
    """

    name: str = Field(min_length=1)
    period: Period
    elv: str  # key into Pollutant.elv; pollutants without it are not evaluated by this rule
    percent: float = Field(100.0, gt=0)
    share: float = Field(100.0, gt=0, le=100)
    window: Window = "each"
    pollutants: list[str] = []  # empty: every pollutant with the elv key
    exclude: list[str] = []
    group: str | None = Field(None, min_length=1)  # alternatives: rules sharing a group pass when any passes
    reference: str = ""  # where the rule comes from, shown in reports

    @model_validator(mode="after")
    def _window_for_share(self) -> Rule:
        if self.share < 100 and self.window == "each":
            raise ValueError("a share below 100 % needs a window (day, month or year)")
        return self

    def applies_to(self, pollutant: Pollutant) -> bool:
        if self.elv not in pollutant.elv:
            return False
        if self.pollutants and pollutant.name not in self.pollutants:
            return False
        return pollutant.name not in self.exclude


class Fuel(Strict):
    """A fuel for CO2 by calculation: tonnes = activity × NCV × emission factor × oxidation factor."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")
    tag: str  # fuel consumption rate, in ``unit`` per hour (e.g. t/h, Nm3/h)
    unit: str = "t"
    ncv_gj_per_unit: float = Field(gt=0)  # net calorific value
    ef_t_co2_per_tj: float = Field(gt=0)  # emission factor, e.g. natural gas 56.1
    oxidation_factor: float = Field(1.0, gt=0, le=1)


class Live(Strict):
    """Real-time warnings: running averages projected to the end of their period (emissions.live)."""

    warn_percent: float = Field(100.0, gt=0)  # warn when the projection passes this % of the rule's limit
    # recent: the rest of the period continues at the mean of the last ``recent_s``; zero: only what
    # is already certain (the period would exceed even if emissions stopped now).
    projection: Literal["recent", "zero"] = "recent"
    recent_s: int = Field(600, gt=0)
    min_elapsed_share: float = Field(0.1, ge=0, lt=1)  # no projection before this share of the period
    # Readings wait this long (by their time) for the other collectors' readings of the same interval before it is
    # closed: a reading of an interval already closed is left out of the live view (not of the stored averages).
    reorder_s: float = Field(10.0, ge=0)
    subtract_ci: bool = False  # False: compare the measured projection (an earlier warning)
    # Compliance rules to watch; None: every rule with share 100 on a period of a day or shorter.
    rules: list[str] | None = None


class Qal3(Strict):
    """QAL3 (EN 14181) control charts of one analyser's zero and span checks (emissions.qal3)."""

    analyser: str  # a pollutant name of this stack
    zero_tag: str | None = None
    span_tag: str | None = None
    zero_reference: float = 0.0
    span_reference: float | None = None  # span gas concentration, analyser units
    s_ams: float | None = Field(None, gt=0)  # from QAL1; None: estimated from the first n_initial checks
    # QAL1 gives s_AMS at zero and at span level, and at span it is often larger: one value for both charts judged
    # span checks against the zero's spread (false alarms) or zero checks against the span's (drift missed).
    span_s_ams: float | None = Field(None, gt=0)  # the span chart's s_AMS; None: s_ams
    n_initial: int = Field(20, ge=5)
    warn_sigma: float = Field(2.0, gt=0)
    action_sigma: float = Field(3.0, gt=0)
    # EN 14181's CUSUM drift chart: reference value k = 0.501 s_AMS, decision interval h = 2.85 s_AMS.
    cusum_k: float = Field(0.501, ge=0)
    cusum_h: float = Field(2.85, gt=0)
    precision_factor: float = Field(3.686, gt=0)  # moving range limit D4 × d2 = 3.267 × 1.128, in s_ams

    def s_ams_for(self, kind: str) -> float | None:
        """The configured s_AMS of the ``kind`` (zero | span) chart; None: estimated from its first checks."""
        return self.span_s_ams if kind == "span" and self.span_s_ams is not None else self.s_ams

    @model_validator(mode="after")
    def _checks(self) -> Qal3:
        if self.zero_tag is None and self.span_tag is None:
            raise ValueError("needs zero_tag or span_tag")
        if self.span_tag is not None and self.span_reference is None:
            raise ValueError("span_tag needs span_reference (the span gas concentration)")
        if self.warn_sigma >= self.action_sigma:
            raise ValueError("warn_sigma must be below action_sigma")
        return self


class Regulatory(Strict):
    """Regulatory numbers of one stack; defaults are the IED's, filled per regime."""

    ci_percent: dict[str, float] = IED_CI_PERCENT
    ci_elv: str  # the elv key the CI percentages refer to (Annex V: the ELV; Annex VI: the daily ELV)
    # Minimum share of valid primary values in the operating time for an average to be valid.
    min_valid_share: dict[Literal["ten_min", "half_hour", "hour"], float] = DEFAULT_MIN_VALID_SHARE
    day_from: Literal["half_hour", "hour"]  # which averages a daily average is built from
    day_max_invalid: int = Field(ge=0)  # more invalid sub-averages than this invalidate the day
    # Month and year: the mean of the valid sub-averages (hours / half-hours) inside valid days, or of the valid days'
    # averages (each day weighs the same, however many valid hours it has); valid when this share of operating days
    # is valid.
    month_mean_of: Literal["sub_averages", "days"] = "sub_averages"
    month_min_valid_days_share: float = Field(0.0, ge=0, le=1)
    year_min_valid_days_share: float = Field(0.0, ge=0, le=1)
    max_invalid_days_per_year: int = Field(10, ge=0)  # Annex V Part 3 point 10, Annex VI Part 8 point 1.2
    clamp_validated_at_zero: bool = True  # a validated average below zero is reported as zero
    # A day's (month's, year's) validated value: false, its mean minus the CI (the mean of its sub-averages' validated
    # values before clamping: IED Annex V Part 3 10); true, the mean of the sub-averages' clamped validated values
    # (higher where a sub-average is below the CI), where a permit says so.
    clamp_before_averaging: bool = False
    accept_uncertain: bool = True  # readings of UNCERTAIN quality count as valid data
    o2_max_percent: float = Field(20.0, gt=0, lt=21)  # above this (dry) the O2 correction is not computed
    o2_correct_only_above_reference: bool = False  # some permits correct only when O2 > reference
    substitution_counts_as_valid: bool = True  # PEMS values in place of an invalid analyser

    @field_validator("min_valid_share")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        for k, s in v.items():
            if not 0 < s <= 1:
                raise ValueError(f"min_valid_share.{k}: must be in (0, 1], got {s}")
        return v


def _unit_key(unit: str) -> str:
    """A unit as written in ``[[tags]]``, for comparison (`models.schema.unit_key`: case, spaces, ³, µ aside)."""
    from models.schema import unit_key

    return unit_key(unit)


# Spellings a tag registry uses for the units the stack's keys name, by that key's value (after `_unit_key`): the
# "N" of a standard cubic metre is the ``conditions`` key's business, not another unit.
_CONCENTRATION_UNITS = {
    **dict.fromkeys(["mg/m3", "mg/nm3", "mg/sm3"], "mg/m3"), **dict.fromkeys(["ug/m3", "ug/nm3"], "ug/m3"),
    **dict.fromkeys(["g/m3", "g/nm3"], "g/m3"), **dict.fromkeys(["ppm", "ppmv", "vppm", "umol/mol"], "ppm"),
    **dict.fromkeys(["%", "vol%", "%vol", "vol-%", "%v/v", "%(v/v)"], "percent"), "ppb": "ppb", "ppbv": "ppb"}
_TEMPERATURE_UNITS = {"degc": "degC", "kelvin": "K", "degf": "degF"}


def concentration_unit(unit: str) -> str | None:
    """A concentration unit as a pollutant's ``unit`` names it ("mg/Nm³" -> "mg/m3", "vol-%" -> "percent"); None for
    text that is no known spelling of one (not compared)."""
    return _CONCENTRATION_UNITS.get(_unit_key(unit))
_PRESSURE_UNITS = {"kpa": "kPa", "mbar": "mbar", "pa": "Pa", "bar": "bar", "psi": "psi"}
_FLOW_UNITS = {**dict.fromkeys(["m3/h", "nm3/h", "sm3/h"], "m3/h"), **dict.fromkeys(["m3/s", "nm3/s"], "m3/s")}


class StackConfig(Strict):
    """One stack (emission point) with its analysers, peripheral measurements and permit numbers."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    regime: Regime
    description: str = ""
    timezone: str = "UTC"  # days, months and years are calendar periods in this zone
    reference_o2_percent: float | None = Field(None, ge=0, lt=21)  # None: no O2 correction
    primary_s: int = Field(60, gt=0, le=600)  # primary values: mean of readings over this many seconds
    ten_min: bool  # also compute 10-minute averages (waste incineration CO)
    operating_state_tag: str | None = None
    excluded_states: list[float] = []  # e.g. start-up and shut-down codes; excluded from averages
    o2: O2 = O2()
    h2o: H2O = H2O()
    temperature: Temperature = Temperature()
    pressure: Pressure = Pressure()
    flow: Flow = Flow()
    pollutants: list[Pollutant] = Field(min_length=1)
    regulatory: Regulatory
    compliance: list[Rule]
    fuels: list[Fuel] = []
    live: Live = Live()
    qal3: list[Qal3] = []
    # How many days after the end of a year readings arriving for it still make the periodic job recompute the stored
    # year (`emissions.late`); later ones are logged and left to `valvoja emissions compute`, so a year whose report
    # was filed does not change unnoticed. 0: never. At most a year: only the year before the running one is watched.
    late_data_days: int = Field(31, ge=0, le=366)

    @model_validator(mode="before")
    @classmethod
    def _regime_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("regime") not in REGIME_DEFAULTS:
            return data
        defaults = REGIME_DEFAULTS[data["regime"]]
        out = dict(data)
        reg = out.get("regulatory", {})
        if isinstance(reg, dict):
            merged = {**defaults["regulatory"], **reg}
            if isinstance(reg.get("ci_percent"), dict):  # a permit overriding one pollutant keeps the others
                merged["ci_percent"] = {**IED_CI_PERCENT, **reg["ci_percent"]}
            if isinstance(reg.get("min_valid_share"), dict):
                merged["min_valid_share"] = {**DEFAULT_MIN_VALID_SHARE, **reg["min_valid_share"]}
            out["regulatory"] = merged
        out.setdefault("compliance", defaults["compliance"])
        out.setdefault("ten_min", defaults["ten_min"])
        return out

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Europe/Helsinki)") from exc
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StackConfig:
        problems = []
        names = [p.name for p in self.pollutants]
        if len(names) != len(set(names)):
            problems.append(f"pollutants: duplicate names in {names}")
        if 600 % self.primary_s:
            problems.append(f"primary_s: must divide 600 s evenly (10-minute periods), got {self.primary_s}")
        for p in self.pollutants:
            if p.elv and self.ci_percent(p) > 0 and self.ci_elv(p) not in p.elv:
                problems.append(f"pollutants ({p.name}).ci_elv: the CI refers to elv.{self.ci_elv(p)}, "
                                f"which {p.name} does not have (has {sorted(p.elv)})")
            if p.o2_correction and self.reference_o2_percent is not None and not self.o2.configured:
                problems.append(f"o2: reference_o2_percent is set, so {p.name} needs o2.tag or o2.value")
            if (p.moisture == "wet" or (self.o2.basis == "wet" and p.o2_correction)) and not self.h2o.configured:
                problems.append(f"h2o: {p.name} needs the water content (h2o.tag or h2o.value) for the dry basis")
            if p.unit not in ("ppm", "percent") and p.conditions == "actual" and not (
                    self.temperature.configured and self.pressure.configured):
                problems.append(f"temperature/pressure: {p.name} is measured at actual conditions")
        if self.flow.configured:  # the mass needs the flow at dry standard conditions (emissions.normalise)
            if self.flow.conditions == "actual" and not (self.temperature.configured and self.pressure.configured):
                problems.append("temperature/pressure: the flow is at actual conditions (flow.conditions): the mass "
                                "needs them, or set flow.conditions = \"standard\"")
            if self.flow.moisture == "wet" and not self.h2o.configured:
                problems.append("h2o: the flow is wet (flow.moisture): the mass needs the water content (h2o.tag or "
                                "h2o.value), or set flow.moisture = \"dry\"")
        rule_names = [r.name for r in self.compliance]
        if len(rule_names) != len(set(rule_names)):
            problems.append(f"compliance: duplicate rule names in {rule_names}")
        for group in {r.group for r in self.compliance if r.group} & set(rule_names):
            problems.append(f"compliance: group {group!r} has the name of a rule")
        for name in self.live.rules or []:
            if name not in rule_names:
                problems.append(f"live.rules: {name!r} is not a compliance rule (have {rule_names})")
        measured = {tag: role for role, tag in self.tags().items() if not role.startswith("status:")}
        for p in self.pollutants:
            if p.status_tag is not None and p.status_tag in measured:
                problems.append(f"pollutants ({p.name}).status_tag: {p.status_tag!r} is already the stack's "
                                f"{measured[p.status_tag]} tag; the analyser status needs a tag of its own")
        for q in self.qal3:
            if q.analyser not in names:
                problems.append(f"qal3 ({q.analyser}).analyser: not a pollutant of this stack (have {names})")
            for key in ("zero_tag", "span_tag"):
                tag = getattr(q, key)
                if tag is not None and tag in measured:
                    # Every reading of the tag is charted as a check: a minute's process value against the zero gas.
                    problems.append(f"qal3 ({q.analyser}).{key}: {tag!r} is the stack's {measured[tag]} tag; the "
                                    "check results need a tag of their own (e.g. \"AN-1.NOx.zero\")")
        for rule in self.compliance:
            users = [p.name for p in self.pollutants if rule.applies_to(p)]
            if rule.period == "ten_min" and not self.ten_min and users:
                problems.append(f"ten_min: rule {rule.name} applies to {users} on 10-minute averages; "
                                "set ten_min = true")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def tag_unit_problems(self, tag_units: dict[str, str]) -> list[str]:
        """Where the site's tag registry (``[[tags]] unit``: tag -> unit) declares another unit for a tag than this
        stack reads it in. The stack's ``unit`` keys have defaults (a pollutant is mg/m3 unless told), so a tag
        registered in ppm whose pollutant left ``unit`` out was read as mg/m³: NOx 100 ppm as 100, not 205 mg/Nm³.
        Compared only where the tag's unit is a known spelling of a unit of that kind; other text is left alone."""
        out = []

        def compare(where: str, tag: str | None, ours: str, family: dict[str, str]) -> None:
            declared = tag_units.get(tag or "", "")
            theirs = family.get(_unit_key(declared))
            if theirs is not None and theirs != family[_unit_key(ours)]:
                out.append(f"stacks ({self.name}).{where}: read in {ours!r}, but its tag {tag} is registered in "
                           f"{declared!r} ([[tags]] unit); set the unit it is read in, or correct the tag's")

        for p in self.pollutants:
            compare(f"pollutants ({p.name}).unit", p.tag, p.unit, _CONCENTRATION_UNITS)
            if p.pems is not None:  # predictions are stored in the analyser's unit
                for key in ("tag", "lower_tag", "upper_tag"):
                    compare(f"pollutants ({p.name}).pems.{key}", getattr(p.pems, key), p.unit, _CONCENTRATION_UNITS)
        for q in self.qal3:  # check readings are compared with references in the analyser's unit
            unit = next((p.unit for p in self.pollutants if p.name == q.analyser), None)
            for key in ("zero_tag", "span_tag"):
                if unit is not None:
                    compare(f"qal3 ({q.analyser}).{key}", getattr(q, key), unit, _CONCENTRATION_UNITS)
        compare("temperature.unit", self.temperature.tag, self.temperature.unit, _TEMPERATURE_UNITS)
        compare("pressure.unit", self.pressure.tag, self.pressure.unit, _PRESSURE_UNITS)
        compare("flow.unit", self.flow.tag, self.flow.unit, _FLOW_UNITS)
        for role in ("o2", "h2o"):
            compare(f"{role} (vol-%)", getattr(self, role).tag, "percent", _CONCENTRATION_UNITS)
        return out

    def notes(self) -> list[str]:
        """What is valid but probably not meant (check-config prints these as notes): a pollutant with limits whose
        name the regulatory confidence intervals do not know ("NO2", "Dust") and no ci_percent of its own gets no
        confidence interval, so its validated averages are the measured ones, silently stricter than the permit."""
        known = ", ".join(self.regulatory.ci_percent)
        notes = [f"stacks ({self.name}).pollutants ({p.name}): no confidence interval: the name is not one of "
                 f"regulatory.ci_percent's ({known}) and ci_percent is not set, so nothing is subtracted from its "
                 "averages to validate them; set ci_percent (0 if that is meant)"
                 for p in self.pollutants
                 if p.elv and p.ci_percent is None and p.name not in self.regulatory.ci_percent]
        # An FID reports TOC in ppm of its calibration gas: ppm C1 (carbon) is what the default 12.01 g/mol converts;
        # ppm propane (C3H8, the usual span gas) needs 3 x 12.01, else every TOC value is a third of the true one.
        notes += [f"stacks ({self.name}).pollutants ({p.name}): TOC in {p.unit} is converted as carbon (C1, "
                  f"{units.MOLAR_MASS['TOC']} g/mol); an FID reporting propane equivalents (ppm C3H8) needs "
                  f"molar_mass_g_mol = {3 * units.MOLAR_MASS['TOC']:.2f}: set molar_mass_g_mol either way"
                  for p in self.pollutants
                  if p.name == "TOC" and p.unit in ("ppm", "percent") and p.molar_mass_g_mol is None]
        if "timezone" not in self.model_fields_set:
            # Days, months and years are counted in it, and a permit counts in local time (or CET all year) more
            # often than in UTC: left out, every daily average of a Finnish plant would be cut at 02:00 / 03:00.
            notes.append(f"stacks ({self.name}).timezone is not set: days, months and years are counted in UTC; set "
                         "the zone the permit counts in (Europe/Helsinki: local legal time, 23- and 25-hour days; "
                         "Etc/GMT-1: CET all year; \"UTC\" if that is meant)")
        return notes

    def ci_percent(self, p: Pollutant) -> float:
        if p.ci_percent is not None:
            return p.ci_percent
        return self.regulatory.ci_percent.get(p.name, 0.0)

    def ci_elv(self, p: Pollutant) -> str:
        return p.ci_elv or self.regulatory.ci_elv

    def ci_value(self, p: Pollutant) -> float:
        """The confidence interval in mg/Nm³ subtracted from a valid average to validate it."""
        pct = self.ci_percent(p)
        if pct == 0 or not p.elv:
            return 0.0
        return pct / 100.0 * p.elv[self.ci_elv(p)]

    def pollutant(self, name: str) -> Pollutant:
        for p in self.pollutants:
            if p.name == name:
                return p
        raise KeyError(f"stack {self.name} has no pollutant {name!r}")

    def tags(self) -> dict[str, str]:
        """Every tag the stack reads, by role (pollutant name, 'o2', 'h2o', ..., 'pems:NAME', 'fuel:NAME', 'state',
        'status:NAME'; several ``status:`` roles may share one tag)."""
        out = {p.name: p.tag for p in self.pollutants}
        for p in self.pollutants:
            if p.pems is not None:
                out[f"pems:{p.name}"] = p.pems.tag
                if p.pems.lower_tag and p.pems.upper_tag:
                    out[f"pems_lo:{p.name}"] = p.pems.lower_tag
                    out[f"pems_hi:{p.name}"] = p.pems.upper_tag
        for role in ("o2", "h2o", "temperature", "pressure", "flow"):
            sig: Signal = getattr(self, role)
            if sig.tag:
                out[role] = sig.tag
        out.update({f"fuel:{f.name}": f.tag for f in self.fuels})
        out.update({f"status:{p.name}": p.status_tag for p in self.pollutants if p.status_tag})
        if self.operating_state_tag:
            out["state"] = self.operating_state_tag
        return out

    def fingerprint(self) -> str:
        """sha256 of the configuration as used (defaults included), stored with every result for audit."""
        data = self.model_dump(mode="json")
        del data["late_data_days"]  # when late readings are taken changes no result: the hash stays as before it
        del data["live"]["reorder_s"]  # the live view only, no stored result
        reg = data["regulatory"]  # keys added since, at their defaults, hash as before they existed
        for key, default in (("clamp_before_averaging", False), ("month_mean_of", "sub_averages")):
            if reg[key] == default:
                del reg[key]
        for q in data["qal3"]:  # charts without their own span s_AMS hash as before span_s_ams existed
            if q["span_s_ams"] is None:
                del q["span_s_ams"]
        for p in data["pollutants"]:  # a pollutant without a status signal hashes as before status_tag existed
            if p["status_tag"] is None:
                del p["status_tag"], p["status_ok"]
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def load_stacks(entries: list[dict[str, Any]]) -> list[StackConfig]:
    """Validate the ``[[stacks]]`` entries of a site configuration."""
    return [StackConfig.model_validate(e) for e in entries]
