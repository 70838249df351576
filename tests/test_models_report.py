"""models.report: the uncertainty report is self-contained HTML (inline SVG, nothing fetched) plus strict JSON
with coverage over time, widths, residuals and input drift; ``valvoja models report`` from files or a registry."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest

from models.conformal import SplitConformal
from models.drift import DriftMonitor
from models.report import build_report, write_report

SAMPLE = Path(__file__).parent / "data" / "gas-turbine"


def _drifting(n: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    X_ref = rng.normal(size=(5000, 3))
    X = rng.normal(size=(n, 3))
    X[n // 2:, 2] += 1.5  # feature c drifts halfway
    yhat = X[:, 0] * 2.0
    noise = np.where(np.arange(n) < n // 2, 1.0, 2.5)
    y = yhat + rng.normal(size=n) * noise
    cal = SplitConformal(alpha=0.1).fit(rng.normal(size=1000), np.zeros(1000))
    return X_ref, X, y, yhat, cal


def _assert_self_contained(html: str) -> None:
    assert "<svg" in html
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(", html, re.I)
    assert not re.search(r"\b(src|href)\s*=", html, re.I)


def test_report_html_and_json(tmp_path):
    X_ref, X, y, yhat, cal = _drifting()
    mon = DriftMonitor(X_ref, ["a", "b", "c"])
    rep = build_report(yhat, y_true=y, X=X, features=["a", "b", "c"], conformal=cal,
                       calibration_scores=cal.scores_, drift=mon.to_dict(), model={"id": "synthetic", "version": 3},
                       window=250)
    html_path, json_path = write_report(rep, tmp_path / "out")
    html = html_path.read_text(encoding="utf-8")
    _assert_self_contained(html)
    assert html.count("<svg") >= 5  # coverage, width, residual histogram, bias, PSI
    assert "synthetic" in html and "nominal" in html

    text = json_path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    d = json.loads(text)
    assert d["nominal_coverage"] == pytest.approx(0.9) and d["rows"] == 3000
    static, adaptive = d["over_time"]["static"], d["over_time"]["adaptive"]
    assert len(static["coverage"]) == len(adaptive["coverage"]) == 12
    # The noise grows halfway: the static interval under-covers there, the adaptive one widens and holds.
    assert np.mean(static["coverage"][7:]) < 0.75
    assert abs(d["metrics"]["adaptive"]["coverage"] - 0.9) <= 0.03
    assert np.mean(adaptive["mean_width"][7:]) > 2 * np.mean(adaptive["mean_width"][:5])
    assert static["mean_width"][0] == pytest.approx(2 * cal.q_)
    res = d["residuals"]
    assert res["n"] == 3000 and sum(res["histogram"]["counts"]) == 3000 and len(res["mean_per_window"]) == 12
    drift = d["input_drift"]
    status = {f["feature"]: f["status"] for f in drift["features"]}
    assert status["a"] == status["b"] == "ok" and status["c"] == "drift" and drift["status"] == "drift"
    assert len(drift["over_time"]["psi"]["c"]) == 3  # windows of 4 * 250 rows
    assert drift["over_time"]["psi"]["c"][0] < 0.1 < 0.25 < drift["over_time"]["psi"]["c"][-1]


def test_report_without_truth_or_drift_reference(tmp_path):
    _, _, _, yhat, cal = _drifting(500)
    rep = build_report(yhat, conformal=cal.to_dict(), window=100)
    assert rep["metrics"] == {} and rep["residuals"] is None and rep["input_drift"] is None
    assert rep["over_time"]["static"]["mean_width"] == pytest.approx([2 * cal.q_] * 5)
    html_path, json_path = write_report(rep, tmp_path, name="r")
    _assert_self_contained(html_path.read_text(encoding="utf-8"))
    assert json.loads(json_path.read_text())["over_time"]["static"]["start"] == [0, 100, 200, 300, 400]
    with pytest.raises(ValueError):
        build_report(yhat, y_true=yhat[:-1], conformal=cal)


def _parser():
    from models.report_cli import add_subcommands

    p = argparse.ArgumentParser()
    add_subcommands(p.add_subparsers(dest="cmd", required=True))
    return p


def _gt_nox_files(tmp_path):
    """A gas-turbine NOx model fitted on 2011-12, as model.onnx and card.json in ``tmp_path``; (fit, card)."""
    from models.data import GAS_TURBINE_INPUTS, load_gas_turbine
    from models.evaluate import fit_onnx
    from models.schema import InputSchema

    train = load_gas_turbine(SAMPLE, [2011, 2012])
    feats = list(GAS_TURBINE_INPUTS)
    f = fit_onnx(train.matrix(feats), train.column("NOX"), feats, "NOX")
    (tmp_path / "model.onnx").write_bytes(f.onnx_bytes)
    card = {"model_id": "gt-nox", "kind": "regression", "target": "NOX", "sha256": f.version,
            "input_schema": InputSchema.of(feats).to_dict(),
            "calibration": {**f.conformal.to_dict(), "score": "absolute", "scores": f.conformal.scores_.tolist()},
            "drift_reference": DriftMonitor(train, feats).to_dict()}
    (tmp_path / "card.json").write_text(json.dumps(card))
    return f, card


def test_report_cli_from_onnx_and_card_files(tmp_path, capsys):
    f, card = _gt_nox_files(tmp_path)
    args = _parser().parse_args(["report", "gt-nox", "--data", str(SAMPLE / "gt_2013.csv"), "--onnx",
                                 str(tmp_path / "model.onnx"), "--card", str(tmp_path / "card.json"), "--out",
                                 str(tmp_path / "rep"), "--window", "48", "--adaptive-window", "48"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "gt-nox static" in out and "gt-nox adaptive" in out and "input drift: drift" in out
    d = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert d["model"]["sha256"] == f.version and d["model"]["drift_reference"] == "model card"
    assert d["metrics"]["static"]["coverage"] < d["metrics"]["adaptive"]["coverage"]
    _assert_self_contained((tmp_path / "rep" / "report.html").read_text())

    # A card whose sha256 does not match the file: refused.
    (tmp_path / "card.json").write_text(json.dumps({**card, "sha256": "0" * 64}))
    assert args.func(args) == 1
    assert "sha256" in capsys.readouterr().err


@pytest.mark.parametrize("bad, says", [
    ([1], "is not a model card: a JSON array, not an object"),
    ({"model_id": "gt-nox"}, "is not a model card: it has no input_schema"),
    ({"model_id": "gt-nox", "input_schema": {"features": []}}, "input_schema: an input schema needs at least one"),
    ({"model_id": "gt-nox", "input_schema": {"features": [{"unit": "C"}]}}, "input_schema: feature 1 has no name"),
])
def test_a_file_that_is_not_a_model_card_is_named_in_one_line(tmp_path, capsys, bad, says):
    """``--card`` given the wrong JSON file (a report.json, a config, a truncated card): a traceback ("AttributeError:
    'list' object has no attribute 'get'") or the bare ``error: 'input_schema'`` (a KeyError's text), naming neither
    the file nor what is missing. The same check refuses such a card.json in a model directory (`OnnxModel.load`,
    maintenance's ``model_dir``)."""
    from models.runtime import IntegrityError, OnnxModel

    _gt_nox_files(tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    args = _parser().parse_args(["report", "gt-nox", "--data", str(SAMPLE / "gt_2013.csv"), "--onnx",
                                 str(tmp_path / "model.onnx"), "--card", str(tmp_path / "bad.json"), "--out",
                                 str(tmp_path / "rep")])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --card {tmp_path / 'bad.json'} ") and says in err, err
    (tmp_path / "card.json").write_text(json.dumps(bad))
    with pytest.raises(IntegrityError, match=f"{tmp_path / 'card.json'} {re.escape(says)}"):
        OnnxModel.load(tmp_path)


def test_rows_with_a_missing_input_are_left_out_and_counted(tmp_path, capsys):
    """A data file with empty input cells (a sensor out for a few hours) failed the whole report with the model's
    "non-finite input" error; those rows are now left out, and said."""
    f, _ = _gt_nox_files(tmp_path)
    lines = (SAMPLE / "gt_2013.csv").read_text().splitlines()
    header = lines[0].split(",")
    at = header.index("AT")
    for i in (5, 6, 7):  # three rows without ambient temperature
        cells = lines[i].split(",")
        cells[at] = ""
        lines[i] = ",".join(cells)
    (tmp_path / "gaps").mkdir()
    (tmp_path / "gaps" / "gt_2013.csv").write_text("\n".join(lines) + "\n")
    args = _parser().parse_args(["report", "gt-nox", "--data", str(tmp_path / "gaps" / "gt_2013.csv"), "--onnx",
                                 str(tmp_path / "model.onnx"), "--card", str(tmp_path / "card.json"), "--out",
                                 str(tmp_path / "rep"), "--window", "48", "--adaptive-window", "48"])
    assert args.func(args) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert f"3 of {len(lines) - 1} rows left out: an input is missing or not finite" in captured.out + captured.err
    d = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert d["model"]["sha256"] == f.version and d["metrics"]["static"]["coverage"] is not None


def test_report_cli_from_the_registry(tmp_path, capsys):
    registry = pytest.importorskip("models.registry", reason="models.registry not in this build")
    train_mod = pytest.importorskip("models.train", reason="models.train not in this build")
    from models.data import GAS_TURBINE_INPUTS, load_gas_turbine

    table = load_gas_turbine(SAMPLE, [2011, 2012])
    spec = train_mod.TrainSpec("gt-nox", list(GAS_TURBINE_INPUTS), "NOX")
    reg = registry.Registry(tmp_path / "reg")
    mv = reg.register(train_mod.train(spec, table))
    args = _parser().parse_args(["report", "gt-nox", "--data", str(SAMPLE / "gt_2013.csv"), "--registry",
                                 str(tmp_path / "reg"), "--out", str(tmp_path / "rep"), "--window", "48"])
    assert args.func(args) == 1  # a candidate only: no champion yet
    assert "no champion" in capsys.readouterr().err
    args.version = mv.version
    assert args.func(args) == 0
    d = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert d["model"]["version"] == mv.version and d["metrics"]["adaptive"]["n"] == 596
    # The card carries the training rows' drift reference (models.train): the report uses it, no files needed.
    assert json.loads((mv.path / "card.json").read_text())["drift_reference"]["features"] == list(GAS_TURBINE_INPUTS)
    assert d["model"]["drift_reference"] == "model card"
    assert d["input_drift"]["status"] in ("warn", "drift")


def _write_csv(path, table) -> None:
    names = list(table.columns)
    rows = [",".join(["time", *names])]
    rows += [",".join([str(table.times[i]), *(f"{table.columns[c][i]:.6f}" for c in names)]) for i in range(len(table))]
    path.write_text("\n".join(rows) + "\n")


def test_a_report_on_rows_the_model_was_fitted_or_calibrated_on_says_so(tmp_path, capsys):
    """A report on data that includes the training period (``--data`` the training file itself) stated MAE 0.30 and
    coverage 0.89 as the model's, without a word, while the card's honest held-out MAE was 0.54: the rows it was
    fitted on flatter it. The report now counts the rows within the span the model was fitted on and the span it
    was calibrated on (by time), and names data files the model was trained from (by sha256, for files without a
    time column), in its JSON, its HTML and the command's output. Rows after training count nothing."""
    from models_support import regression_table

    from models.cli import main as models_main

    _write_csv(tmp_path / "train.csv", regression_table(600))
    _write_csv(tmp_path / "later.csv", regression_table(300, seed=4, start="2025-06-01"))
    reg = str(tmp_path / "reg")
    assert models_main(["train", "--data", str(tmp_path / "train.csv"), "--time-column", "time", "--target", "y",
                        "--model-id", "m", "--registry", reg]) == 0
    assert models_main(["promote", "m", "1", "--registry", reg]) == 0
    capsys.readouterr()
    args = _parser().parse_args(["report", "m", "--data", str(tmp_path / "train.csv"), "--time-column", "time",
                                 "--registry", reg, "--out", str(tmp_path / "rep"), "--window", "48"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    d = json.loads((tmp_path / "rep" / "report.json").read_text())
    ov = d["training_overlap"]
    assert (ov["fitted_rows"], ov["calibration_rows"]) == (360, 120), ov
    assert ov["training_files"] == [str(tmp_path / "train.csv")]
    said = "360 of 600 rows lie within the span the model was fitted on"
    assert said in out and said in (tmp_path / "rep" / "report.html").read_text(), out

    args = _parser().parse_args(["report", "m", "--data", str(tmp_path / "later.csv"), "--time-column", "time",
                                 "--registry", reg, "--out", str(tmp_path / "rep2"), "--window", "48"])
    assert args.func(args) == 0
    assert "fitted on" not in capsys.readouterr().out
    ov = json.loads((tmp_path / "rep2" / "report.json").read_text())["training_overlap"]
    assert (ov["fitted_rows"], ov["calibration_rows"], ov["training_files"]) == (0, 0, [])

    # Files without a time column: named by content.
    from models.data import GAS_TURBINE_INPUTS, load_gas_turbine
    from models.registry import Registry
    from models.train import TrainSpec, train

    gt = Registry(tmp_path / "gt")
    gt.register(train(TrainSpec("gt-nox", list(GAS_TURBINE_INPUTS), "NOX"), load_gas_turbine(SAMPLE, [2011, 2012])))
    args = _parser().parse_args(["report", "gt-nox", "--data", str(SAMPLE / "gt_2012.csv"), "--registry",
                                 str(tmp_path / "gt"), "--version", "1", "--out", str(tmp_path / "rep3")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    ov = json.loads((tmp_path / "rep3" / "report.json").read_text())["training_overlap"]
    assert ov["training_files"] == [str(SAMPLE / "gt_2012.csv")] and ov["fitted_rows"] is None
    assert f"{SAMPLE / 'gt_2012.csv'} is a file the model was trained from" in out, out


@pytest.mark.parametrize("option", ["--window", "--adaptive-window"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_window_of_no_rows_is_a_usage_error(capsys, option, value):
    """``--window 0`` failed with "error: range() arg 3 must not be zero"; ``--window -5`` wrote a report whose
    over-time plots were empty, with exit 0."""
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["report", "m", "--data", "d.csv", option, value])
    assert exc.value.code == 2
    assert f"argument {option}: '{value}': a whole number of at least 1" in capsys.readouterr().err
