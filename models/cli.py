"""``valvoja models``: train, list, promote (the gate), rollback; evaluate and report come from
`models.report_cli` when it is installed.

    valvoja models train --data gt_2011.csv gt_2012.csv --target NOX --model-id gt-nox [--estimator hgb]
    valvoja models list [MODEL]
    valvoja models promote gt-nox 2 [--holdout gt_2013.csv]
    valvoja models rollback gt-nox [--to 1]

``python -m models.cli ARGS`` does the same. Exit codes: 0 done, 1 refused by the gate / parity / bad input,
2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path

from edge.errors import ValvojaError
from edge.jsontext import api_json


def _registry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", type=Path, default=Path("var/models"), metavar="DIR",
                   help="registry directory with <model>/<version>/model.onnx + card.json (default var/models)")
    p.add_argument("--db", metavar="URL", default=os.environ.get("VALVOJA_DB_URL") or None,
                   help="postgresql:// URL of the model_registry table (default $VALVOJA_DB_URL; without one the "
                        "index is DIR/index.json)")


def add_parser(subparsers) -> None:
    """Register ``models`` and its actions on the ``valvoja`` sub-command parser."""
    from models.catalogue import CATALOGUE

    has_reports = importlib.util.find_spec("models.report_cli") is not None
    actions = "train, evaluate, list, promote, rollback, report" if has_reports else "train, list, promote, rollback"
    p = subparsers.add_parser("models", help=f"model lifecycle: {actions}",
                              description="Train scikit-learn pipelines with conformal uncertainty, export them to "
                                          "ONNX (refused when parity fails), register them as candidates, promote "
                                          "through the gate (match or beat the champion on the same held-out rows) "
                                          "and roll back.")
    sub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    t = sub.add_parser("train", help="train, calibrate, export and register a candidate version",
                       description="Rows are split in time order into train / calibration / holdout. The ONNX export "
                                   "must reproduce scikit-learn on the holdout rows or nothing is registered.")
    t.add_argument("--data", type=Path, nargs="+", required=True, metavar="FILE",
                   help="CSV files (',' or ';'), concatenated in the order given (give them in time order)")
    t.add_argument("--model-id", required=True, help="model id, e.g. gt-nox")
    t.add_argument("--target", help="column to predict (regressors)")
    t.add_argument("--features", help="comma-separated input columns in model order (default: every numeric "
                                      "column except target, label and time)")
    # --estimator as `models evaluate gas-turbine` and `emissions pems` name it (and the card); --kind still works
    t.add_argument("--estimator", "--kind", dest="kind", default="hgb", choices=sorted(CATALOGUE),
                   metavar="ESTIMATOR",
                   help="estimator: " + "; ".join(f"{k}: {v.description}" for k, v in CATALOGUE.items())
                        + " (default hgb; --kind is the same option)")
    t.add_argument("--label", help="anomaly scorers: 0/1 column, 1 = anomalous (left out of fit and calibration)")
    t.add_argument("--time-column", help="ISO-8601 time column (rows are sorted by it)")
    t.add_argument("--alpha", type=float, default=0.1, help="miscoverage of the intervals / p-value flag level "
                                                            "(default 0.1: 90 %% intervals)")
    t.add_argument("--interval", choices=["auto", "split", "cqr"], default="auto",
                   help="regressors: split conformal or CQR (cqr needs --estimator hgb-cqr; auto picks by estimator)")
    t.add_argument("--calibration-fraction", type=float, default=0.2, help="share of rows for calibration "
                                                                           "(default 0.2)")
    t.add_argument("--holdout-fraction", type=float, default=0.2, help="last share of rows held out (default 0.2)")
    t.add_argument("--metric", help="the gate metric the card names (default mae; anomaly: auc with --label, else "
                                    "far_gap); the model's first promotion fixes its gate metric for good")
    t.add_argument("--unit", action="append", default=[], metavar="COLUMN=UNIT",
                   help="unit of an input or target column as the card records it, e.g. NOX=mg/m³ (repeatable; "
                        "a column without one is recorded without a unit)")
    t.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="estimator parameter, e.g. max_iter=200 (repeatable; values parsed as JSON when they can be)")
    t.add_argument("--no-register", action="store_true", help="train and check only; print the card")
    t.add_argument("--json", action="store_true", help="print the card as JSON")
    _registry_args(t)
    t.set_defaults(func=guard(cmd_train))

    ls = sub.add_parser("list", help="registered versions with status and holdout metrics")
    ls.add_argument("model_id", nargs="?", metavar="MODEL", help="only this model")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    _registry_args(ls)
    ls.set_defaults(func=guard(cmd_list))

    pr = sub.add_parser("promote", help="the gate: make VERSION champion if it matches or beats the champion",
                        description="Re-runs the candidate and the champion ONNX graphs on the same held-out rows "
                                    "(--holdout files, default the candidate's own held-out rows) and compares them "
                                    "by the model's gate metric: the one its first promotion used, fixed from then "
                                    "on (a later card's --metric does not change it). Refused too: a candidate "
                                    "that predicts another target or has another alpha than the champion, or "
                                    "whose intervals cover clearly less than nominal. Prints the comparison "
                                    "either way; exit 1 when refused.")
    pr.add_argument("model_id", metavar="MODEL")
    pr.add_argument("version", type=int, metavar="VERSION")
    pr.add_argument("--holdout", type=Path, nargs="+", metavar="FILE", help="CSV files to compare on")
    pr.add_argument("--time-column", help="ISO-8601 time column of the holdout files")
    pr.add_argument("--actor", default=os.environ.get("USER", "cli"), help="recorded in model_events")
    pr.add_argument("--json", action="store_true", help="print the comparison as JSON")
    _registry_args(pr)
    pr.set_defaults(func=guard(cmd_promote))

    rb = sub.add_parser("rollback", help="put the previous champion back and retire the current one",
                        description="No gate: the way back when a promoted model misbehaves. --to picks any "
                                    "version that passed parity, whose files are intact and that predicts the "
                                    "champion's target.")
    rb.add_argument("model_id", metavar="MODEL")
    rb.add_argument("--to", type=int, metavar="VERSION", help="version to serve (default: the previous champion)")
    rb.add_argument("--actor", default=os.environ.get("USER", "cli"), help="recorded in model_events")
    _registry_args(rb)
    rb.set_defaults(func=guard(cmd_rollback))

    # `evaluate` and `report` live in models.report_cli (another part of the work); optional here.
    if has_reports:
        importlib.import_module("models.report_cli").add_subcommands(sub)


def guard(cmd):
    """Expected failures (bad data, parity refused, unknown version, no database) as one line and exit 1, under
    ``valvoja`` too (its main only catches ConfigError). libpq's messages span lines: joined into one."""
    import functools

    from edge.cli import one_line, os_error

    @functools.wraps(cmd)
    def run(args) -> int:
        try:
            return cmd(args)
        except OSError as exc:
            print(f"error: {os_error(exc)}", file=sys.stderr)
        except (ValvojaError, ValueError, LookupError) as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
        except Exception as exc:
            # The registry database went away or did not answer in time (psycopg.OperationalError: a lock held by a
            # restore, the connect timeout); psycopg is imported only with --db, so matched by its module.
            if not type(exc).__module__.startswith("psycopg") or not isinstance(exc, _operational()):
                raise
            print(f"error: model registry database: {one_line(exc)}", file=sys.stderr)
        return 1

    return run


def _operational() -> type:
    import psycopg

    return psycopg.OperationalError


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _param(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--param {text!r}: expected NAME=VALUE")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _units(texts: list[str], columns: list[str]) -> dict[str, str]:
    """``--unit COLUMN=UNIT`` options as a map; a column the model does not use is an error (a typo would otherwise
    leave the column without its unit, silently)."""
    units: dict[str, str] = {}
    for text in texts:
        name, sep, unit = text.partition("=")
        name, unit = name.strip(), unit.strip()
        if not sep or not name or not unit:
            raise ValueError(f"--unit {text!r}: expected COLUMN=UNIT, e.g. NOX=mg/m³")
        if name not in columns:
            raise ValueError(f"--unit {text!r}: {name!r} is not an input or the target of this model "
                             f"({', '.join(columns)})")
        units[name] = unit
    return units


def cmd_train(args) -> int:
    from models.data import read_csvs
    from models.registry import Registry
    from models.train import TrainSpec, train

    table = read_csvs(args.data, time_column=args.time_column)
    if args.features:
        features = [f.strip() for f in args.features.split(",") if f.strip()]
    else:
        features = [c for c in table.names if c not in (args.target, args.label)]
    # Units only as the user declares them: a plant file whose columns share the gas-turbine names (NOX, CO, AT)
    # got the gas-turbine units (mg/m³, °C) written into its card.
    units = _units(args.unit, features + ([args.target] if args.target else []))
    spec = TrainSpec(args.model_id, features, args.target, estimator=args.kind, params=dict(map(_param, args.param)),
                     label=args.label, alpha=args.alpha, interval=args.interval,
                     calibration_fraction=args.calibration_fraction, holdout_fraction=args.holdout_fraction,
                     metric=args.metric, units=units)
    registry = None if args.no_register else Registry(args.registry, args.db)
    if registry is not None:
        registry.check_writable()  # before the training run, not after it
    tm = train(spec, table, progress=_progress)
    if args.json:
        print(api_json({k: v for k, v in tm.card.items() if k != "calibration"}, indent=True))
    if registry is None:
        print(f"{spec.model_id}: trained, not registered (sha256 {tm.sha256[:12]})")
        return 0
    mv = registry.register(tm, actor=os.environ.get("USER", "cli"))
    print(f"registered {mv.model_id} v{mv.version} as candidate: {mv.path} (sha256 {mv.sha256[:12]}); "
          f"promote with `{promote_hint(mv.model_id, mv.version, args)}`")
    return 0


def promote_hint(model_id: str, version: int, args) -> str:
    """The promote command for the registry just written, to be run as printed: with its ``--registry`` as an
    absolute path (the default ``var/models`` is relative to the working directory) and the ``--db`` given on the
    command line (one from ``$VALVOJA_DB_URL`` is found there again), without a password in it (libpq takes that
    from ``PGPASSWORD`` or ``~/.pgpass``; a printed one would land in logs and shell history)."""
    parts = ["valvoja", "models", "promote", model_id, str(version), "--registry", str(Path(args.registry).resolve())]
    if args.db and args.db != os.environ.get("VALVOJA_DB_URL"):
        parts += ["--db", _without_password(args.db)]
    return shlex.join(parts)


def _without_password(db: str) -> str:
    """``db`` as given when it holds no password, else the same connection as libpq keywords without it."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(db)
    except psycopg.ProgrammingError:  # not parseable: a placeholder rather than risk printing a secret
        return "URL"
    if "password" not in params:
        return db
    params.pop("password")
    return make_conninfo(**{k: str(v) for k, v in params.items()})


def existing_registry(args, *, files: bool = True):
    """The registry of ``--registry`` / ``--db`` for an action that reads one (all but ``train``): a folder that does
    not exist is named, not created (`models.registry.Registry` makes its root). "no models registered" or "has no
    version 1" there sent people looking for a lost registry: the default is relative to the working directory,
    the gateway's is the `registry` of its site configuration. With ``--db`` too, unless the action reads the index
    alone (``files=False``: list): the index names versions relative to the folder, and one that does not exist made
    a stray ``var/models`` and refused the version as "no stored holdout rows"."""
    from models.registry import Registry

    if (files or not args.db) and not args.registry.is_dir():
        raise ValueError(f"no registry folder {args.registry} (give --registry DIR: the `registry` folder the site "
                         "configuration names, or --db URL / $VALVOJA_DB_URL for a database registry)")
    # Never made here: `list --db` of a mistyped folder left an empty one behind (the index is in the database).
    return Registry(args.registry, args.db, create=False)


def cmd_list(args) -> int:
    versions = existing_registry(args, files=False).list(args.model_id)
    if args.json:
        print(api_json([v.summary() for v in versions], indent=True))
        return 0
    if not versions:
        print("no models registered" + (f" under {args.model_id!r}" if args.model_id else ""))
        return 0
    print(f"{'model':<20}{'ver':>4}  {'status':<10}{'created (UTC)':<20}{'parent':>7}  {'gate metric':<20}"
          f"{'coverage':>9}  sha256")
    for v in versions:
        gate = v.metrics.get("gate", {})
        hold = v.metrics.get("holdout", {})
        gm = gate.get("metric", "")
        val = hold.get(gm)
        cov = hold.get("coverage")
        print(f"{v.model_id:<20}{v.version:>4}  {v.status:<10}{v.created_at:%Y-%m-%d %H:%M:%S}"
              f"{'' if v.parent_version is None else v.parent_version:>8}  "
              f"{(f'{gm}={val:.4g}' if isinstance(val, float) else gm):<20}"
              f"{(f'{cov:.3f}' if isinstance(cov, float) else '-'):>9}  {v.sha256[:12]}")
    return 0


def cmd_promote(args) -> int:
    from models.data import read_csvs
    from models.registry import GateRefused

    reg = existing_registry(args)
    holdout = read_csvs(args.holdout, time_column=args.time_column) if args.holdout else None
    try:
        cmp = reg.promote(args.model_id, args.version, holdout=holdout, actor=args.actor)
    except GateRefused as exc:
        print(api_json(exc.comparison.to_dict(), indent=True) if args.json else exc.comparison.describe())
        return 1
    print(api_json(cmp.to_dict(), indent=True) if args.json else cmp.describe())
    print(f"{args.model_id} v{args.version} is now the champion")
    return 0


def cmd_rollback(args) -> int:
    r = existing_registry(args).rollback(args.model_id, args.to, actor=args.actor)
    print(f"{r['model_id']}: champion is now v{r['to']}" + (f" (v{r['from']} retired)" if r["from"] else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    # usage lines read "valvoja models ...": `python -m models.cli ARGS` is that command
    parser = argparse.ArgumentParser(prog="valvoja")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser(sub)
    args = parser.parse_args(["models", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
