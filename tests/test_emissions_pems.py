"""PEMS through models/: trained on 2011-2012 gas-turbine data, evaluated on 2013 (the data README's protocol);
and the evaluation harness on synthetic data, which always runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emissions.config import PemsLink
from emissions.pems_eval import Faults, PemsFit, evaluate_target, inject

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gas-turbine"


def synthetic_fit(noise: float) -> PemsFit:
    from models.conformal import SplitConformal

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 1))
    y = 50 + 10 * x[:, 0] + noise * rng.standard_normal(2000)
    sc = SplitConformal(alpha=0.1).fit(y, 50 + 10 * x[:, 0])
    return PemsFit("NOX", ["x"], lambda X: 50 + 10 * X[:, 0], sc.scores_, sc.interval, "synthetic")


def test_harness_on_synthetic_data():
    pytest.importorskip("models.conformal", reason="models/ conformal API not in this build")
    rng = np.random.default_rng(1)
    n = 6000
    X = rng.normal(size=(n, 1))
    truth = 50 + 10 * X[:, 0] + 2 * rng.standard_normal(n)
    faults = Faults(drift_start=3000, drift_end=3048, drift_offset_sigma=4.0, outage_start=5000, outage_end=5072)
    r = evaluate_target(synthetic_fit(2.0), X, truth, faults=faults)
    assert 0.86 <= r["static"]["coverage"] <= 0.94 and 0.86 <= r["streaming"]["coverage"] <= 0.94
    assert r["crosscheck"]["drift_flagged"] and r["crosscheck"]["delay_h"] <= 4
    # Exchangeable noise: P(at least 3 of 6 outside a 90 % interval) = 1.6 %, so about that many false flags.
    assert r["crosscheck"]["false_flag_hours"] < 0.03 * n
    sub = r["substitution"]
    assert sub["outage_hours"] == 72 and sub["days_with_substitution"] >= 3
    assert max(sub["substituted_share_of_those_days"]) == 1.0  # a whole day from the PEMS, flagged as such
    a = inject(truth, faults)
    assert np.isnan(a[5000:5072]).all() and (a[3000:3048] > truth[3000:3048]).all()


@pytest.mark.skipif(not DATA.is_dir(), reason=f"gas-turbine data not at {DATA} (../shared/data)")
def test_gas_turbine_pems_2013():
    pytest.importorskip("models.export", reason="models/ ONNX export not in this build")
    from emissions.pems_model import evaluate

    res = evaluate(DATA, ["2011", "2012"], ["2013"])
    for target, max_mae in (("NOX", 9.0), ("CO", 1.5)):
        r = res["targets"][target]
        assert r["card"]["parity"]["passed"] and len(r["model_version"]) == 64
        assert r["streaming"]["mae"] < max_mae
        # Between years the static interval under-covers; the adaptive one holds its nominal 90 %.
        assert r["static"]["coverage"] < 0.88 <= r["streaming"]["coverage"] <= 0.92
        assert r["crosscheck"]["drift_flagged"] and r["crosscheck"]["delay_h"] <= 6
        assert r["substitution"]["days_with_substitution"] >= 3


def test_link_defaults():
    link = PemsLink(tag="t", lower_tag="lo", upper_tag="hi")
    assert link.window_s == 21600 and link.min_outside_share == 0.5
    with pytest.raises(ValueError, match="both"):
        PemsLink(tag="t", lower_tag="lo")


@pytest.mark.skipif(not DATA.is_dir(), reason=f"gas-turbine data not at {DATA} (../shared/data)")
def test_live_pems_writes_flagged_readings_and_adapts(tmp_path):
    pytest.importorskip("models.export", reason="models/ ONNX export not in this build")
    from edge.records import Flag
    from emissions.pems_live import LivePems
    from emissions.pems_model import fit
    from models.data import load_gas_turbine

    f, _ = fit(DATA, ["2011", "2012"], "NOX", save_dir=tmp_path)
    link = PemsLink(tag="GT.NOx.pems", lower_tag="GT.NOx.lo", upper_tag="GT.NOx.hi",
                    model=str(tmp_path / "pems_nox.onnx"), inputs={n: f"GT.{n}" for n in f.features})
    live = LivePems(link)
    test = load_gas_turbine(DATA, ["2013"])
    X, y = test.matrix(f.features), test.column("NOX")
    inside = 0
    for i in range(500):
        rs = live.push(3600 * i, {f"GT.{n}": float(X[i, j]) for j, n in enumerate(f.features)}, float(y[i]))
        point, lo, hi = (r.value for r in rs)
        assert all(r.flags & Flag.SUBSTITUTED for r in rs) and lo <= point <= hi
        assert point == pytest.approx(f.predict(X[i: i + 1])[0], abs=1e-4)
        inside += lo <= y[i] <= hi
    assert 0.8 <= inside / 500 <= 0.97
    assert live.push(0, {}) == []  # missing inputs: no prediction
