"""``valvoja maintenance``: evaluations on benchmark files, and the review of predictions and alerts.

    valvoja maintenance evaluate skab --data ../shared/data/skab --files valve1/0.csv valve1/1.csv ...
    valvoja maintenance evaluate cmapss --data ../shared/data/cmapss --subset FD001 [--json out.json]
    valvoja maintenance review list --asset P-101 [--tz ZONE] [--db URL]
    valvoja maintenance review mark --alert ID --verdict wrong --comment "valve test" --by anna
    valvoja maintenance review precision [--since 2026-01-01] [--until 2026-06-30]
    valvoja maintenance train-anomaly -c SITE.toml --asset P-101 --from 2026-11-02T06:00:00+02:00 [--to ...]
    valvoja maintenance window add|list|end|cancel ...   (maintenance/windows_cli.py)
    valvoja maintenance trace ALERT_ID [--tz ZONE | --utc] [--json]   (maintenance/trace_cli.py)

Until the lead's ``valvoja`` exists everywhere, ``python -m maintenance.cli ARGS`` does the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edge.cli import aware_time_arg, iso_time_arg, iso_until_arg, positive_arg, positive_int_arg
from edge.jsontext import api_json


def add_parser(subparsers) -> None:
    """Register ``maintenance`` and its actions on the ``valvoja`` sub-command parser."""
    p = subparsers.add_parser("maintenance",
                              help="condition monitoring: evaluations, reviews, maintenance windows, alert traces",
                              description="Evaluate the anomaly detector (SKAB) and the RUL model (C-MAPSS) on "
                                          "benchmark files; list, review and score predictions and alerts; train "
                                          "an asset's live anomaly detector again; plan maintenance windows; trace "
                                          "an alert to its tags, calibrations, model version and input window.")
    sub = p.add_subparsers(dest="maintenance_command", required=True, metavar="ACTION")

    ev = sub.add_parser("evaluate", help="train and evaluate on benchmark files, print the metrics")
    evs = ev.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    s = evs.add_parser("skab", help="anomaly detection on SKAB files (F1, FAR, MAR)")
    s.add_argument("--data", type=Path, required=True, help="SKAB data folder (the files are relative to it)")
    s.add_argument("--files", nargs="+", required=True, help="labelled SKAB csv files, e.g. valve1/0.csv")
    s.add_argument("--folds", type=_groups_arg, default=None,
                   help="leave-files-out groups for choosing hyper-parameters, at least 2 (default: one per file, "
                        "leave-one-file-out)")
    s.add_argument("--max-far", type=_percent_arg, default=None, help="only choose configurations with FAR <= this %% "
                                                                       "(0-100) on the training files")
    s.add_argument("--json", type=Path, help="also write the results here, with the alarm of every scored row per file")
    s.set_defaults(func=cmd_skab)
    c = evs.add_parser("cmapss", help="remaining useful life on a C-MAPSS subset (RMSE, PHM08, coverage)")
    c.add_argument("--data", type=Path, required=True, help="folder with train_/test_/RUL_FD00x.txt")
    c.add_argument("--subset", required=True, help="FD001, FD002, ...")
    c.add_argument("--folds", type=_groups_arg, default=5,
                   help="grouped CV folds over training engines (2 to the number of engines)")
    c.add_argument("--truncations", type=positive_int_arg, default=5, help="random truncations per validation engine")
    c.add_argument("--coverage", type=_fraction_arg, default=0.9, help="nominal coverage of the intervals (0-1)")
    c.add_argument("--no-select", action="store_true",
                   help="skip model selection: the first feature candidate, and cap 125 unless --caps gives caps to "
                        "choose from")
    c.add_argument("--caps", type=positive_arg, nargs="+", help="caps of the training target to choose from by CV "
                                                         "(default 125 140 160 180 200; one value: no choice)")
    c.add_argument("--max-iter", type=positive_int_arg, default=300, help="boosting iterations")
    c.add_argument("--export", type=Path, help="export the fitted model to ONNX with its card in this folder")
    c.add_argument("--register", type=Path, metavar="REGISTRY",
                   help="register the fitted model as a candidate in this model registry directory (models/)")
    c.add_argument("--registry-db", metavar="URL", help="the registry's database (default: REGISTRY/index.json)")
    c.add_argument("--model-id", help="model id for --export/--register (default rul-cmapss-fd00x)")
    c.add_argument("--json", type=Path, help="also write the metrics here")
    c.set_defaults(func=cmd_cmapss)

    ta = sub.add_parser("train-anomaly", help="train an asset's live anomaly detector again on a healthy period",
                        description="Fit the asset's anomaly detector on its stored readings from --from (a period "
                                    "the team calls healthy: after an overhaul, or when monitoring started on a "
                                    "machine that was not), as the gateway would have from there, and put it in "
                                    "the gateway's state folder. A running gateway scores with it from its next "
                                    "readings (log event anomaly_model_replaced); a stopped one from its start.")
    ta.add_argument("-c", "--config", type=Path, required=True, help="the gateway's site configuration")
    ta.add_argument("--asset", required=True, help="an asset with [maintenance.assets.anomaly]")
    ta.add_argument("--from", dest="start", type=aware_time_arg, required=True,
                    help="start of the healthy period (ISO 8601 with a time zone, e.g. 2026-11-02T06:00:00+02:00)")
    ta.add_argument("--to", dest="end", type=aware_time_arg, help="end of the healthy period (default: as long as the "
                                                          "asset's train_samples need)")
    ta.add_argument("--db", metavar="URL", help="postgresql:// URL instead of the configuration's [database], whose "
                                                "password this shell may not read (systemd credentials); the password "
                                                "from libpq's PGPASSWORD or ~/.pgpass")
    ta.set_defaults(func=cmd_train_anomaly)

    rv = sub.add_parser("review", help="list, mark and score predictions and alerts")
    rvs = rv.add_subparsers(dest="review_command", required=True, metavar="ACTION")
    ls = rvs.add_parser("list", help="an asset's predictions and alerts with their uncertainty and reviews")
    ls.add_argument("--asset", required=True)
    ls.add_argument("--since", type=iso_time_arg, metavar="ISO",
                    help="only these since this time (ISO 8601, e.g. 2026-11-01T06:00+02:00; without an offset "
                         "it is UTC)")
    ls.add_argument("--limit", type=int, default=20, help="at most this many of each (default 20)")
    ls.add_argument("--tz", type=_zone_arg, metavar="ZONE",
                    help="print times in this IANA zone, e.g. Europe/Helsinki (default UTC); each with its offset")
    _db_arg(ls)
    ls.set_defaults(func=cmd_review_list)
    mk = rvs.add_parser("mark", help="mark a prediction or an alert right or wrong")
    target = mk.add_mutually_exclusive_group(required=True)
    target.add_argument("--prediction", type=int, help="prediction id")
    target.add_argument("--alert", help="alert id")
    mk.add_argument("--verdict", choices=["right", "wrong"], required=True)
    mk.add_argument("--comment", default="", help="why (at most 2000 characters, stored as given)")
    mk.add_argument("--by", required=True, help="who reviews")
    _db_arg(mk)
    mk.set_defaults(func=cmd_review_mark)
    pr = rvs.add_parser("precision", help="precision of past alerts from their reviews, with its 95 %% interval")
    pr.add_argument("--since", type=iso_time_arg, metavar="ISO",
                    help="alerts raised since this time (ISO 8601; without an offset it is UTC; default: all)")
    pr.add_argument("--until", type=iso_until_arg, metavar="ISO",
                    help="alerts raised at or before this time (ISO 8601; without an offset it is UTC; a date "
                         "alone: to the end of that day), as `valvoja models evaluate feedback --until`")
    pr.add_argument("--model-id", help="only alerts raised from this model's predictions")
    _db_arg(pr)
    pr.set_defaults(func=cmd_review_precision)

    from maintenance.windows_cli import add_parser as add_window_parser

    add_window_parser(sub, _db_arg)

    from maintenance.trace_cli import add_parser as add_trace_parser

    add_trace_parser(sub, _db_arg)


def _groups_arg(text: str) -> int:
    """An argparse ``type``: a number of cross-validation groups, at least 2 (one group leaves nothing to choose on:
    it was a traceback)."""
    try:
        value = positive_int_arg(text)
    except argparse.ArgumentTypeError:
        value = 0  # its message would say "at least 1"
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of at least 2 (groups held out in turn)")
    return value


def _number_in(text: str, low: float, high: float, inclusive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    inside = low <= value <= high if inclusive else low < value < high
    if not inside:
        ends = "[]" if inclusive else "()"
        raise argparse.ArgumentTypeError(f"{text!r}: must be in {ends[0]}{low:g}, {high:g}{ends[1]}")
    return value


def _percent_arg(text: str) -> float:
    """An argparse ``type``: a percentage, 0 to 100."""
    return _number_in(text, 0.0, 100.0, inclusive=True)


def _fraction_arg(text: str) -> float:
    """An argparse ``type``: a coverage strictly between 0 and 1 (0.9 is 90 %)."""
    return _number_in(text, 0.0, 1.0, inclusive=False)


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", default=os.environ.get("VALVOJA_DB_URL"),
                   help="postgresql:// URL (default: $VALVOJA_DB_URL)")


def cmd_train_anomaly(args) -> int:
    import psycopg

    from edge import settings
    from edge.analytics import maintenance_config
    from edge.errors import ConfigError
    from edge.gateway import database_conninfo, describe_conninfo
    from maintenance.retrain import train_asset

    try:
        cfg = settings.load(args.config)
        # --db first: the site file's password may be a systemd credential only the service's processes can read.
        conninfo = args.db or database_conninfo(cfg)
        mcfg = maintenance_config(cfg)
        if conninfo is None or mcfg is None:
            raise ConfigError(f"{args.config}: needs [database] and [maintenance] with the asset")
        r = train_asset(mcfg, args.asset, conninfo, cfg.site.state_dir, args.start, args.end)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"cannot read the stored readings ({describe_conninfo(conninfo)}): {exc}", file=sys.stderr)
        return 1
    print(f"{r.asset}: anomaly model {r.version[:12]} trained on {r.samples} samples from readings of "
          f"{r.first:%Y-%m-%d %H:%M:%S%z} to {r.last:%Y-%m-%d %H:%M:%S%z}; written to {r.path}")
    print("a running gateway scores with it from its next readings (log event anomaly_model_replaced)")
    return 0


def _dump(obj, path: Path | None) -> None:
    if path is not None:
        path.write_text(api_json(obj, indent=True) + "\n", encoding="utf-8")
        print(f"wrote {path}")


def cmd_skab(args) -> int:
    from maintenance import skab, skab_eval

    try:
        files = [skab.load(args.data / f) for f in args.files]
        result = skab_eval.evaluate(files, folds=args.folds, max_far=args.max_far)
    except ValueError as exc:  # a file not in SKAB's format, unlabelled, given twice; no configuration within --max-far
        print(f"valvoja maintenance evaluate skab: {exc}", file=sys.stderr)
        return 1
    for f in result["folds"]:
        cfg = f["config"]
        print(f"held out {', '.join(f['test_files'])}: chose window={cfg['window']} alpha={cfg['alpha']} "
              f"score={cfg['score']} max_drift={cfg['max_drift']} confirm={cfg['confirm']} hold={cfg['hold']} "
              f"signals={len(f['signals'])} "
              f"(train F1 {f['train_f1']:.3f}) -> test F1 {f['test']['f1']:.3f}, FAR {f['test']['far']:.1f} %")
    s = result["pooled"]
    print(f"SKAB outlier detection, {len(files)} files, nested leave-files-out ({len(result['folds'])} groups), "
          f"pooled over test rows: F1 {s['f1']:.3f}  FAR {s['far']:.2f} %  MAR {s['mar']:.2f} %  "
          f"(TP {s['tp']} FP {s['fp']} FN {s['fn']} TN {s['tn']})")
    print(f"  FAR on normal rows before the first anomaly {s['far_before_first_anomaly']:.2f} %, "
          f"after an anomaly {s['far_after_an_anomaly']:.2f} %")
    if result["infeasible"]:
        print(f"  {result['infeasible']} grid configurations skipped in every selection: alpha below the p-value "
              f"resolution of their window's calibration scores (they could never flag)")
    print("leaderboard for scale (full benchmark): Conv-AE F1 0.78 / FAR 13.55 % / MAR 28.02 %")
    _dump(result, args.json)
    return 0


def cmd_cmapss(args) -> int:
    from maintenance import rul_eval

    try:
        r = rul_eval.evaluate(args.data, args.subset, folds=args.folds, truncations=args.truncations,
                              coverage=args.coverage, select=not args.no_select, max_iter=args.max_iter,
                              caps=tuple(args.caps) if args.caps else None,
                              progress=lambda m: print(m, flush=True))
    except ValueError as exc:  # a file not in C-MAPSS's format, more folds than engines, a RUL file of another count
        print(f"valvoja maintenance evaluate cmapss: {exc}", file=sys.stderr)
        return 1
    m = r["metrics"]
    print(f"{m['subset']}: {m['engines']} test engines, one prediction at the last cycle each")
    print(f"  vs RUL file as given:      RMSE {m['rmse']:.2f}  PHM08 {m['phm08']:.1f}  "
          f"coverage of {m['nominal_coverage']:.0%} intervals {m['coverage']:.1%}")
    print(f"  vs RUL capped at {m['config']['cap']:.0f}:     RMSE {m['rmse_capped']:.2f}  "
          f"PHM08 {m['phm08_capped']:.1f}  "
          f"coverage {m['coverage_capped']:.1%}")
    if m["config"]["cap"] != 125:
        print(f"  vs RUL capped at 125:     RMSE {m['rmse_capped_125']:.2f}")
    print(f"  selected by CV on training engines: cap {m['config']['cap']:g}, spans {m['config']['spans']}, "
          f"{len(m['config']['sensors'] or []) or 'all varying'} sensors (CV RMSE {m['selection']['cv_rmse']:.2f} "
          f"against the true RUL at random truncations); {m['seconds']:.0f} s in all")
    print(f"  intervals: {m['open_ended']:.0%} open-ended (\"at least lower\": the model saw no wear), mean width "
          f"{m['mean_width_capped']:.1f} cycles with the upper end taken at the cap")
    if args.export:
        from maintenance.rul_export import export

        m["export"] = export(r, args.export, args.model_id)
        print(f"  exported to {m['export']['path']} (sha256 {m['export']['sha256'][:12]}...); "
              f"{m['export']['parity']}")
    if args.register:
        from maintenance.rul_export import register

        m["registry"] = register(r, args.register, dsn=args.registry_db, model_id=args.model_id)
        print(f"  registered {m['registry']['model_id']} v{m['registry']['version']} as {m['registry']['status']} "
              f"in {args.register} (promote with `valvoja models promote`)")
    _dump(m, args.json)
    return 0


def _connect(args):
    """The review commands' connection, to a schema this program was built for (`check_schema`): a newer
    version's may have changed what a verdict row means, one behind lacks the tables the commands name."""
    import psycopg

    from edge.db.migrate import check_schema

    if not args.db:
        print("no database: give --db URL or set VALVOJA_DB_URL", file=sys.stderr)
        raise SystemExit(2)
    conn = psycopg.connect(args.db, autocommit=True)
    try:
        check_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _zone_arg(text: str):
    from maintenance.trace_cli import _zone_arg as zone_arg

    return zone_arg(text)


def cmd_review_list(args) -> int:
    from datetime import UTC

    from maintenance import review
    from maintenance.trace_cli import _t

    with _connect(args) as conn:
        alerts = review.list_alerts(conn, args.asset, since=args.since, limit=args.limit)
        preds = review.list_predictions(conn, args.asset, since=args.since, limit=args.limit)
    # The database session's zone (the server's, or PGTZ) gave the times, printed without it: an alert raised at
    # 08:00 UTC read "10:00:00" under Europe/Helsinki, as if it were UTC or plant time, whichever the reader assumed.
    tz = args.tz or UTC
    print(f"times in {getattr(tz, 'key', 'UTC')}, with their UTC offsets")
    print(f"alerts of {args.asset} ({len(alerts)}):")
    for a in alerts:
        ev = a["uncertainty"]
        # As a prediction's: a RUL alert's open-ended interval printed as "lower=80, coverage=0.9", its missing
        # upper end not said to be "or more".
        u = _uncertainty({"p_value": ev.get("p_value"), "lower": ev.get("lower"), "upper": ev.get("upper"),
                          "coverage": ev.get("coverage"), "details": {"alpha": ev.get("alpha")}})
        if ev.get("model_version"):
            u += f" model_version={ev['model_version']}"
        print(f"  {_t(a['raised_at'].astimezone(tz))} {a['id']} {a['severity']:8} {a['state']:12} {a['kind']}: "
              f"{a['message']} [{u}] review={a['verdict'] or '-'}")
    print(f"predictions of {args.asset} ({len(preds)}):")
    for p in preds:
        print(f"  {_t(p['time'].astimezone(tz))} #{p['id']} {p['model_id']}@{p['model_version'][:12]} "
              f"value={p['value']:.4g} {_uncertainty(p)} review={p['verdict'] or '-'}")
    return 0


def _uncertainty(p: dict) -> str:
    """A prediction's uncertainty as stored: p-value with the alpha it is judged against, or interval with its
    nominal coverage. A NULL bound is an open end (a RUL at the model's cap is "``lower`` cycles or more")."""
    if p["p_value"] is not None:
        alpha = (p.get("details") or {}).get("alpha")
        return f"p={p['p_value']:.4g}" + (f" (alpha {alpha:g})" if alpha is not None else "")
    if p["lower"] is None and p["upper"] is None:
        return "-"
    lo = f"[{p['lower']:.1f}" if p["lower"] is not None else "(-inf"
    hi = f"{p['upper']:.1f}]" if p["upper"] is not None else "inf)"
    level = f" @{p['coverage']:.0%}" if p["coverage"] is not None else " (coverage not stated)"
    return f"{lo}, {hi}{level}"


def cmd_review_mark(args) -> int:
    from maintenance import review

    try:
        with _connect(args) as conn:
            if args.alert:
                fid = review.review_alert(conn, args.alert, args.verdict, args.comment, args.by)
            else:
                fid = review.review_prediction(conn, args.prediction, args.verdict, args.comment, args.by)
    except (LookupError, ValueError) as exc:  # an id that is not there, a comment too long: one line, not a traceback
        print(f"valvoja maintenance review mark: {exc}", file=sys.stderr)
        return 1
    print(f"feedback #{fid} stored")
    return 0


def cmd_review_precision(args) -> int:
    from maintenance import review

    with _connect(args) as conn:
        rows = review.alert_precision(conn, since=args.since, until=args.until, model_id=args.model_id)
    for r in rows:
        print(f"{r['kind']:30} {r['model_id'] or '-':30} {r['model_version'][:12] or '-':12} "
              f"alerts {r['alerts']:5}  right {r['right']:4}  "
              f"wrong {r['wrong']:4}  unreviewed {r['unreviewed']:4}  precision {review.format_precision(r)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m maintenance.cli ARGS`` is ``valvoja maintenance ARGS``."""
    from edge.cli import main as valvoja

    return valvoja(["maintenance", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
