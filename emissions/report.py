"""Daily and monthly emission reports: the figures, gathered from one computed span (no I/O here).

`build` selects from a `job.SpanResult` (computed from the year start, so year-to-date rules and the
invalid-day count are current) what a report of one local day or month shows: the period's averages
per pollutant, its sub-averages (hours or half-hours for a day, days for a month), the rule outcomes
whose windows touch the period, exceedance events, substituted periods, why data was invalid, mass
totals and the QAL3 chart states. `emissions.report_html` renders it; `write_csv` writes the
averages, events and notes as CSV.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from emissions import compliance, mass, periods, qal3
from emissions.averages import Averages, Status
from emissions.compliance import Event, RuleResult
from emissions.config import StackConfig
from emissions.job import PemsModel, SpanResult
from emissions.normalise import Why

# Reasons whose bit name alone does not say enough (the others are shown as the name in lower case).
LABELS = {Why.ANALYSER_STATUS: "analyser_status (calibration, maintenance, fault)",
          Why.T_P_MISSING: "t_p_missing (temperature or pressure missing or implausible)"}
STATUS_TEXT = {int(Status.VALID): "valid", int(Status.INVALID): "invalid", int(Status.NOT_OPERATING): "not operating"}


@dataclass
class Row:
    """One average as reported (times are Unix seconds)."""

    pollutant: str
    period: str
    start: int
    end: int
    value: float
    validated: float
    raw: float
    status: str
    availability: float
    substituted_share: float
    n_operating: int
    n_valid: int
    n_substituted: int
    mass_kg: float
    sub_valid: int | None = None
    sub_invalid: int | None = None


@dataclass
class Report:
    cfg: StackConfig
    kind: str  # day | month
    start: int
    end: int
    span: tuple[int, int]
    generated_at: datetime
    edition: str
    summary: list[Row]
    detail: dict[str, list[Row]]  # pollutant -> sub-averages
    detail_period: str
    year: dict[str, Row]  # pollutant -> year-to-date average (invalid days)
    rules: list[RuleResult]
    events: list[Event]
    invalid_reasons: dict[str, dict[str, int]]  # pollutant -> reason -> primary values
    mass: list[mass.MassTotal]
    fuels: list[mass.FuelTotals]
    qal3: list[tuple[qal3.ChartState, list[qal3.Check]]]
    notes: list[str] = field(default_factory=list)
    # Pollutant -> nominal coverages of the stored PEMS predictions of the period (`job.pems_levels`): the level of
    # the interval of the cross-check, which its lower / upper readings do not carry.
    pems_levels: dict[str, list[float | None]] = field(default_factory=dict)
    # What the figures rest on besides the configuration (its sha256): the stored run (``emission_runs.id``; None: not
    # stored) that revisions of these periods name, the readings in the span as the hourly rollups counted them when
    # the run started (emissions.late compares later counts with it), and the PEMS model versions of the period.
    run_id: int | None = None
    readings: int | None = None
    pems_models: dict[str, list[PemsModel]] = field(default_factory=dict)

    @property
    def title(self) -> str:
        label = periods.iso(self.start, self.cfg.timezone)[: 10 if self.kind == "day" else 7]
        return f"Emission report {self.cfg.name} {label}"

    def config_json(self) -> str:
        return json.dumps(self.cfg.model_dump(mode="json"), indent=2, sort_keys=True)


def _rows(pol: str, av: Averages, mask: np.ndarray) -> list[Row]:
    avail, share = av.availability, av.substituted_share
    has_sub = len(av.sub_valid) == len(av)
    # The stored mass of an operating period without any rate (no flow configured, or no flow or concentration
    # reading in it) is 0 kg; reported so, a stack without a flow meter emitted "0.000 t". Unknown, not zero: only a
    # period without operating time emitted nothing.
    mass_kg = np.where((av.n_operating > 0) & ~np.isfinite(av.mass_kg_h), np.nan, av.mass_kg)
    return [Row(pol, av.period, int(av.start[i]), int(av.end[i]), float(av.value[i]), float(av.validated[i]),
                float(av.raw[i]), STATUS_TEXT[int(av.status[i])], float(avail[i]), float(share[i]),
                int(av.n_operating[i]), int(av.n_valid[i]), int(av.n_substituted[i]), float(mass_kg[i]),
                int(av.sub_valid[i]) if has_sub else None, int(av.sub_invalid[i]) if has_sub else None)
            for i in np.flatnonzero(mask)]


def _reasons(sr: SpanResult, pol: str, start: int, end: int) -> dict[str, int]:
    n = sr.result.normalised[pol]
    t = sr.primary.times()
    m = (t >= start) & (t < end)
    why = n.why[m]
    operating = (why & Why.NOT_OPERATING) == 0  # a start-up is excluded, not invalid
    out = {}
    for bit in Why:
        if bit not in (Why.NONE, Why.NOT_OPERATING, Why.STATE_UNKNOWN):
            count = int((((why & bit) != 0) & operating).sum())
            if count:
                out[LABELS.get(bit, bit.name.lower())] = count
    out["not_operating"] = int((~operating).sum())
    unknown = int(((why & Why.STATE_UNKNOWN) != 0).sum())
    if unknown:
        out["state_unknown (not operating)"] = unknown
    return out


def build(sr: SpanResult, kind: str, start: int, end: int, edition: str = "") -> Report:
    """The report of [start, end) (one local day or month) from a span computed around it."""
    cfg = sr.cfg
    detail_period = cfg.regulatory.day_from if kind == "day" else "day"
    summary, detail, year = [], {}, {}
    for pol in cfg.pollutants:
        levels = sr.result.averages[pol.name]
        top = levels[kind]
        summary += _rows(pol.name, top, (top.start == start))
        sub = levels[detail_period]
        detail[pol.name] = _rows(pol.name, sub, (sub.start >= start) & (sub.end <= end))
        y = levels["year"]
        rows = _rows(pol.name, y, (y.start <= start) & (y.end > start))
        if rows:
            year[pol.name] = rows[0]

    def touches(s: int, e: int) -> bool:
        return s < end and e > start

    # Rules judged average by average are restated for the report's period; windowed rules (a year, a day)
    # keep their window, which the report shows.
    each = {r.name for r in cfg.compliance if r.window == "each"}
    rules = [r for r in sr.rules if touches(r.start, r.end) and r.rule not in each]
    for rule in cfg.compliance:
        if rule.window != "each":
            continue
        for pol in cfg.pollutants:
            if rule.applies_to(pol):
                av = sr.result.averages[pol.name][rule.period]
                inside = av.subset((av.start >= start) & (av.end <= end))
                computed = (max(start, sr.span[0]), min(end, sr.span[1]))  # a running period stays provisional
                rules += compliance.evaluate_rule(cfg, rule, pol.name, inside, computed)[0]
    if kind == "month":  # one line per rule and pollutant for the daily windows of a month
        daily = {r.name for r in cfg.compliance if r.window == "day"}
        groups = {r.group for r in cfg.compliance if r.group}
        daily |= {g for g in groups if compliance.group_window([r for r in cfg.compliance if r.group == g]) == "day"}
        grouped: dict[tuple[str, str], list[RuleResult]] = {}
        for r in [r for r in rules if r.rule in daily]:
            grouped.setdefault((r.pollutant, r.rule), []).append(r)
        rules = [r for r in rules if r.rule not in daily] + [compliance.summarise(g, start, end)
                                                            for g in grouped.values()]
    order = {r.name: i for i, r in enumerate(cfg.compliance)}
    order |= {r.group: i + 0.5 for i, r in enumerate(cfg.compliance) if r.group}  # after its last member
    rules.sort(key=lambda r: ([p.name for p in cfg.pollutants].index(r.pollutant), order.get(r.rule, 99)))
    events = [e for e in sr.events if touches(e.start, e.end)]
    charts = []
    for q in cfg.qal3:
        for kind_ in ("zero", "span"):
            checks = sr.qal3.get((q.analyser, kind_))
            if checks is not None:
                upto = [c for c in checks if c.time < end]
                charts.append((qal3.state(q, kind_, upto), [c for c in upto if c.time >= start]))
    fuels = []
    for f in cfg.fuels:
        ft = mass.fuel_co2_by_period(cfg, f, sr.primary, kind)
        m = ft.start == start
        fuels.append(mass.FuelTotals(f.name, f.unit, ft.start[m], ft.end[m], ft.activity[m], ft.co2_t[m],
                                     ft.availability[m]))
    notes = []
    if end > sr.span[1]:
        notes.append("The period is not complete: figures cover the data up to "
                     f"{periods.iso(sr.span[1], cfg.timezone)}.")
    return Report(cfg, kind, start, end, sr.span, datetime.now(UTC), edition, summary, detail, detail_period, year,
                  rules, events, {p.name: _reasons(sr, p.name, start, end) for p in cfg.pollutants},
                  mass.totals(sr.result, start, end, cfg.regulatory.day_from), fuels, charts, notes,
                  run_id=sr.run_id, readings=sr.readings)


CSV_COLUMNS = ("stack", "pollutant", "period", "period_start", "period_end", "value_mg_nm3", "validated_mg_nm3",
               "raw", "status", "availability", "substituted_share", "n_operating", "n_valid", "n_substituted",
               "mass_kg", "sub_valid", "sub_invalid", "config_sha256", "raw_unit")


def _num(x: float | None, digits: int = 4) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def write_csv(rep: Report, path: Path) -> list[Path]:
    """Averages (summary, then sub-averages; ``raw`` in the analyser's unit, ``raw_unit``) to ``path``; events to
    ``<stem>_events.csv``; the report's notes (an incomplete period, results recomputed from late data) to
    ``<stem>_notes.csv``, written even when there are none so that a system reading the export can tell "no notes" from
    "notes not exported". The same stored data gives the same files byte for byte (no generation time, no run number:
    the HTML has those)."""
    sha = rep.cfg.fingerprint()
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in rep.summary + [r for rows in rep.detail.values() for r in rows]:
            w.writerow([rep.cfg.name, r.pollutant, r.period, periods.iso(r.start, "UTC"), periods.iso(r.end, "UTC"),
                        _num(r.value), _num(r.validated), _num(r.raw), r.status, _num(r.availability),
                        _num(r.substituted_share), r.n_operating, r.n_valid, r.n_substituted, _num(r.mass_kg, 3),
                        "" if r.sub_valid is None else r.sub_valid, "" if r.sub_invalid is None else r.sub_invalid,
                        sha, rep.cfg.pollutant(r.pollutant).unit])
    ev_path = path.with_name(path.stem + "_events.csv")
    with ev_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("stack", "pollutant", "rule", "kind", "period", "start", "end", "value", "limit", "elv",
                    "breach", "provisional"))
        for e in rep.events:
            w.writerow([e.stack, e.pollutant, e.rule, e.kind, e.period, periods.iso(e.start, "UTC"),
                        periods.iso(e.end, "UTC"), _num(e.value), _num(e.limit), _num(e.elv), e.breach,
                        e.provisional])
    notes_path = path.with_name(path.stem + "_notes.csv")
    with notes_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("stack", "note"))
        w.writerows([rep.cfg.name, note] for note in rep.notes)
    return [path, ev_path, notes_path]
