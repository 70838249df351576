"""A `report.Report` as one self-contained HTML file (inline CSS and SVG, no scripts, prints to PDF).

Written for two readers: the plant engineer (summary, charts, what went wrong) and the authority's
auditor (the configuration and permit numbers used with their fingerprint, the formulas, every
average with its availability and validity, every exceedance and substituted period).
"""

from __future__ import annotations

import html
import math

from emissions import periods
from emissions.pems import interval_level
from emissions.report import Report, Row

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em;color:#1b1b1b;max-width:1100px}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;border-bottom:2px solid #345;padding-bottom:.2em;
margin-top:1.8em}h3{font-size:1em;margin-bottom:.3em}table{border-collapse:collapse;margin:.5em 0;font-size:.85em}
th,td{border:1px solid #bbb;padding:.2em .45em;text-align:right}th{background:#e8edf2}td.l,th.l{text-align:left}
.ok{color:#17662b;font-weight:600}.bad{color:#b00020;font-weight:600}.warn{color:#8a5a00;font-weight:600}
.muted{color:#666}pre{background:#f5f5f5;padding:.6em;font-size:.75em;overflow:auto;max-height:40em}
.meta td{text-align:left}svg{background:#fafafa;border:1px solid #ddd}
@media print{body{margin:1cm}h2{page-break-after:avoid}table,svg{page-break-inside:avoid}}
"""

FORMULAS = [
    ("ppm to mg/Nm³", "c = ppm × M / 22.414 L/mol (M: NOx as NO2 46.01, SO2 64.07, CO 28.01, HCl 36.46 g/mol)"),
    ("actual to standard conditions", "c_std = c × (T / 273.15 K) × (101.325 kPa / p)"),
    ("wet to dry gas", "c_dry = c_wet / (1 − H2O / 100)"),
    ("reference oxygen", "E_ref = E_meas × (21 − O2_ref) / (21 − O2_meas), O2 on a dry basis"),
    ("validated average", "validated = average − CI, CI = CI% × ELV (clamped at 0 if configured; a day: its average "
                          "− CI, not the mean of clamped hours, unless clamp_before_averaging)"),
    ("availability", "valid primary values / primary values in operating time"),
    ("mass rate", "kg/h = c_dry,std × Q_dry,std × 10⁻⁶ (concentration without the O2 correction)"),
    ("CO2 from fuel", "t = activity × NCV / 1000 × EF × OF"),
]


def _e(x) -> str:
    return html.escape(str(x))


def _n(x: float | None, d: int = 2) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:,.{d}f}".replace(",", " ")


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.1f} %"


# An event's value and limit are a concentration only for an exceedance: a window's are shares of its averages (within,
# required), the invalid-day count's numbers of days, a PEMS deviation's shares outside the interval.
EVENT_UNIT = {"window": " %", "invalid_days": " days", "pems_deviation": " %"}


def _event_num(kind: str, x: float) -> str:
    unit = EVENT_UNIT.get(kind, " mg/Nm³")
    return _n(x, 0 if kind == "invalid_days" else 2) + unit


def _status(s: str) -> str:
    cls = {"valid": "ok", "invalid": "bad"}.get(s, "muted")
    return f'<span class="{cls}">{_e(s)}</span>'


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _chart(rows: list[Row], limits: list[tuple[str, float]], width: int = 900, height: int = 170) -> str:
    """Sub-averages (measured line, validated dots) against the limits that apply to them."""
    vals = [r.value for r in rows if math.isfinite(r.value)] + [v for _, v in limits]
    if not rows or not vals:
        return '<p class="muted">no data</p>'
    top = max(vals) * 1.1 or 1.0
    x0, pad = 50, 15
    step = (width - x0 - pad) / max(len(rows), 1)

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * v / top

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for frac in (0, 0.5, 1):
        v = top * frac
        parts.append(f'<text x="4" y="{y(v) + 4:.1f}" font-size="10">{_n(v, 0)}</text>'
                     f'<line x1="{x0}" x2="{width - pad}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e3e3e3"/>')
    for name, v in limits:
        parts.append(f'<line x1="{x0}" x2="{width - pad}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#b00020" '
                     f'stroke-dasharray="5,3"/><text x="{width - pad - 4}" y="{y(v) - 3:.1f}" font-size="10" '
                     f'text-anchor="end" fill="#b00020">{_e(name)} {_n(v, 1)}</text>')
    pts = " ".join(f"{x0 + (i + .5) * step:.1f},{y(r.value):.1f}" for i, r in enumerate(rows) if math.isfinite(r.value))
    parts.append(f'<polyline fill="none" stroke="#345" stroke-width="1.3" points="{pts}"/>')
    for i, r in enumerate(rows):
        cx = x0 + (i + .5) * step
        if math.isfinite(r.validated):
            color = "#c77700" if r.substituted_share > 0 else "#1f6fb2"
            parts.append(f'<circle cx="{cx:.1f}" cy="{y(r.validated):.1f}" r="2" fill="{color}"/>')
        elif r.status == "invalid":
            parts.append(f'<rect x="{cx - step / 2:.1f}" y="{pad}" width="{step:.1f}" height="{height - 2 * pad}" '
                         'fill="#b00020" opacity="0.08"/>')
    parts.append("</svg>")
    return "".join(parts)


def _level(rep: Report, pollutant: str) -> str:
    """The nominal level of a pollutant's PEMS interval in the period, from its stored predictions."""
    levels = rep.pems_levels.get(pollutant, [])
    if not levels:
        return "level not stated: no PEMS prediction stored in the period"
    return " / ".join(_e(interval_level(c)) for c in levels) + ", as stored with the PEMS predictions"


def render(rep: Report) -> str:
    """The whole report as HTML text."""
    cfg, tz = rep.cfg, rep.cfg.timezone

    def t(x: int) -> str:
        return _e(periods.iso(x, tz).replace("T", " "))

    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(rep.title)}</title>"
           f"<style>{CSS}</style></head><body><h1>{_e(rep.title)}</h1>"]
    meta = [("Stack", f"{_e(cfg.name)} {_e(cfg.description)}"), ("Regime", _e(cfg.regime)),
            ("Period", f"{t(rep.start)} – {t(rep.end)} ({_e(tz)})"),
            ("Reference O2", f"{_n(cfg.reference_o2_percent, 1)} %" if cfg.reference_o2_percent is not None
             else "none"),
            ("Computed from", f"readings {t(rep.span[0])} – {t(rep.span[1])}, primary values of {cfg.primary_s} s"),
            ("Stored as", f"run {rep.run_id} (emission_runs.id; a later change of these averages names its run)"
             if rep.run_id is not None else "not stored (--no-store): computed from the readings when generated"),
            ("Readings", f"{_n(rep.readings, 0)} of the stack's tags in the computed span, as the hourly rollups "
                         "counted them when the run started" if rep.readings is not None else "–"),
            ("Configuration sha256", f"<code>{cfg.fingerprint()}</code>"),
            ("Generated", _e(rep.generated_at.isoformat(timespec="seconds"))),
            ("Database", _e(rep.edition or "–"))]
    out.append("<table class='meta'>" + "".join(f"<tr><th class='l'>{k}</th><td>{v}</td></tr>" for k, v in meta)
               + "</table>")
    out += [f"<p class='warn'>{_e(n)}</p>" for n in rep.notes]

    verdict = {}
    decided_by_group = {(r.pollutant, m) for r in rep.rules for m in r.members}  # an alternative's group decides
    for r in rep.rules:
        if (r.pollutant, r.rule) not in decided_by_group:
            verdict.setdefault(r.pollutant, []).append(r)
    judged = {(r.pollutant, r.rule) for r in rep.rules}
    rows = []
    for r in rep.summary:
        rs = verdict.get(r.pollutant, [])
        # A rule on the period's own average has no result when that average is invalid: the summary said "pass".
        unjudged = [x.name for x in cfg.compliance if x.period == rep.kind and x.applies_to(cfg.pollutant(r.pollutant))
                    and (r.pollutant, x.name) not in judged]
        # A window still open (the year of a share rule in January) that fails so far may pass by its end: it was
        # summed up as FAIL beside the final failures, where the compliance table says "(provisional)".
        failed = [x.rule for x in rs if not x.passed and not x.provisional]
        so_far = [x.rule for x in rs if not x.passed and x.provisional]
        res = "<br>".join([f"<span class='bad'>FAIL: {_e(', '.join(failed))}</span>"] * bool(failed)
                          + [f"<span class='warn'>failing so far (provisional): {_e(', '.join(so_far))}</span>"]
                          * bool(so_far))
        res = res or ("<span class='ok'>pass</span>" if rs else "<span class='muted'>no rule</span>" * (not unjudged))
        if unjudged:
            res += ("<br>" * bool(res) + f"<span class='warn'>not judged (no valid {rep.kind} average): "
                    f"{_e(', '.join(unjudged))}</span>")
        elv = ", ".join(f"{k} {_n(v, 1)}" for k, v in cfg.pollutant(r.pollutant).elv.items()) or "–"
        rows.append([_e(r.pollutant), _n(r.value), _n(r.validated), _e(elv), _status(r.status), _pct(r.availability),
                     _pct(r.substituted_share), _n(r.mass_kg / 1000, 3), res])
    out.append("<h2>Summary</h2>" + _table(
        ["Pollutant", f"{rep.kind} average mg/Nm³", "validated", "ELV mg/Nm³", "validity", "availability",
         "substituted", "mass t", "compliance"], rows))

    def span(a: int, b: int) -> str:
        sa, sb = periods.iso(a, tz), periods.iso(b, tz)
        if sa[11:16] == "00:00" and sb[11:16] == "00:00":  # whole local days: dates are enough
            return _e(f"{sa[:10]} – {sb[:10]}")
        return f"{t(a)} – {t(b)}"

    def window(r) -> str:
        text = span(r.start, r.end)
        return text + (f"<br><span class='muted'>{r.windows} daily windows, {r.failed_windows} failed</span>"
                       if r.windows > 1 else "")

    out.append("<h2>Compliance</h2>")
    out.append(_table(["Rule", "Pollutant", "window", "valid averages", "over limit", "limit", "within",
                       "required", "result"],
                      [[_e(r.rule), _e(r.pollutant), window(r), str(r.n_valid), str(r.n_over),
                        # the invalid-day count's limit is the days allowed: it read "10.00" under "mg/Nm³"
                        _event_num("invalid_days" if r.rule == "invalid_days" else "exceedance", r.limit),
                        _pct(r.share_within / 100) if r.rule != "invalid_days" else "–",
                        _n(r.required_share, 0) + " %" if math.isfinite(r.required_share) else "–",
                        ("<span class='ok'>pass</span>" if r.passed else "<span class='bad'>FAIL</span>")
                        + (f" by {_e(r.decided_by)}" if r.decided_by else "")
                        + (" <span class='muted'>(provisional)</span>" if r.provisional else "")]
                       for r in rep.rules], left=3) if rep.rules else "<p class='muted'>no rule applies</p>")
    refs = dict.fromkeys((r.rule, r.reference) for r in rep.rules if r.reference)
    if refs:
        out.append("<ul class='muted'>" + "".join(f"<li><b>{_e(a)}</b>: {_e(b)}</li>" for a, b in refs) + "</ul>")

    exceed = [e for e in rep.events if e.kind != "pems_deviation"]
    out.append(f"<h2>Exceedances ({len(exceed)})</h2>")
    out.append(_table(["Pollutant", "rule", "kind", "period", "start", "value", "limit", "% of ELV", "breach"],
                      [[_e(e.pollutant), _e(e.rule), _e(e.kind), _e(e.period), t(e.start), _event_num(e.kind, e.value),
                        _event_num(e.kind, e.limit),
                        _n(e.percent_of_elv, 1) if e.kind == "exceedance" else "–",
                        "<span class='bad'>yes</span>" if e.breach else "provisional" if e.provisional
                        else "tolerated"] for e in exceed], left=5)
               if exceed else "<p class='ok'>none</p>")
    pems_links = [p for p in cfg.pollutants if p.pems is not None]
    if pems_links:
        dev = [e for e in rep.events if e.kind == "pems_deviation"]
        out.append(f"<h2>PEMS cross-check ({len(dev)} analyser deviations)</h2>")
        out.append("<p>" + "; ".join(
            f"{_e(p.name)}: analyser flagged when over {p.pems.window_s / 3600:g} h at least "
            f"{p.pems.min_outside_share:.0%} of its values lie outside the PEMS interval ({_level(rep, p.name)})"
            for p in pems_links) + "</p>")
        # Which model version substituted the analyser and bounded the cross-check: the pems tags' readings do not say.
        models = [(pol, m) for pol, ms in rep.pems_models.items() for m in ms]
        out.append("<h3>PEMS model versions of the period</h3>" + (_table(
            ["Pollutant", "model", "registry version", "ONNX sha256", "predictions", "first", "last",
             "outside training range"],
            [[_e(pol), _e(m.model_id), _e(m.registry_version or "–"), f"<code>{_e(m.sha256)}</code>",
              _n(m.predictions, 0), t(m.first), t(m.last), _n(m.outside_training, 0)] for pol, m in models], left=4)
            if models
            else "<p class='muted'>no PEMS prediction stored in the period: no model version to name</p>"))
        if dev:
            out.append(_table(["Pollutant", "from", "to", "max share outside"],
                              [[_e(e.pollutant), t(e.start), t(e.end), _n(e.value, 0) + " %"] for e in dev], left=3))

    out.append(f"<h2>{_e(rep.detail_period.replace('_', '-'))} averages</h2>")
    for pol, rows_ in rep.detail.items():
        limits = [(r.name, cfg.pollutant(pol).elv[r.elv] * r.percent / 100) for r in cfg.compliance
                  if r.period == rep.detail_period and r.applies_to(cfg.pollutant(pol))]
        out.append(f"<h3>{_e(pol)}</h3>" + _chart(rows_, limits))
        out.append("<details><summary>table</summary>" + _table(
            # raw: the analyser's mean in its own unit (ppm, wet, actual conditions...): the header did not say which
            ["start", "mg/Nm³", "validated", f"raw {cfg.pollutant(pol).unit}", "validity", "availability",
             "substituted", "mass kg"],
            [[t(r.start), _n(r.value), _n(r.validated), _n(r.raw), _status(r.status), _pct(r.availability),
              _pct(r.substituted_share), _n(r.mass_kg, 1)] for r in rows_]) + "</details>")

    subst = [r for rows_ in rep.detail.values() for r in rows_ if r.n_substituted > 0]
    out.append(f"<h2>Substituted periods ({len(subst)})</h2>")
    out.append(_table(["Pollutant", "start", "end", "substituted values", "share", "mg/Nm³"],
                      [[_e(r.pollutant), t(r.start), t(r.end), str(r.n_substituted), _pct(r.substituted_share),
                        _n(r.value)] for r in subst], left=3) if subst else "<p class='muted'>none</p>")

    out.append("<h2>Invalid and substituted data (primary values in operating time)</h2>")
    reasons = sorted({k for v in rep.invalid_reasons.values() for k in v})
    out.append(_table(["Pollutant", *reasons], [[_e(p), *[str(v.get(k, 0)) for k in reasons]]
                                                 for p, v in rep.invalid_reasons.items()]))

    out.append("<h2>Mass emissions</h2>")
    if not cfg.flow.configured:
        out.append("<p class='muted'>No flue-gas flow configured ([stacks.flow]): the mass emissions are not known "
                   "(–), not zero.</p>")
    out.append(_table(
        ["Pollutant", "tonnes", "mean kg/h", "operating h", "h without valid data"],
        [[_e(m.pollutant), _n(m.tonnes, 3), _n(m.mean_kg_h, 2), _n(m.operating_h, 1), _n(m.gap_h, 1)]
         for m in rep.mass]))
    if rep.fuels:
        out.append(_table(["Fuel", "activity", "unit", "CO2 t", "fuel data availability"],
                          [[_e(f.fuel), _n(float(f.activity.sum()), 2), _e(f.unit), _n(float(f.co2_t.sum()), 2),
                            _pct(float(f.availability.mean()) if len(f.availability) else None)] for f in rep.fuels]))

    out.append("<h2>QAL3 (EN 14181) control charts</h2>")
    out.append(_table(["Analyser", "check", "status", "checks", "last", "deviation", "CUSUM+", "CUSUM−", "s_AMS",
                       "alarms in period"],
                      [[_e(s.analyser), _e(s.kind), _e(s.status), str(s.n_checks),
                        t(s.last_time) if s.last_time else "–", _n(s.last_deviation, 3), _n(s.cusum_pos),
                        _n(s.cusum_neg), _n(s.s_ams, 3),
                        _e(", ".join(sorted({a for c in checks for a in c.alarms})) or "none")]
                       for s, checks in rep.qal3], left=3) if rep.qal3 else "<p class='muted'>no QAL3 configured</p>")

    out.append("<h2>Year to date</h2>" + _table(
        ["Pollutant", "average mg/Nm³", "validated", "valid days", "invalid days", "allowed invalid days",
         "availability"],
        [[_e(p), _n(r.value), _n(r.validated), str(r.sub_valid), str(r.sub_invalid),
          str(cfg.regulatory.max_invalid_days_per_year), _pct(r.availability)] for p, r in rep.year.items()]))

    reg = cfg.regulatory
    out.append("<h2>Method and configuration</h2>")
    out.append(_table(["Formula", ""], [[_e(a), _e(b)] for a, b in FORMULAS], left=2))
    out.append(_table(["Pollutant", "tag", "unit", "basis", "M g/mol", "CI %", "CI mg/Nm³", "ELVs"],
                      [[_e(p.name), _e(p.tag), _e(p.unit), _e(f"{p.moisture}, {p.conditions}"),
                        _n(p.molar_mass(), 2), _n(cfg.ci_percent(p), 0), _n(cfg.ci_value(p)),
                        _e(", ".join(f"{k} {v:g}" for k, v in p.elv.items()))] for p in cfg.pollutants], left=4))
    out.append(f"<p>Validity: an average needs {_e(', '.join(f'{k} {v:.0%}' for k, v in reg.min_valid_share.items()))}"
               f" valid primary values in operating time; a day is invalid with more than {reg.day_max_invalid} "
               f"invalid {_e(reg.day_from.replace('_', '-'))} averages; operating states "
               f"{_e(cfg.excluded_states)} of {_e(cfg.operating_state_tag or '–')} are excluded.</p>")
    out.append(f"<details><summary>configuration used (JSON)</summary><pre>{_e(rep.config_json())}</pre></details>")
    out.append("</body></html>")
    return "\n".join(out)
