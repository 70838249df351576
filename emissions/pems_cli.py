"""``valvoja emissions pems evaluate``: PEMS NOx/CO models on the gas-turbine data (emissions.pems_model)."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("pems", help="predictive emission monitoring models (gas-turbine data)")
    act = p.add_subparsers(dest="pems_command", required=True, metavar="ACTION")
    e = act.add_parser("evaluate", help="train on some years, evaluate on others: MAE, coverage, cross-check, "
                                        "substitution",
                       description="Train NOx and CO PEMS models (models/: HGB, ONNX export with parity, split "
                                   "conformal) on --train years and evaluate them on --test years, static and "
                                   "streaming (adaptive conformal), with an injected analyser drift and outage.")
    e.add_argument("--data", type=Path, required=True, help="folder with gt_<year>.csv files")
    e.add_argument("--train", nargs="+", required=True, metavar="YEAR")
    e.add_argument("--test", nargs="+", required=True, metavar="YEAR")
    e.add_argument("--estimator", default="hgb", help="a models.estimators name (default hgb)")
    e.add_argument("--alpha", type=float, default=0.1, help="miscoverage: 0.1 gives 90 %% intervals")
    e.add_argument("--save-onnx", type=Path, metavar="DIR", help="write the ONNX models here")
    e.add_argument("--out", type=Path, help="write the results as JSON here")
    e.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from emissions.pems_model import evaluate

    res = evaluate(args.data, args.train, args.test, estimator=args.estimator, alpha=args.alpha,
                   save_dir=args.save_onnx)
    for target, r in res["targets"].items():
        s, st, cc, sub = r["static"], r["streaming"], r["crosscheck"], r["substitution"]
        print(f"{target}: MAE {st['mae']:.3f}  R² {st['r2']:.3f}  | {100 * (1 - args.alpha):.0f} % interval coverage "
              f"static {s['coverage']:.3f} (width {s['mean_width']:.2f}), streaming {st['coverage']:.3f} "
              f"(width {st['mean_width']:.2f})")
        print(f"    cross-check: injected drift flagged={cc['drift_flagged']} after {cc['delay_h']} h, "
              f"{cc['drift_hours_flagged']}/{cc['drift_hours']} drift hours flagged, {cc['false_flag_hours']} of "
              f"{cc['hours']} other hours flagged")
        print(f"    substitution: {sub['outage_hours']} h outage, substituted MAE {sub['substituted_mae']:.3f}, "
              f"{sub['days_with_substitution']} daily averages carry a substituted share "
              f"{sub['substituted_share_of_those_days']}")
        parity = r["card"]["parity"]["max_abs"]
        print(f"    model: ONNX sha256 {r['model_version'][:16]}…, parity max |diff| {parity:.2g}")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))
        print(f"-> {args.out}")
    return 0
