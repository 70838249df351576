"""Runtime: input checks with clear errors, uncertainty and version on every output, hot swap under concurrent
load without a lost request, adaptive intervals under drift."""

from __future__ import annotations

import gc
import shutil
import threading
import time
import weakref
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from models_support import FEATURES, anomaly_table, regression_table, spec

from models.conformal import coverage
from models.registry import Registry
from models.runtime import InputError, ModelServer, OnnxModel
from models.train import train


@pytest.fixture(scope="module")
def models():
    table = regression_table(1500)
    return {"linear": train(spec(estimator="linear"), table), "hgb": train(spec(params={"max_iter": 100}), table),
            "cqr": train(spec("cqr", "hgb-cqr"), table),
            "anomaly": train(spec("an", "mahalanobis", label="label"), anomaly_table(2000))}


@pytest.fixture
def served(tmp_path, models):
    reg = Registry(tmp_path / "reg")
    v1 = reg.register(models["linear"]).version
    reg.promote("syn", v1)
    return reg


def _model(tm) -> OnnxModel:
    return OnnxModel(tm.onnx_bytes, {**tm.card, "version": 7})


def test_outputs_carry_interval_or_p_value_and_the_version(models):
    X = regression_table(10, seed=5).matrix(FEATURES)
    out = _model(models["hgb"]).predict(X)
    assert out.value.shape == (10,) and out.coverage == pytest.approx(0.9)
    assert np.all(out.lower < out.value) and np.all(out.value < out.upper)
    assert (out.model_id, out.version, out.model_version) == ("syn", 7, models["hgb"].sha256)
    cqr = _model(models["cqr"]).predict(X)
    assert cqr.raw.shape == (10, 3) and np.all(cqr.lower <= cqr.raw[:, 1]) and np.all(cqr.upper >= cqr.raw[:, 2])
    assert np.all((cqr.lower <= cqr.value) & (cqr.value <= cqr.upper))
    an = _model(models["anomaly"]).predict(anomaly_table(50, seed=8).matrix(FEATURES))
    assert an.lower is None and np.all((an.p_value > 0) & (an.p_value <= 1))


def test_a_cqr_interval_holds_its_own_point_prediction(models, tmp_path):
    """The CQR bounds come from the quantile models, the point from the median one: on rows where they disagree the
    point fell outside its interval. Served static or adaptive, the interval now holds it."""
    X = regression_table(3000, seed=11).matrix(FEATURES)
    m = _model(models["cqr"])
    out = m.predict(X)
    lo, hi = m.calibrator.interval(out.raw[:, 1], out.raw[:, 2]).T
    outside = (out.value < lo) | (out.value > hi)
    assert outside.any(), "the data no longer shows the case; choose rows where the median leaves the quantiles"
    assert np.all((out.lower <= out.value) & (out.value <= out.upper))
    assert np.array_equal(out.lower[~outside], lo[~outside]) and np.array_equal(out.upper[~outside], hi[~outside])
    reg = Registry(tmp_path / "reg")
    reg.promote("cqr", reg.register(models["cqr"]).version)
    served = ModelServer(reg, "cqr", adaptive=True).infer(X)
    assert served.adaptive and np.all((served.lower <= served.value) & (served.value <= served.upper))


def test_malformed_inputs_give_clear_errors(models):
    m = _model(models["hgb"])
    row = {"x1": 0.1, "x2": 0.2, "x3": 0.3, "x4": 0.4}
    assert m.predict(row).value.shape == (1,)
    with pytest.raises(InputError, match=r"missing feature\(s\): x3 \(the model takes x1, x2, x3, x4\)"):
        m.predict({k: v for k, v in row.items() if k != "x3"})
    with pytest.raises(InputError, match=r"unknown feature\(s\): x9"):
        m.predict({**row, "x9": 1.0})
    with pytest.raises(InputError, match=r"NaN or infinite input values: x2 \(row 1; 1 in all\)"):
        m.predict({k: [v, np.nan if k == "x2" else v] for k, v in row.items()})
    with pytest.raises(InputError, match=r"wrong order: column 0 is 'x2', the model expects 'x1'"):
        m.predict(np.zeros((2, 4)), columns=["x2", "x1", "x3", "x4"])
    with pytest.raises(InputError, match="has 3 columns, the model takes 4"):
        m.predict(np.zeros((2, 3)))
    with pytest.raises(InputError, match="not numeric"):
        m.predict([["a", "b", "c", "d"]])
    with pytest.raises(InputError, match="different lengths"):
        m.predict({**row, "x1": [1.0, 2.0]})


def test_server_serves_the_champion_with_records(served):
    srv = ModelServer(served, "syn")
    X = regression_table(3, seed=4).matrix(FEATURES)
    y, iv = srv.predict(X, return_interval=True)
    assert y.shape == (3,) and iv.shape == (3, 2) and srv.version == 1
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    recs = srv.predict_records(X, asset="GT1", times=[t0 + timedelta(hours=i) for i in range(3)])
    r = recs[0]
    assert (r.model_id, r.asset, r.target, r.kind, r.coverage) == ("syn", "GT1", "y", "regression", 0.9)
    assert r.model_version == served.get("syn", 1).sha256 and r.details["registry_version"] == 1
    assert r.lower < r.value < r.upper
    with pytest.raises(ValueError, match="gives intervals, not p-values"):
        srv.predict(X, return_pvalue=True)
    with pytest.raises(LookupError, match="no champion"):
        ModelServer(served, "other")


def test_anomaly_server_records_carry_p_values(tmp_path, models):
    reg = Registry(tmp_path / "reg")
    reg.promote("an", reg.register(models["anomaly"]).version)
    srv = ModelServer(reg, "an")
    X = anomaly_table(20, seed=3).matrix(FEATURES)
    score, p = srv.predict(X, return_pvalue=True)
    assert score.shape == p.shape == (20,)
    recs = srv.predict_records(X, asset="P-101", times=[datetime(2026, 1, 1, tzinfo=UTC)] * 20)
    assert all(r.kind == "anomaly" and r.p_value is not None and r.lower is None for r in recs)
    # The level the p-value is judged at travels with it (the console draws it, review lists it), as maintenance's
    # detectors store it.
    assert {r.details.get("alpha") for r in recs} == {srv.model.alpha} and srv.model.alpha is not None


def test_hot_swap_under_concurrent_requests_loses_nothing(served, models):
    """Four threads call the server without pause while the gate promotes v2 and the server swaps to it. Every
    request must succeed, and every answer must be wholly one version's (compared with that version's own
    output), and every request started after the swap must be answered by v2."""
    v2 = served.register(models["hgb"]).version
    srv = ModelServer(served, "syn")
    X = regression_table(32, seed=11).matrix(FEATURES)
    expected = {1: _model(models["linear"]).predict(X).value, 2: _model(models["hgb"]).predict(X).value}
    stop = threading.Event()
    results: list[tuple[float, int, bool]] = []
    errors: list[BaseException] = []
    attempts = [0] * 4

    def worker(i: int) -> None:
        while not stop.is_set():
            attempts[i] += 1
            t = time.perf_counter()
            try:
                out = srv.infer(X)
                results.append((t, out.version, bool(np.array_equal(out.value, expected[out.version]))))
            except BaseException as exc:  # any failure is a dropped request
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    time.sleep(0.3)
    served.promote("syn", v2)
    assert srv.refresh() is True
    swapped = time.perf_counter()
    time.sleep(0.3)
    stop.set()
    for th in threads:
        th.join()
    assert errors == []
    assert len(results) == sum(attempts) > 100
    assert all(ok for _, _, ok in results), "an answer mixed versions"
    assert {v for _, v, _ in results} == {1, 2} and srv.swaps == 1
    assert all(v == 2 for t, v, _ in results if t > swapped)
    assert srv.refresh() is False  # nothing new


def test_refresh_picks_up_a_rollback(served, models):
    served.promote("syn", served.register(models["hgb"]).version)
    srv = ModelServer(served, "syn")
    assert srv.version == 2
    served.rollback("syn")
    assert srv.refresh() is True and srv.version == 1


def test_refresh_is_the_one_way_to_pick_up_a_new_champion():
    """`ModelServer.watch` polled the registry in a thread of its own and logged a full traceback every poll while
    the champion was broken; nothing in the product used it (the PEMS and the RUL loop poll on their own schedule
    and log a failure once). Removed: the README's serving example names only what the server has."""
    import re
    from pathlib import Path

    assert not hasattr(ModelServer, "watch")
    readme = (Path(__file__).resolve().parents[1] / "models" / "README.md").read_text()
    used = set(re.findall(r"\bsrv\.(\w+)\(", readme))
    assert {"predict", "refresh", "observe"} <= used
    assert [m for m in sorted(used) if not hasattr(ModelServer, m)] == []


def test_adaptive_intervals_restore_coverage_under_drift(served):
    """The served model was calibrated on noise sd 0.3; the plant drifts to sd 1.0. Static intervals then cover
    far less than 90 %; with the truth revealed after each prediction the adaptive intervals cover ~90 %."""
    srv = ModelServer(served, "syn", window=300, gamma=0.005)
    static = ModelServer(served, "syn", adaptive=False)
    drift = regression_table(3000, noise=1.0, seed=21)
    X, y = drift.matrix(FEATURES), drift.column("y")
    served_iv = np.empty((len(y), 2))
    for i in range(len(y)):
        out = srv.infer(X[i:i + 1])
        served_iv[i] = out.interval[0]
        assert out.adaptive
        srv.observe(y[i:i + 1], out)
    static_cov = coverage(y, static.predict(X, return_interval=True)[1])
    adaptive_cov = coverage(y[300:], served_iv[300:])  # after the window has turned over once
    assert static_cov < 0.85, static_cov
    assert 0.87 <= adaptive_cov <= 0.93, adaptive_cov
    # truth for another version's predictions is not used
    other = _model_output_of_other_version(srv, X[:2])
    assert srv.observe(y[:2], other) == 0


def _model_output_of_other_version(srv, X):
    out = srv.infer(X)
    out.model_version = "0" * 64
    return out


def test_performance_monitor_flags_a_degraded_model_not_a_healthy_one(served, models):
    """Truth revealed later feeds the served version's PerformanceMonitor: rows like the training data keep it
    ``ok``; a plant that changed (noise sd 0.3 -> 1.0 and an offset of twice the holdout MAE) pushes the rolling
    MAE past 1.5x the holdout MAE and the served intervals' coverage far below nominal."""
    healthy = ModelServer(served, "syn", performance_window=200)
    assert healthy.performance()["status"] == "unknown" and healthy.performance()["rows"] == 0
    same = regression_table(400, noise=0.3, seed=31)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    preds = healthy.predict_records(same.matrix(FEATURES), asset="A1",
                                    times=[t0 + timedelta(hours=i) for i in range(len(same))])
    assert healthy.observe(same.column("y"), preds) == len(same)
    ok = healthy.performance()
    assert ok["status"] == "ok", ok
    assert ok["error_status"] == "ok" and ok["coverage_status"] == "ok" and ok["version"] == healthy.version
    assert ok["mae_ratio"] < 1.25 and ok["baseline_mae"] == served.champion("syn").metrics["holdout"]["mae"]

    # static intervals (adaptive ones would widen and keep the coverage: the MAE still shows the change)
    degraded = ModelServer(served, "syn", adaptive=False, performance_window=200)
    worse = regression_table(400, noise=1.0, seed=32)
    X, y = worse.matrix(FEATURES), worse.column("y") + 2 * ok["baseline_mae"]
    for i in range(0, len(y), 50):  # truth arrives in batches, after the predictions
        out = degraded.infer(X[i:i + 50])
        degraded.observe(y[i:i + 50], out)
    bad = degraded.performance()
    assert bad["status"] == "drift" and bad["error_status"] == "drift", bad
    assert bad["coverage_status"] == "drift" and bad["coverage"] < 0.8, bad
    assert bad["mae_ratio"] >= 1.5 and bad["rows"] == 200 and bad["seen"] == 400

    # anomaly scorers have no error to track; their status says so
    reg = Registry(served.root.parent / "an")
    reg.promote("an", reg.register(models["anomaly"]).version)
    an = ModelServer(reg, "an")
    assert an.performance()["status"] == "unknown" and "anomaly" in an.performance()["reason"]


def test_inputs_beyond_float32_and_non_finite_outputs_are_refused_not_served(models, served):
    """The input check ran on float64 values, the graph takes float32: a device's 1e39 "no value" passed as finite,
    became inf in the tensor, and a linear model answered inf with the interval [inf, inf]; so did a float32-finite
    3e38 that overflows inside the graph. `predict_records` turned both into stored predictions."""
    m = _model(models["linear"])
    rows = {"x1": [0.1, 1e39], "x2": [0.2, 0.2], "x3": [0.3, 0.3], "x4": [0.4, 0.4]}
    with pytest.raises(InputError, match=r"NaN or infinite input values: x1 \(row 1; 1 in all\).*float32"):
        m.predict(rows)
    with pytest.raises(InputError, match=r"output is NaN or infinite for row 1 "):
        m.predict({**rows, "x1": [0.1, -3e38]})
    srv = ModelServer(served, "syn")
    times = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 1, tzinfo=UTC)]
    for x1 in (1e39, -3e38):
        with pytest.raises(InputError):
            srv.predict_records({**rows, "x1": [0.1, x1]}, asset="GT1", times=times)
    ok = srv.predict_records(rows | {"x1": [0.1, 0.2]}, asset="GT1", times=times)
    assert all(np.isfinite([p.value, p.lower, p.upper]).all() for p in ok)


def test_a_swapped_out_version_is_released(served, models):
    """A gateway runs for months while new champions are promoted (retrained weekly, say): each swap used to keep
    the previous version's onnxruntime session and card (calibration scores, drift reference) in the server's cache
    for good, so memory grew with every promotion. Once no request uses it, a swapped-out version is freed; a
    rollback to it loads it again."""
    srv = ModelServer(served, "syn")
    first = weakref.ref(srv.model)
    served.promote("syn", served.register(models["hgb"]).version)
    out = srv.infer(regression_table(2, seed=3).matrix(FEATURES))  # an answer of v1 may outlive the swap
    assert srv.refresh() and srv.version == 2 and out.version == 1
    gc.collect()
    assert first() is None, "v1's session is still held after the swap"
    served.rollback("syn")
    assert srv.refresh() and srv.version == 1 and srv.infer(regression_table(2, seed=3).matrix(FEATURES)).version == 1


def test_a_new_champion_under_a_reused_version_number_is_swapped_in(tmp_path, models):
    """The registry lost a version the server still serves (its index and folder restored from a backup older than
    it): the next registration reuses the version number and is promoted. The server compared version numbers
    only, so it went on serving the old graph, no longer in the registry, while the registry's champion was another
    model."""
    reg = Registry(tmp_path / "reg")
    reg.promote("syn", reg.register(models["linear"]).version)
    srv = ModelServer(reg, "syn")
    assert srv.model.sha256 == models["linear"].sha256
    (tmp_path / "reg" / "index.json").unlink()  # the restored index knows nothing of v1 ...
    shutil.rmtree(tmp_path / "reg" / "syn" / "1")  # ... nor does the restored folder (a folder's v1 is never reused)
    again = reg.register(models["hgb"])
    reg.promote("syn", again.version)
    assert again.version == srv.version == 1
    assert srv.refresh() is True
    assert srv.model.sha256 == models["hgb"].sha256 == srv.infer(regression_table(2).matrix(FEATURES)).model_version


def test_an_empty_batch_gives_empty_outputs_and_a_row_without_a_feature_says_so(models):
    # An empty batch (a report or console range without rows) failed inside the runtime with "cannot reshape
    # array of size 0 into shape (0,newaxis)"; a list of row dicts of which one lacked a feature was reported as a
    # "NaN or infinite input value" of that feature, which sends people looking at the sensor, not the caller.
    for name in ("hgb", "cqr", "anomaly"):
        out = _model(models[name]).predict(np.zeros((0, 4)))
        assert len(out) == 0 and out.raw.shape[0] == 0
        assert (out.interval.shape if out.lower is not None else out.p_value.shape)[0] == 0
    row = {"x1": 0.1, "x2": 0.2, "x3": 0.3, "x4": 0.4}
    with pytest.raises(InputError, match=r"missing feature\(s\): x3 in row 1 \(the model takes x1, x2, x3, x4\)"):
        _model(models["hgb"]).predict([row, {k: v for k, v in row.items() if k != "x3"}])
