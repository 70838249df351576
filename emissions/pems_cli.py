"""``valvoja emissions pems train | evaluate``: PEMS NOx/CO models through the model lifecycle of ``models/``.

    valvoja emissions pems train    --data DIR [--train 2011 2012] [--registry var/models] [--db URL]
    valvoja emissions pems evaluate --data DIR --train 2011 2012 --test 2013 [--registry DIR] [--out F.json]

``train`` registers candidates ``pems-nox`` / ``pems-co`` (the first version of each becomes champion through
the promotion gate); ``evaluate`` scores the registry's champions on the test years with ``--registry``, else
trains on ``--train`` without registering. Both need models/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edge.errors import ValvojaError
from edge.jsontext import api_json


def _registry_args(p) -> None:
    p.add_argument("--registry", type=Path, metavar="DIR", help="models registry directory (train: default "
                                                                 "var/models)")
    p.add_argument("--db", metavar="URL", default=os.environ.get("VALVOJA_DB_URL") or None,
                   help="postgresql:// URL of the model_registry table (default $VALVOJA_DB_URL; without one the "
                        "index is DIR/index.json)")


def _model_args(p) -> None:
    p.add_argument("--data", type=Path, required=True, help="folder with gt_<year>.csv files")
    p.add_argument("--targets", nargs="+", default=["NOX", "CO"], metavar="COLUMN", help="default NOX CO")
    p.add_argument("--prefix", default="pems-", help="model ids are PREFIX + target in lower case (default pems-)")
    p.add_argument("--estimator", default="hgb", help="a models.estimators name (default hgb)")
    p.add_argument("--alpha", type=float, default=0.1, help="miscoverage: 0.1 gives 90 %% intervals")
    p.add_argument("--calibration-fraction", type=float, default=0.2,
                   help="share of the training rows (in time order) for conformal calibration (default 0.2)")
    p.add_argument("--holdout-fraction", type=float, default=0.2,
                   help="last share of the training rows held out for metrics and the gate (default 0.2)")


def add_parser(sub) -> None:
    p = sub.add_parser("pems", help="predictive emission monitoring models: train + register, evaluate",
                       description="PEMS NOx and CO models (CEN/TS 17198) trained, exported, calibrated, registered "
                                   "and promoted through models/.")
    act = p.add_subparsers(dest="pems_command", required=True, metavar="ACTION")

    t = act.add_parser("train", help="train NOx and CO on the training years and register them as candidates",
                       description="models.train on --train years only (rows in time order: train / calibration / "
                                   "holdout; ONNX export refused unless it passes parity), registered as candidates. "
                                   "A model id without a champion gets its first version promoted through the gate; "
                                   "later versions stay candidates and the gate's comparison is printed (promote "
                                   "with `valvoja models promote`, or --promote always).")
    _model_args(t)
    t.add_argument("--train", nargs="+", default=["2011", "2012"], metavar="YEAR",
                   help="training years (default 2011 2012: the data README's protocol keeps 2013 for evaluation)")
    t.add_argument("--promote", choices=["first", "always", "never"], default="first",
                   help="first: promote only a model's first version (default); always: run the gate; never")
    t.add_argument("--actor", default=os.environ.get("USER", "cli"), help="recorded in model_events")
    _registry_args(t)
    t.set_defaults(func=_guard(cmd_train))

    e = act.add_parser("evaluate", help="evaluate on test years: MAE, coverage, cross-check, substitution",
                       description="Evaluate NOx and CO PEMS models on --test years, static and streaming (adaptive "
                                   "conformal), with an injected analyser drift and outage. With --registry the "
                                   "registry's champions are evaluated; without, models are trained on --train years "
                                   "with models.train and not registered.")
    _model_args(e)
    e.add_argument("--train", nargs="+", default=["2011", "2012"], metavar="YEAR",
                   help="training years (default 2011 2012; with --registry only checked against --test)")
    e.add_argument("--test", nargs="+", required=True, metavar="YEAR")
    e.add_argument("--out", type=Path, help="write the results as JSON here")
    _registry_args(e)
    e.set_defaults(func=_guard(cmd_evaluate))


def _guard(cmd):
    import functools

    @functools.wraps(cmd)
    def run(args) -> int:
        try:
            return cmd(args)
        except (ValvojaError, LookupError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _spec_kw(args) -> dict:
    return {"estimator": args.estimator, "alpha": args.alpha, "calibration_fraction": args.calibration_fraction,
            "holdout_fraction": args.holdout_fraction}


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_train(args) -> int:
    from emissions.pems_model import train_and_register
    from models.registry import Registry

    registry = Registry(args.registry or Path("var/models"), args.db)
    results = train_and_register(args.data, args.train, registry, targets=[t.upper() for t in args.targets],
                                 promote=args.promote, actor=args.actor, prefix=args.prefix, progress=_progress,
                                 **_spec_kw(args))
    for r in results:
        h = r["holdout"]
        print(f"{r['model_id']} v{r['version']}: {r['status']} (sha256 {r['sha256'][:12]}); holdout MAE "
              f"{h.get('mae', float('nan')):.3f}, coverage {h.get('coverage', float('nan')):.3f} of "
              f"{h.get('nominal_coverage', 1 - args.alpha):.0%}")
        if r["comparison"] is not None:
            print("  " + r["comparison"].describe().replace("\n", "\n  "))
        if r["status"] == "candidate":
            print(f"  promote with `valvoja models promote {r['model_id']} {r['version']} --registry "
                  f"{registry.root}`")
    return 0


def cmd_evaluate(args) -> int:
    from emissions.pems_model import evaluate
    from models.registry import Registry

    registry = Registry(args.registry, args.db) if args.registry else None
    res = evaluate(args.data, args.train, args.test, targets=[t.upper() for t in args.targets], registry=registry,
                   prefix=args.prefix, progress=_progress, **_spec_kw(args))
    for target, r in res["targets"].items():
        s, st, cc, sub = r["static"], r["streaming"], r["crosscheck"], r["substitution"]
        nominal = 1 - res["alpha"]
        holdout = (r["card"]["holdout"] or {}).get("mae", float("nan"))
        # The data README's protocol scores MAE, R² and Spearman per target; the holdout MAE (end of the training
        # years) beside the test year's shows the drift between them.
        print(f"{target}: MAE {st['mae']:.3f}  R² {st['r2']:.3f}  Spearman {st['spearman']:.3f}  (holdout MAE "
              f"{holdout:.3f}) | {100 * nominal:.0f} % interval coverage static {s['coverage']:.3f} (width "
              f"{s['mean_width']:.2f}), streaming {st['coverage']:.3f} (width {st['mean_width']:.2f})")
        others = cc["hours"] - cc["drift_hours"]  # the false flags are counted outside the drift: of those hours
        print(f"    cross-check: injected drift flagged={cc['drift_flagged']} after {cc['delay_h']} h, "
              f"{cc['drift_hours_flagged']}/{cc['drift_hours']} drift hours flagged, {cc['false_flag_hours']} of "
              f"{others} other hours flagged ({100 * cc['false_flag_hours'] / max(others, 1):.1f} %)")
        print(f"    substitution: {sub['outage_hours']} h outage, substituted MAE {sub['substituted_mae']:.3f}, "
              f"{sub['days_with_substitution']} daily averages carry a substituted share "
              f"{sub['substituted_share_of_those_days']}")
        version = f"v{r['registry_version']}" if r["registry_version"] is not None else "not registered"
        parity = (r["card"]["parity"] or {}).get("max_abs", float("nan"))
        print(f"    model: {r['model_id']} {version}, ONNX sha256 {r['model_version'][:16]}…, parity max |diff| "
              f"{parity:.2g}")
    if args.out:
        args.out.write_text(api_json(res, indent=True) + "\n")
        print(f"-> {args.out}")
    return 0
