"""Uncertainty report of a model on a stretch of data: HTML (inline SVG, no scripts or external files) + JSON.

`build_report` computes, from the model's predictions on rows in time order (and the truth where known):

- nominal vs empirical coverage over time, per window of rows, for the static split-conformal interval
  and the adaptive one (`models.evaluate.stream`: each row's truth revealed after its prediction);
- interval width over time (both);
- residuals: histogram, quantiles, mean residual per window (bias drifting away from zero shows
  up here first);
- input drift per feature against the training data (`models.drift.DriftMonitor`): PSI and KS on all
  rows and PSI per window.

`write_report(report, out_dir)` writes ``report.html`` and ``report.json`` (NaN written as ``null``).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge.jsontext import json_safe
from models.conformal import SplitConformal
from models.drift import DriftMonitor
from models.evaluate import regression_metrics, stream, windowed

__all__ = ["build_report", "render_html", "write_report"]


def build_report(y_pred, *, y_true=None, X=None, features: Sequence[str] | None = None,
                 conformal: SplitConformal | dict | None = None, static_interval=None, calibration_scores=None,
                 alpha: float | None = None,
                 drift: DriftMonitor | dict | None = None, model: dict | None = None, window: int = 168,
                 adaptive: dict | None = None, bias_halflife: float | None = None, streamed=None,
                 drift_window: int | None = None,
                 extra: dict | None = None) -> dict:
    """The report as a JSON-able dict.

    ``y_pred``: model output per row (time order). ``conformal``: the model's split-conformal calibration
    (`SplitConformal` or its ``to_dict()``), giving the static interval ``ŷ ± q``. ``calibration_scores``:
    the calibration residuals the adaptive interval starts from (default: a flat window of ``q``, which
    starts it at the static width). ``static_interval`` (``(n, 2)``) instead of ``conformal``: the interval as
    served (e.g. `models.runtime.Output.interval`, CQR included). ``y_true`` enables coverage, residuals
    and the adaptive interval.
    ``X`` (``(n, k)`` in ``features`` order) and ``drift`` (a `DriftMonitor` of the training data or its
    ``to_dict()``) enable the input-drift section. ``adaptive``: `models.evaluate.stream` options
    (``window``, ``gamma``); ``streamed``: a `models.evaluate.StreamResult` already computed on these rows
    (used instead of running `stream` again). ``window``: rows per point of the "over time" series;
    ``drift_window``: rows per PSI point (default ``4 * window``: a short window of a seasonal input always
    differs from a whole year).
    """
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    n = int(p.size)
    sc = None
    if conformal is not None:
        sc = conformal if isinstance(conformal, SplitConformal) else SplitConformal.from_dict(conformal)
    if alpha is None:
        alpha = sc.alpha if sc is not None else 0.1
    created = datetime.now(UTC).isoformat(timespec="seconds")
    rep: dict = {"kind": "valvoja.models.uncertainty_report", "created": created,
                 "model": dict(model or {}), "rows": n, "alpha": alpha, "nominal_coverage": 1.0 - alpha,
                 "window": window, "metrics": {}, "over_time": {}, "residuals": None, "input_drift": None}
    if static_interval is not None:
        static_iv = np.asarray(static_interval, dtype=np.float64).reshape(-1, 2)
        if static_iv.shape[0] != n:
            raise ValueError(f"{static_iv.shape[0]} intervals for {n} predictions")
    else:
        static_iv = sc.interval(p) if sc is not None else None
    if sc is not None:
        rep["static_half_width"] = float(sc.q_)
    y = None if y_true is None else np.asarray(y_true, dtype=np.float64).ravel()
    if y is not None and y.size != n:
        raise ValueError(f"{y.size} true values for {n} predictions")
    if y is not None and np.isfinite(y).any():
        if static_iv is not None:
            rep["metrics"]["static"] = regression_metrics(y, p, static_iv)
            rep["over_time"]["static"] = windowed(y, p, static_iv, window)
        else:
            rep["metrics"]["static"] = regression_metrics(y, p)
        scores = calibration_scores
        if scores is None and sc is not None and math.isfinite(sc.q_):
            scores = np.full(max(int(sc.n_), 2), sc.q_)
        st = streamed
        if st is None and scores is not None:
            opts = {"window": 168, "gamma": 0.005, **(adaptive or {})}
            st = stream(p, y, scores, alpha=alpha, bias_halflife=bias_halflife, **opts)
        if st is not None:
            rep["adaptive"] = st.params
            rep["metrics"]["adaptive"] = st.metrics(y)
            rep["over_time"]["adaptive"] = windowed(y, st.point, st.interval, window)
        rep["residuals"] = _residuals(y - p, window)
    elif static_iv is not None:
        starts = list(range(0, n, window))
        w = static_iv[:, 1] - static_iv[:, 0]
        rep["over_time"]["static"] = {"window": window, "start": starts, "end": [min(a + window, n) for a in starts],
                                      "mean_width": [float(np.mean(w[a:a + window])) for a in starts]}
    if X is not None and drift is not None:
        mon = drift if isinstance(drift, DriftMonitor) else DriftMonitor.from_dict(drift)
        Xa = np.asarray(X, dtype=np.float64)
        if features is not None and list(features) != mon.features:
            raise ValueError(f"features {list(features)} differ from the drift reference's {mon.features}")
        whole = mon.check(Xa)
        whole["over_time"] = mon.over_time(Xa, drift_window or 4 * window)
        whole["window"] = drift_window or 4 * window
        rep["input_drift"] = whole
    if extra:
        rep.update(extra)
    return rep


def _residuals(e: np.ndarray, window: int, bins: int = 40) -> dict:
    e = e[np.isfinite(e)]
    if e.size == 0:
        return {"n": 0}
    lo, hi = np.quantile(e, [0.005, 0.995])
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    counts, edges = np.histogram(np.clip(e, lo, hi), bins=bins, range=(lo, hi))
    q = np.quantile(e, [0.05, 0.25, 0.5, 0.75, 0.95])
    means = [float(np.mean(e[a:a + window])) for a in range(0, e.size, window)]
    return {"n": int(e.size), "mean": float(e.mean()), "std": float(e.std()),
            "quantiles": {k: float(v) for k, v in zip(("p5", "p25", "p50", "p75", "p95"), q, strict=True)},
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}, "mean_per_window": means}


def write_report(report: dict, out_dir: str | Path, *, name: str = "report") -> tuple[Path, Path]:
    """Write ``<name>.html`` and ``<name>.json`` into ``out_dir`` (created); returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = json_safe(report)
    jp = out / f"{name}.json"
    jp.write_text(json.dumps(clean, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    hp = out / f"{name}.html"
    hp.write_text(render_html(clean), encoding="utf-8")
    return hp, jp


# ---------------------------------------------------------------- HTML + SVG

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em;color:#1b1b1b;max-width:1100px}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;border-bottom:2px solid #345;padding-bottom:.2em;
margin-top:1.8em}table{border-collapse:collapse;margin:.5em 0;font-size:.85em}
th,td{border:1px solid #bbb;padding:.2em .45em;text-align:right}th{background:#e8edf2}td.l,th.l{text-align:left}
.ok{color:#17662b;font-weight:600}.drift{color:#b00020;font-weight:600}.warn{color:#8a5a00;font-weight:600}
.unknown,.muted{color:#666}svg{background:#fafafa;border:1px solid #ddd;margin:.3em 0}
@media print{body{margin:1cm}table,svg{page-break-inside:avoid}}
"""
COLORS = ["#1f5fa8", "#c0392b", "#2e8b57", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#b7950b", "#2c3e50",
          "#e84393"]


def _e(x) -> str:
    return html.escape(str(x))


def _f(x, d: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}f}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    t0 = math.ceil(lo / step) * step
    return [t0 + i * step for i in range(int((hi - t0) / step + 1e-9) + 1)]


def svg_lines(series: list[dict], *, title: str, xlabel: str = "row", ylabel: str = "", hlines=(),
              width: int = 900, height: int = 260, ylim: tuple[float, float] | None = None) -> str:
    """A line chart: ``series`` of ``{"label", "x", "y", "dash"?}``; ``hlines`` of ``(label, y)``. Gaps at None."""
    ml, mr, mt, mb = 60, 170, 28, 38
    pw, ph = width - ml - mr, height - mt - mb
    xs = [x for s in series for x, y in zip(s["x"], s["y"], strict=True) if y is not None]
    ys = [y for s in series for y in s["y"] if y is not None] + [v for _, v in hlines if v is not None]
    if not xs:
        return f'<p class="muted">{_e(title)}: no data</p>'
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    y0, y1 = ylim if ylim else (min(ys), max(ys))
    if y1 <= y0:
        y0, y1 = y0 - 1, y1 + 1
    pad = 0.05 * (y1 - y0)
    if not ylim:
        y0, y1 = y0 - pad, y1 + pad

    def X(v):
        return ml + (v - x0) / (x1 - x0) * pw

    def Y(v):
        return mt + (1 - (min(max(v, y0), y1) - y0) / (y1 - y0)) * ph

    parts = [f'<svg width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{ml}" y="18" font-size="13" font-weight="600">{_e(title)}</text>',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="white" stroke="#999"/>']
    for t in _ticks(y0, y1):
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#eee"/>'
                     f'<text x="{ml - 5}" y="{Y(t) + 4:.1f}" font-size="10" text-anchor="end">{t:g}</text>')
    for t in _ticks(x0, x1, 8):
        parts.append(f'<text x="{X(t):.1f}" y="{mt + ph + 14}" font-size="10" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 4}" font-size="11" text-anchor="middle">{_e(xlabel)}</text>')
    if ylabel:
        parts.append(f'<text x="14" y="{mt + ph / 2}" font-size="11" text-anchor="middle" '
                     f'transform="rotate(-90 14 {mt + ph / 2})">{_e(ylabel)}</text>')
    legend = []
    for lab, v in hlines:
        if v is None:
            continue
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#555" '
                     f'stroke-dasharray="6 4"/>')
        legend.append((lab, "#555", "6 4"))
    for i, s in enumerate(series):
        color = s.get("color") or COLORS[i % len(COLORS)]
        dash = s.get("dash", "")
        da = f' stroke-dasharray="{dash}"' if dash else ""
        segs, cur = [], []
        for x, y in zip(s["x"], s["y"], strict=True):
            if y is None:
                if cur:
                    segs.append(cur)
                cur = []
            else:
                cur.append(f"{X(x):.1f},{Y(y):.1f}")
        if cur:
            segs.append(cur)
        for seg in segs:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
            else:
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{da} '
                             f'points="{" ".join(seg)}"/>')
        legend.append((s["label"], color, dash))
    for k, (lab, color, dash) in enumerate(legend):
        ly = mt + 10 + 16 * k
        da = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<line x1="{ml + pw + 10}" x2="{ml + pw + 30}" y1="{ly}" y2="{ly}" stroke="{color}" '
                     f'stroke-width="2"{da}/><text x="{ml + pw + 35}" y="{ly + 4}" font-size="11">{_e(lab)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(edges: list[float], counts: list[int], *, title: str, xlabel: str = "",
                  width: int = 900, height: int = 220) -> str:
    ml, mr, mt, mb = 60, 170, 28, 38
    pw, ph = width - ml - mr, height - mt - mb
    if not counts:
        return f'<p class="muted">{_e(title)}: no data</p>'
    x0, x1, cmax = edges[0], edges[-1], max(max(counts), 1)

    def X(v):
        return ml + (v - x0) / (x1 - x0) * pw

    parts = [f'<svg width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{ml}" y="18" font-size="13" font-weight="600">{_e(title)}</text>',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="white" stroke="#999"/>']
    for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True):
        h = c / cmax * ph
        parts.append(f'<rect x="{X(a):.1f}" y="{mt + ph - h:.1f}" width="{max(X(b) - X(a) - 1, 0.5):.1f}" '
                     f'height="{h:.1f}" fill="#1f5fa8"/>')
    for t in _ticks(x0, x1, 8):
        parts.append(f'<text x="{X(t):.1f}" y="{mt + ph + 14}" font-size="10" text-anchor="middle">{t:g}</text>')
    if x0 < 0 < x1:
        parts.append(f'<line x1="{X(0):.1f}" x2="{X(0):.1f}" y1="{mt}" y2="{mt + ph}" stroke="#c0392b" '
                     f'stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 4}" font-size="11" text-anchor="middle">{_e(xlabel)}</text>'
                 f'<text x="{ml - 5}" y="{mt + 10}" font-size="10" text-anchor="end">{cmax}</text></svg>')
    return "".join(parts)


def _mid(ot: dict) -> list[float]:
    return [(a + b) / 2 for a, b in zip(ot["start"], ot["end"], strict=True)]


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f'<th class="{"l" if i == 0 else ""}">{_e(h)}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i == 0 else ""}">{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def render_html(rep: dict) -> str:
    """One self-contained HTML page (inline CSS and SVG; no scripts, no external references)."""
    m = rep.get("model") or {}
    title = f"Uncertainty report: {m.get('id') or m.get('model_id') or 'model'}"
    nominal = rep.get("nominal_coverage")
    out = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
           f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>"]
    meta = [["created", _e(rep.get("created", ""))], ["rows", _e(rep.get("rows"))],
            ["nominal coverage", _pct(nominal)], ["window (rows per point)", _e(rep.get("window"))]]
    meta += [[_e(k), _e(v)] for k, v in m.items() if not isinstance(v, dict | list)]
    if rep.get("static_half_width") is not None:
        meta.append(["static half-width q", _f(rep["static_half_width"])])
    if rep.get("adaptive"):
        meta.append(["adaptive", _e(", ".join(f"{k}={v}" for k, v in rep["adaptive"].items()))])
    out.append(_table(["model and data", ""], meta))

    metrics = rep.get("metrics") or {}
    if metrics:
        out.append("<h2>Accuracy and coverage</h2>")
        note = (rep.get("training_overlap") or {}).get("note")
        if note:
            out.append(f'<p class="warn">{_e(note)}</p>')
        rows = []
        for mode, v in metrics.items():
            cov = v.get("coverage")
            cls = "" if cov is None or nominal is None else ("ok" if abs(cov - nominal) <= 0.02 else "warn")
            rows.append([_e(mode), _e(v.get("n")), _f(v.get("mae")), _f(v.get("rmse")), _f(v.get("r2")),
                         _f(v.get("spearman")), f'<span class="{cls}">{_pct(cov)}</span>', _f(v.get("mean_width"))])
        out.append(_table(["interval", "n", "MAE", "RMSE", "R²", "Spearman", "coverage", "mean width"], rows))

    ot = rep.get("over_time") or {}
    if any("coverage" in v for v in ot.values()):
        series = [{"label": f"{k} (empirical)", "x": _mid(v), "y": v["coverage"]} for k, v in ot.items()
                  if "coverage" in v]
        out.append("<h2>Coverage over time</h2>")
        out.append(svg_lines(series, title=f"empirical coverage per {rep.get('window')} rows vs nominal",
                             ylabel="coverage", hlines=[("nominal", nominal)], ylim=(0.0, 1.0)))
    if ot:
        out.append("<h2>Interval width over time</h2>")
        series = [{"label": k, "x": _mid(v), "y": v["mean_width"]} for k, v in ot.items()]
        out.append(svg_lines(series, title=f"mean interval width per {rep.get('window')} rows", ylabel="width"))

    res = rep.get("residuals")
    if res and res.get("n"):
        out.append("<h2>Residuals (truth − prediction)</h2>")
        q = res["quantiles"]
        out.append(_table(["n", "mean", "std", "p5", "p25", "median", "p75", "p95"],
                          [[_e(res["n"]), _f(res["mean"]), _f(res["std"]), _f(q["p5"]), _f(q["p25"]),
                            _f(q["p50"]), _f(q["p75"]), _f(q["p95"])]]))
        out.append(svg_histogram(res["histogram"]["edges"], res["histogram"]["counts"],
                                 title="residual histogram (0.5–99.5 % range)", xlabel="residual"))
        w = rep.get("window") or 1
        xs = [i * w + w / 2 for i in range(len(res["mean_per_window"]))]
        out.append(svg_lines([{"label": "mean residual", "x": xs, "y": res["mean_per_window"]}],
                             title=f"mean residual per {w} rows (bias)", ylabel="residual", hlines=[("zero", 0.0)]))

    drift = rep.get("input_drift")
    if drift:
        out.append(f'<h2>Input drift per feature: <span class="{_e(drift["status"])}">{_e(drift["status"])}</span>'
                   "</h2>")
        rows = [[_e(f["feature"]), _f(f["psi"]), _f(f["ks"]), _f(f["ks_p"], 4), _f(f["mean_ref"]),
                 _f(f["mean_cur"]), f'<span class="{_e(f["status"])}">{_e(f["status"])}</span>']
                for f in drift["features"]]
        out.append(_table(["feature", "PSI", "KS D", "KS p", "mean (training)", "mean (here)", "status"], rows))
        ov = drift.get("over_time") or {}
        if ov.get("start"):
            mids = _mid(ov)
            series = [{"label": f, "x": mids, "y": v} for f, v in ov["psi"].items()]
            out.append(svg_lines(series, title=f"PSI per feature per {drift.get('window')} rows", ylabel="PSI",
                                 hlines=[("warn 0.1", 0.1), ("drift 0.25", 0.25)]))
    out.append('<p class="muted">Written by valvoja models report; the same figures are in the JSON file '
               "beside this one.</p></body></html>")
    return "\n".join(out)
