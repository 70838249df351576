"""``valvoja models evaluate`` and ``valvoja models report`` (added to ``valvoja models`` by `models.cli`).

    valvoja models evaluate gas-turbine --data ../shared/data/gas-turbine --train 2011 2012 --test 2013 \\
        [--target NOX CO] [--json FILE] [--report DIR] [--check]
    valvoja models evaluate feedback --db URL [--since ISO] [--model-id ID] [--json FILE]
    valvoja models report MODEL --data FILE.. [--version N] [--out DIR] [--registry DIR] [--db URL]
    valvoja models report MODEL --data FILE.. --onnx model.onnx --card card.json       # without a registry

``evaluate gas-turbine`` follows the data README's protocol (train years -> fit + calibration, test years
only predicted, in time order) and prints static and streaming metrics of the model and a linear baseline
plus the issue's bars; ``--check`` exits 1 when a bar fails. ``evaluate feedback`` is the precision of past
alerts from the maintenance teams' reviews (`maintenance.review.alert_precision`: right / (right + wrong) by
each alert's latest verdict, per alert kind, model and model version). ``report`` runs a registered version (the
champion unless ``--version``) on the data files and writes ``report.html`` + ``report.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from edge.cli import iso_time_arg, iso_until_arg, positive_int_arg
from edge.errors import ValvojaError
from edge.jsontext import api_json
from models.cli import guard

__all__ = ["add_subcommands", "cmd_evaluate_feedback", "cmd_evaluate_gas_turbine", "cmd_report", "model_report",
           "training_overlap"]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_subcommands(models_subparsers) -> None:
    """Add ``evaluate`` and ``report`` to the ``valvoja models`` sub-command parser."""
    from models.catalogue import CATALOGUE

    ev = models_subparsers.add_parser("evaluate", help="evaluate on a data set's own split protocol")
    evs = ev.add_subparsers(dest="evaluate_set", required=True, metavar="DATASET")
    g = evs.add_parser("gas-turbine", help="UCI gas-turbine CO/NOx: train on some years, evaluate on others",
                       description="Fits on the training years (their last --calibration-share rows calibrate the "
                                   "1 - --alpha interval, 90 % by default), exports to ONNX with the parity check, "
                                   "and predicts the test years with onnxruntime: static (never sees the test truth) "
                                   "and streaming (rows in time order, each row's truth revealed after its "
                                   "prediction: adaptive conformal intervals and an online bias correction). The "
                                   "--baseline (linear) runs through the same modes.")
    g.add_argument("--data", type=Path, required=True, metavar="DIR", help="folder with gt_<year>.csv files")
    g.add_argument("--train", nargs="+", required=True, metavar="YEAR", help="training years, in time order")
    g.add_argument("--test", nargs="+", required=True, metavar="YEAR",
                   help="evaluation years, in time order; none of the training years (refused)")
    g.add_argument("--target", nargs="+", default=["NOX", "CO"], help="target column(s) (default NOX CO)")
    regressors = ", ".join(k for k, e in CATALOGUE.items() if e.kind == "regression")
    g.add_argument("--estimator", default="hgb", help=f"regressor: {regressors} (default hgb)")
    g.add_argument("--baseline", default="linear", help="baseline regressor, or 'none' (default linear)")
    g.add_argument("--alpha", type=float, default=0.1, help="miscoverage (default 0.1: 90 %% intervals)")
    g.add_argument("--window", type=positive_int_arg, default=168,
                   help="adaptive conformal window in rows (default 168)")
    g.add_argument("--gamma", type=float, default=0.005, help="ACI step (default 0.005)")
    g.add_argument("--bias-halflife", type=float, default=24.0,
                   help="half-life in rows of the online bias correction; 0 = off (default 24)")
    g.add_argument("--delay", type=int, default=0, help="rows between a prediction and its truth (default 0)")
    g.add_argument("--calibration-share", type=float, default=0.2, help="default 0.2")
    g.add_argument("--json", type=Path, metavar="FILE", help="write the full result as JSON")
    g.add_argument("--report", type=Path, metavar="DIR", help="also write an uncertainty report per target")
    g.add_argument("--check", action="store_true", help="exit 1 when a bar of the issue fails")
    g.set_defaults(func=guard(cmd_evaluate_gas_turbine))
    fb = evs.add_parser("feedback", help="precision of past alerts from the maintenance teams' reviews",
                        description="Per alert kind, model and model version (the one that raised the alert): "
                                    "alerts raised, reviewed right / wrong (the newest "
                                    "review of each alert counts; an alert raised from a prediction also counts "
                                    "that prediction's review), unreviewed, and precision = right / (right + "
                                    "wrong) with its exact (Clopper-Pearson) 95 % confidence interval. Reads the "
                                    "alerts and prediction_feedback tables.")
    fb.add_argument("--db", metavar="URL", default=os.environ.get("VALVOJA_DB_URL") or None,
                    help="postgresql:// URL (default $VALVOJA_DB_URL)")
    fb.add_argument("--since", type=iso_time_arg, metavar="ISO",
                    help="alerts raised at or after this time (ISO 8601; without an offset it is UTC)")
    fb.add_argument("--until", type=iso_until_arg, metavar="ISO",
                    help="alerts raised at or before this time (ISO 8601; without an offset it is UTC; a date "
                         "alone: to the end of that day)")
    fb.add_argument("--model-id", help="only alerts raised from this model's predictions")
    fb.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    fb.set_defaults(func=guard(cmd_evaluate_feedback))

    r = models_subparsers.add_parser("report", help="uncertainty report (HTML with inline SVG + JSON)",
                                     description="Runs a registered version on the data files (rows in time "
                                                 "order) and writes nominal vs empirical coverage over time, "
                                                 "interval width, residuals and input drift per feature.")
    r.add_argument("model_id", metavar="MODEL")
    r.add_argument("--data", type=Path, nargs="+", required=True, metavar="FILE", help="CSV files, in time order")
    r.add_argument("--time-column", help="ISO-8601 time column of the data files")
    r.add_argument("--version", type=int, help="registry version (default: the champion)")
    r.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output directory (default reports/<MODEL>-v<VERSION>)")
    r.add_argument("--registry", type=Path, default=Path("var/models"), metavar="DIR",
                   help="registry directory (default var/models)")
    r.add_argument("--db", metavar="URL", default=os.environ.get("VALVOJA_DB_URL") or None,
                   help="registry database (default $VALVOJA_DB_URL; none: DIR/index.json)")
    r.add_argument("--onnx", type=Path, metavar="FILE", help="an ONNX file instead of the registry (with --card)")
    r.add_argument("--card", type=Path, metavar="FILE", help="its card.json")
    r.add_argument("--reference", type=Path, nargs="+", metavar="FILE",
                   help="training data for input drift (default: the card's drift reference, else its training "
                        "files when they are still there unchanged)")
    r.add_argument("--window", type=positive_int_arg, default=168,
                   help="rows per point of the over-time plots (default 168)")
    r.add_argument("--adaptive-window", type=positive_int_arg, default=168,
                   help="adaptive conformal window (default 168)")
    r.add_argument("--gamma", type=float, default=0.005, help="ACI step (default 0.005)")
    r.add_argument("--bias-halflife", type=float, default=0.0,
                   help="online bias correction of the adaptive mode, half-life in rows (default 0: off)")
    r.set_defaults(func=guard(cmd_report))


# ---------------------------------------------------------------- evaluate feedback

def cmd_evaluate_feedback(args) -> int:
    """Precision of past alerts from their reviews (`maintenance.review.alert_precision`)."""
    if not args.db:
        raise ValueError("no database: give --db URL or set VALVOJA_DB_URL")
    import psycopg

    from edge.db.migrate import SchemaMismatch, check_schema
    from maintenance.review import PRECISION_LEVEL, alert_precision, format_precision, precision_with_interval

    try:
        with psycopg.connect(args.db, autocommit=True, connect_timeout=10) as conn:
            check_schema(conn)  # another version's reviews may not mean what this one counts
            rows = alert_precision(conn, since=args.since, until=args.until, model_id=args.model_id)
    except SchemaMismatch as exc:
        raise ValueError(str(exc)) from None
    except psycopg.OperationalError as exc:
        raise ValueError(f"cannot connect to the database: {str(exc).strip()}") from None
    scope = [f"since {args.since.isoformat()}" if args.since else "",
             f"until {args.until.isoformat()}" if args.until else "",
             f"model {args.model_id}" if args.model_id else ""]
    print("alert precision from reviews" + (" (" + ", ".join(x for x in scope if x) + ")" if any(scope) else ""))
    if not rows:
        print("  no alerts in this range")
    else:
        print(f"  {'kind':<24}{'model':<28}{'version':<14}{'alerts':>7}{'right':>7}{'wrong':>7}{'unreviewed':>11}  "
              f"precision [{PRECISION_LEVEL:.0%} interval]")
    for r in rows:
        # The version's first 12 hex digits, as `valvoja maintenance review list` prints it (--json has it whole).
        print(f"  {r['kind']:<24}{r['model_id'] or '-':<28}{r['model_version'][:12] or '-':<14}{r['alerts']:>7}"
              f"{r['right']:>7}{r['wrong']:>7}{r['unreviewed']:>11}  {format_precision(r, 3)}")
    # The "all" line's figures, each of them in --json (it had right and wrong but not the alerts and unreviewed
    # counts the line prints, so a reader of the file could not tell 2 of 2 reviewed from 2 of 200).
    overall = {k: sum(r[k] for r in rows) for k in ("alerts", "right", "wrong", "unreviewed")}
    overall.update(precision_with_interval(overall["right"], overall["wrong"]))
    if len(rows) > 1:
        print(f"  {'all':<66}{overall['alerts']:>7}{overall['right']:>7}{overall['wrong']:>7}"
              f"{overall['unreviewed']:>11}  {format_precision(overall, 3)}")
    if args.json:
        doc = {"since": args.since, "until": args.until, "model_id": args.model_id, "rows": rows,
               "overall": overall}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(api_json(doc, indent=True) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------- evaluate gas-turbine

def _f(v, d=3) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def cmd_evaluate_gas_turbine(args) -> int:
    from models.evaluate import evaluate_gas_turbine
    from models.report import build_report, write_report

    baseline = None if str(args.baseline).lower() in ("none", "") else args.baseline
    res = evaluate_gas_turbine(args.data, args.train, args.test, args.target, estimator=args.estimator,
                               baseline=baseline, alpha=args.alpha, window=args.window, gamma=args.gamma,
                               bias_halflife=args.bias_halflife or None, delay=args.delay,
                               calibration_share=args.calibration_share, progress=_say,
                               keep=args.report is not None)
    arrays = res.pop("_arrays", None)
    nominal = res["nominal_coverage"]
    print(f"gas turbine: train {' '.join(res['train_years'])} ({res['train_rows']} rows), test "
          f"{' '.join(res['test_years'])} ({res['test_rows']} rows); {nominal:.0%} intervals")
    print(f"{'target':<7}{'model':<9}{'mode':<11}{'MAE':>8}{'RMSE':>8}{'R2':>8}{'Spearman':>9}{'coverage':>9}"
          f"{'width':>8}")
    ok = True
    for target, t in res["targets"].items():
        for name, m in t["models"].items():
            for mode in ("static", "streaming"):
                v = m[mode]
                print(f"{target:<7}{name:<9}{mode:<11}{_f(v['mae']):>8}{_f(v['rmse']):>8}{_f(v['r2']):>8}"
                      f"{_f(v['spearman']):>9}{_f(v['coverage']):>9}{_f(v['mean_width'], 2):>8}")
        b = t["bars"]
        cov_ok = b["streaming_coverage_within_2_points"]
        line = f"  {target}: streaming coverage {b['streaming_coverage']:.3f} ({'ok' if cov_ok else 'FAIL'}: "
        line += f"{nominal - 0.02:.2f}..{nominal + 0.02:.2f})"
        ok &= cov_ok
        if baseline:
            red = b[f"streaming_mae_reduction_vs_{baseline}"]
            mae_ok = b["streaming_mae_30pct_below_baseline"]
            line += (f"; streaming MAE {abs(red):.1%} {'below' if red >= 0 else 'above'} {baseline}'s "
                     f"({'meets' if mae_ok else 'misses'} the 30 % bar")
            line += ", which the issue sets for NOx)" if target != "NOX" else ")"
            if target == "NOX":
                ok &= mae_ok
        print(line)
    drifted = [f"{f['feature']} (PSI {f['psi']:.2f}, KS {f['ks']:.2f}: {f['status']})"
               for f in res["input_drift"]["features"] if f["status"] != "ok"]
    print("input drift of the test years vs training: " + (", ".join(drifted) or "none"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(api_json(res, indent=True) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if args.report and arrays:
        from models.drift import DriftMonitor

        mon = DriftMonitor(arrays["train"], arrays["features"])
        Xt = arrays["test"].matrix(arrays["features"])
        for target in res["targets"]:
            a = arrays["by_model"][(target, args.estimator)]
            f, st = a["fit"], a["stream"]
            rep = build_report(st.raw, y_true=a["y"], X=Xt, features=arrays["features"], conformal=f.conformal,
                               static_interval=a["static_interval"], streamed=st, drift=mon,
                               model={"id": f"gas-turbine {target}", "estimator": f.estimator, "target": target,
                                      "sha256": f.version, "train_years": " ".join(res["train_years"]),
                                      "test_years": " ".join(res["test_years"])})
            html_path, _ = write_report(rep, args.report, name=f"gas-turbine-{target.lower()}")
            print(f"wrote {html_path} (+ .json)")
    return 0 if (ok or not args.check) else 1


# ---------------------------------------------------------------- report MODEL

def _load_model(args):
    """(OnnxModel, info) from --onnx/--card or from the registry."""
    from models.runtime import OnnxModel

    if args.onnx or args.card:
        if not (args.onnx and args.card):
            raise ValueError("--onnx and --card go together")
        try:
            card = json.loads(args.card.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:  # "Expecting value: line 2 column 1" alone does not say which file
            raise ValueError(f"--card {args.card}: not a JSON model card ({exc})") from None
        return OnnxModel(args.onnx.read_bytes(), card, source=f"--card {args.card}"), {"source": str(args.onnx)}
    from models.cli import existing_registry

    reg = existing_registry(args)
    mv = reg.get(args.model_id, args.version) if args.version is not None else reg.champion(args.model_id)
    if mv is None:
        have = ", ".join(f"v{v.version} {v.status}" for v in reg.list(args.model_id)) or "no versions"
        raise LookupError(f"model {args.model_id!r} has no champion ({have}); give --version")
    return mv.load(), {"version": mv.version, "status": mv.status, "source": str(mv.path)}


def _drift_reference(card: dict, features: list[str], reference: list[Path] | None, time_column: str | None):
    """A DriftMonitor of the training data, or (None, why not)."""
    from models.data import FeatureTable, read_csv, read_csvs
    from models.drift import DriftMonitor

    if reference:
        table = read_csvs(reference, time_column=time_column)
        return DriftMonitor(table, features), "--reference files"
    if card.get("drift_reference"):
        return DriftMonitor.from_dict(card["drift_reference"]), "model card"
    td = card.get("training_data") or {}
    sources = td.get("sources") or []
    train_rows = ((td.get("split") or {}).get("train") or {}).get("rows")
    if not sources or not train_rows or any("path" not in s for s in sources):
        return None, "the card has no drift reference and no training files; give --reference"
    tables = []
    for s in sources:
        p = Path(s["path"])
        if not p.is_file():
            return None, f"training file {p} is gone; give --reference"
        try:
            t = read_csv(p, time_column=time_column)
        except ValvojaError as exc:
            return None, f"training file {p}: {exc}; give --reference"
        if s.get("sha256") and t.sources and t.sources[0]["sha256"] != s["sha256"]:
            return None, f"training file {p} changed since training (sha256); give --reference"
        tables.append(t)
    table = FeatureTable.concat(tables)
    if table.times is not None:
        import numpy as np

        order = np.argsort(table.times, kind="stable")
        table = FeatureTable({k: v[order] for k, v in table.columns.items()}, table.times[order])
    return DriftMonitor(table.rows(0, int(train_rows)), features), "training rows of the card's data files"


def training_overlap(card: dict, table) -> dict:
    """What of ``table`` (a `models.data.FeatureTable`) the model of ``card`` learnt from: the rows within the span
    it was fitted on and within the span it was calibrated on (by time; None when the card or the table has no
    times), and the data files that are one of its training files (by sha256). A report on such rows states errors
    and coverage the model's fit flatters (MAE 0.30 on its training file against 0.54 on its holdout), so it says
    so (``note``), with the card's holdout figures beside."""
    import numpy as np

    td = card.get("training_data") or {}
    split = td.get("split") or {}
    out: dict = {"fitted_rows": None, "calibration_rows": None, "training_files": [], "note": ""}
    spans = {}
    for part, key in (("train", "fitted_rows"), ("calibration", "calibration_rows")):
        span = (split.get(part) or {}).get("span") or {}
        if table.times is not None and span.get("start") and span.get("end"):
            a, b = np.datetime64(span["start"], "us"), np.datetime64(span["end"], "us")
            out[key] = int(np.count_nonzero((table.times >= a) & (table.times <= b)))
            spans[part] = f"{span['start']} .. {span['end']}"
    trained = {s.get("sha256") for s in td.get("sources") or [] if s.get("sha256")}
    out["training_files"] = [s["path"] for s in table.sources if s.get("sha256") in trained and "path" in s]
    said = []
    if out["fitted_rows"]:
        said.append(f"{out['fitted_rows']} of {len(table)} rows lie within the span the model was fitted on "
                    f"({spans['train']})")
    if out["calibration_rows"]:
        said.append(f"{out['calibration_rows']} within the span its intervals were calibrated on "
                    f"({spans['calibration']})")
    said += [f"{f} is a file the model was trained from" for f in out["training_files"]]
    if said:
        hold = ((card.get("metrics") or {}).get("holdout") or {})
        honest = ", ".join(f"{k} {hold[k]:.4g}" for k in ("mae", "coverage") if isinstance(hold.get(k), float))
        out["note"] = ("; ".join(said) + ": errors and coverage on those rows are better than on new data"
                       + (f" (the card's held-out rows: {honest})" if honest else ""))
    return out


def model_report(model, table, *, model_id: str | None = None, info: dict | None = None, data: str = "",
                 reference: list[Path] | None = None, time_column: str | None = None, window: int = 168,
                 adaptive_window: int = 168, gamma: float = 0.005, bias_halflife: float | None = None,
                 say=_say) -> dict:
    """The uncertainty report (`models.report.build_report`) of a regressor (`models.runtime.OnnxModel`) on the
    rows of ``table`` (a `models.data.FeatureTable` in time order): its static interval as served, the adaptive
    one, and input drift against the card's drift reference (else ``reference`` files, else the card's training
    files). ``valvoja models report`` and the console's report page both use it."""
    from models.report import build_report

    card = model.card
    model_id = model_id or model.model_id
    if model.kind != "regression":
        raise ValueError(f"{model_id}: the uncertainty report covers regressors; this is a {model.kind} model")
    import numpy as np

    from models.data import FeatureTable

    features = model.schema.names
    say(f"{model_id}: {len(table)} rows, {len(features)} features")
    # Months of plant data have gaps (a sensor out, an empty CSV cell): one row with a missing input failed the whole
    # report. Those rows are left out and counted; the model is never asked about them in service either.
    ok = np.isfinite(table.matrix(features)).all(axis=1)
    if not ok.all():
        if not ok.any():
            raise ValueError(f"{model_id}: every one of the {len(table)} rows has a missing or non-finite input")
        say(f"{model_id}: {int((~ok).sum())} of {len(table)} rows left out: an input is missing or not finite")
        table = FeatureTable({k: v[ok] for k, v in table.columns.items()},
                             None if table.times is None else table.times[ok], sources=table.sources)
    overlap = training_overlap(card, table)  # said by the caller (valvoja models report prints it once)
    out = model.predict({n: table.columns[n] for n in features})
    target = card.get("target")
    y = table.column(target) if target and target in table.columns else None
    if y is None:
        say(f"{model_id}: no {target!r} column in the data: no coverage or residuals, only widths and drift")
    cal = card.get("calibration") or {}
    scores = cal.get("scores") if cal.get("score", "absolute") == "absolute" and cal.get("method") != "cqr" else None
    mon, why = _drift_reference(card, features, reference, time_column)
    if mon is None:
        say(f"{model_id}: input drift left out: {why}")
    X = table.matrix(features)
    model_info = {"id": model.model_id or model_id, **{k: v for k, v in (info or {}).items() if v is not None},
                  "sha256": model.sha256, "target": target, "estimator": card.get("estimator"),
                  "data": data, "drift_reference": why if mon else None}
    return build_report(out.value, y_true=y, X=X if mon else None, features=features, static_interval=out.interval,
                        conformal=cal if cal.get("method") == "split" else None, calibration_scores=scores,
                        alpha=model.alpha, drift=mon, model=model_info, window=window,
                        adaptive={"window": adaptive_window, "gamma": gamma}, bias_halflife=bias_halflife or None,
                        extra={"training_overlap": overlap})


def cmd_report(args) -> int:
    import numpy as np

    from models.data import FeatureTable, read_csvs
    from models.report import write_report

    model, info = _load_model(args)
    if model.kind != "regression":
        raise ValueError(f"{args.model_id}: the uncertainty report covers regressors; this is a {model.kind} model")
    table = read_csvs(args.data, time_column=args.time_column)
    if table.times is not None:
        order = np.argsort(table.times, kind="stable")
        table = FeatureTable({k: v[order] for k, v in table.columns.items()}, table.times[order],
                             sources=table.sources)
    rep = model_report(model, table, model_id=args.model_id, info=info, data=" ".join(str(p) for p in args.data),
                       reference=args.reference, time_column=args.time_column, window=args.window,
                       adaptive_window=args.adaptive_window, gamma=args.gamma, bias_halflife=args.bias_halflife)
    out_dir = args.out or Path("reports") / f"{args.model_id}-v{info.get('version', 'file')}"
    html_path, json_path = write_report(rep, out_dir)
    for mode, m in rep["metrics"].items():
        cov = m.get("coverage")
        print(f"{args.model_id} {mode}: MAE {m['mae']:.4g}, R2 {m['r2']:.3f}"
              + (f", coverage {cov:.3f} of nominal {rep['nominal_coverage']:.2f}, width {m['mean_width']:.4g}"
                 if cov is not None else ""))
    if (rep.get("training_overlap") or {}).get("note"):
        print(f"{args.model_id}: NOTE {rep['training_overlap']['note']}")
    if rep.get("input_drift"):
        d = rep["input_drift"]
        print(f"input drift: {d['status']} (" + ", ".join(f"{f['feature']} {f['status']}" for f in d["features"])
              + ")")
    print(f"wrote {html_path} and {json_path}")
    return 0
