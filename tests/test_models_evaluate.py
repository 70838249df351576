"""models.evaluate: metrics, the streaming protocol (adaptive intervals widen under drift, no peeking at
future truth), and the gas-turbine evaluation on the in-repo sample and (when present) the full data."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from models.conformal import SplitConformal
from models.evaluate import evaluate_gas_turbine, regression_metrics, stream, windowed

SAMPLE = Path(__file__).parent / "data" / "gas-turbine"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gas-turbine"


def test_regression_metrics_known_values():
    y = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    p = np.array([1.5, 2.0, 2.0, 5.0, 1.0])
    iv = np.column_stack([p - 0.6, p + 0.6])
    m = regression_metrics(y, p, iv)
    assert m["n"] == 4  # the NaN truth is left out
    assert m["mae"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1 + 1) / 4))
    assert m["r2"] == pytest.approx(1 - 2.25 / 5.0)
    assert m["coverage"] == pytest.approx(0.5)  # rows 0 and 1 inside
    assert m["mean_width"] == pytest.approx(1.2)
    assert m["spearman"] == pytest.approx(math.sqrt(0.9))  # ranks 1,2,3,4 vs 1,2.5,2.5,4
    assert "coverage" not in regression_metrics(y, p)
    with pytest.raises(ValueError):
        regression_metrics([1.0], [1.0, 2.0])


def _noise(n: int, rng, scale) -> np.ndarray:
    return rng.normal(size=n) * scale


def test_stream_holds_coverage_on_exchangeable_data():
    rng = np.random.default_rng(0)
    cal = np.abs(_noise(1000, rng, 1.0))
    y = _noise(20_000, rng, 1.0)
    st = stream(np.zeros_like(y), y, cal, alpha=0.1, window=500, gamma=0.005)
    assert abs(st.metrics(y)["coverage"] - 0.9) <= 0.02
    static = SplitConformal(alpha=0.1).fit(np.abs(_noise(1000, rng, 1.0)), np.zeros(1000))
    assert abs(regression_metrics(y, np.zeros_like(y), static.interval(np.zeros_like(y)))["coverage"] - 0.9) <= 0.02


def test_adaptive_intervals_widen_under_drift_and_keep_coverage():
    rng = np.random.default_rng(1)
    n = 12_000
    scale = np.where(np.arange(n) < n // 3, 1.0, 3.0)  # the noise triples after a third of the rows
    y = _noise(n, rng, scale)
    yhat = np.zeros(n)
    cal = np.abs(_noise(1000, rng, 1.0))
    static = SplitConformal(alpha=0.1).fit(cal, np.zeros(1000))
    static_cov = regression_metrics(y, yhat, static.interval(yhat))["coverage"]
    st = stream(yhat, y, cal, alpha=0.1, window=168, gamma=0.005)
    adaptive_cov = st.metrics(y)["coverage"]
    assert static_cov < 0.6  # the static interval keeps the old width
    assert abs(adaptive_cov - 0.9) <= 0.02
    w = st.upper - st.lower
    assert w[n // 2:].mean() > 2.5 * w[: n // 3].mean()  # widened about threefold
    ot = windowed(y, st.point, st.interval, 1000)
    assert len(ot["coverage"]) == 12 and min(ot["coverage"][5:]) > 0.85


def test_stream_uses_only_revealed_truth():
    rng = np.random.default_rng(2)
    y = _noise(300, rng, 1.0) + 5.0
    yhat = np.zeros(300)
    cal = np.abs(_noise(200, rng, 1.0))
    for delay in (0, 3):
        a = stream(yhat, y, cal, window=50, gamma=0.01, bias_halflife=5, delay=delay)
        y2 = y.copy()
        y2[150:] += 100.0  # a different future
        b = stream(yhat, y2, cal, window=50, gamma=0.01, bias_halflife=5, delay=delay)
        stop = 151 + delay  # row i sees truths up to i - 1 - delay
        np.testing.assert_array_equal(a.lower[:stop], b.lower[:stop])
        np.testing.assert_array_equal(a.point[:stop], b.point[:stop])
        assert a.point[stop] != b.point[stop]


def test_bias_correction_follows_an_offset():
    rng = np.random.default_rng(3)
    y = _noise(5000, rng, 1.0) + 10.0  # the model is off by 10
    yhat = np.zeros(5000)
    cal = np.abs(_noise(500, rng, 1.0))
    plain = stream(yhat, y, cal, window=168)
    corrected = stream(yhat, y, cal, window=168, bias_halflife=24)
    assert corrected.metrics(y)["mae"] < 0.2 * plain.metrics(y)["mae"]
    assert abs(corrected.metrics(y)["coverage"] - 0.9) <= 0.03
    assert corrected.metrics(y)["mean_width"] < 0.5 * plain.metrics(y)["mean_width"]
    with pytest.raises(ValueError):
        stream(yhat, y[:-1], cal)


def _check_result(res: dict, targets) -> None:
    json.dumps(res, allow_nan=False)  # JSON-able as returned
    for t in targets:
        for name in ("hgb", "linear"):
            m = res["targets"][t]["models"][name]
            assert m["parity"]["passed"] and len(m["model_version"]) == 64
            assert set(m["static"]) >= {"mae", "rmse", "r2", "spearman", "coverage", "mean_width"}
            assert len(m["over_time"]["streaming"]["coverage"]) == len(m["over_time"]["static"]["coverage"])
        assert "streaming_coverage_within_2_points" in res["targets"][t]["bars"]
    assert {f["feature"] for f in res["input_drift"]["features"]} == {
        "AT", "AP", "AH", "AFDP", "GTEP", "TIT", "TAT", "TEY", "CDP"}


def test_gas_turbine_sample_static_vs_streaming():
    res = evaluate_gas_turbine(SAMPLE, [2011, 2012], [2013], window=48, series_window=48)
    _check_result(res, ["NOX", "CO"])
    assert res["train_rows"] == 1254 and res["test_rows"] == 596
    nox = res["targets"]["NOX"]["models"]
    # Hourly rows subsampled to 12 h: fewer rows, the same drift between years.
    assert abs(nox["hgb"]["streaming"]["coverage"] - 0.9) <= 0.04
    assert nox["hgb"]["streaming"]["mae"] < nox["hgb"]["static"]["mae"]
    assert nox["hgb"]["static"]["mae"] < nox["linear"]["static"]["mae"]
    # AFDP, the air-filter pressure drop, moves between years (filter changes).
    afdp = next(f for f in res["input_drift"]["features"] if f["feature"] == "AFDP")
    assert afdp["status"] == "drift"


def test_evaluate_cli_on_the_sample(tmp_path, capsys):
    from models.report_cli import add_subcommands

    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="cmd", required=True))
    out = tmp_path / "gt.json"
    args = parser.parse_args(["evaluate", "gas-turbine", "--data", str(SAMPLE), "--train", "2011", "2012",
                              "--test", "2013", "--target", "NOX", "--window", "48", "--json", str(out),
                              "--report", str(tmp_path / "rep")])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "NOX    hgb      streaming" in text and "streaming coverage" in text
    res = json.loads(out.read_text())
    assert list(res["targets"]) == ["NOX"] and res["test_years"] == ["2013"]
    assert (tmp_path / "rep" / "gas-turbine-nox.html").is_file()
    # A year that is not there: a clear error, exit 1.
    bad = parser.parse_args(["evaluate", "gas-turbine", "--data", str(SAMPLE), "--train", "2011", "--test", "2014"])
    assert bad.func(bad) == 1
    assert "gt_2014.csv: no such file" in capsys.readouterr().err


@pytest.mark.skipif(not DATA.is_dir(), reason=f"gas-turbine data not at {DATA} (../shared/data)")
def test_gas_turbine_full_2013():
    res = evaluate_gas_turbine(DATA, [2011, 2012], [2013])
    _check_result(res, ["NOX", "CO"])
    for t in ("NOX", "CO"):
        hgb = res["targets"][t]["models"]["hgb"]
        # Between years the static interval under-covers; the streaming one holds its nominal 90 %.
        assert hgb["static"]["coverage"] < 0.85
        assert 0.88 <= hgb["streaming"]["coverage"] <= 0.92
        assert 0.88 <= hgb["streaming_intervals_only"]["coverage"] <= 0.92
    bars = res["targets"]["NOX"]["bars"]
    assert bars["streaming_mae_30pct_below_baseline"], bars
    assert res["targets"]["NOX"]["models"]["hgb"]["streaming"]["mae"] < 5.0


def test_a_test_year_that_is_also_a_training_year_is_refused(capsys):
    """``--train 2011 2012 2013 --test 2013`` fitted and calibrated on the very rows it then scored, and printed
    its (flattering) MAE and coverage as the evaluation; the data README's rule is never to train on an
    evaluation part."""
    from models.report_cli import add_subcommands

    with pytest.raises(ValueError, match=r"2013 .*both training and test"):
        evaluate_gas_turbine(SAMPLE, [2011, 2012, 2013], ["2013"], targets=["NOX"], baseline=None)
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["evaluate", "gas-turbine", "--data", str(SAMPLE), "--train", "2012", "2013",
                              "--test", "2013", "--target", "NOX", "--baseline", "none"])
    assert args.func(args) == 1
    captured = capsys.readouterr()
    assert "both training and test" in captured.err and "MAE" not in captured.out


def test_the_estimator_as_its_own_baseline_is_refused(capsys):
    """``--estimator hgb --baseline hgb`` fitted it twice, one result overwrote the other and the report said a 0 %
    MAE reduction against the baseline."""
    from models.report_cli import add_subcommands

    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["evaluate", "gas-turbine", "--data", str(SAMPLE), "--train", "2011", "--test", "2013",
                              "--target", "NOX", "--estimator", "hgb", "--baseline", "hgb"])
    assert args.func(args) == 1
    captured = capsys.readouterr()
    assert "--baseline hgb is the estimator itself" in captured.err and "MAE" not in captured.out


@pytest.mark.parametrize(("flag", "name"), [("--estimator", "mahalanobis"), ("--baseline", "pca"),
                                            ("--estimator", "bogus")])
def test_an_anomaly_scorer_or_unknown_estimator_is_not_evaluated_as_a_regressor(capsys, flag, name):
    """``--estimator mahalanobis`` fitted a distance to the inputs, printed it as NOx "predictions" with MAE and
    coverage ("streaming coverage 0.899 (ok)") and, as baseline, the MAE reduction against it; refused now before
    any data is read."""
    from models.report_cli import add_subcommands

    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["evaluate", "gas-turbine", "--data", str(SAMPLE), "--train", "2011", "--test", "2013",
                              "--target", "NOX", flag, name])
    assert args.func(args) == 1
    captured = capsys.readouterr()
    assert f"{name!r}" in captured.err and "regressor" in captured.err and "MAE" not in captured.out
    assert "data:" not in captured.err and "fitting" not in captured.err


def test_an_input_given_as_the_target_is_refused(capsys):
    """``--target AT`` (ambient temperature, one of the nine inputs) fitted AT from itself and printed MAE 0.000,
    R² 1.000 and "streaming coverage 0.913 (ok)" as an evaluation; refused now before any data is read."""
    from models.report_cli import add_subcommands

    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["evaluate", "gas-turbine", "--data", str(SAMPLE), "--train", "2011", "--test", "2013",
                              "--target", "NOX", "AT"])
    assert args.func(args) == 1
    captured = capsys.readouterr()
    assert "target(s) AT are inputs of the gas-turbine models" in captured.err and "MAE" not in captured.out
    assert "data:" not in captured.err
