"""The sample configuration parses against the code's models, and its defaults are the code's defaults."""

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from maintenance.config import AnomalyAssetConfig, MaintenanceConfig

SAMPLE = Path(__file__).parent.parent / "maintenance" / "sample.toml"


def load_sample() -> MaintenanceConfig:
    data = tomllib.loads(SAMPLE.read_text())
    return MaintenanceConfig.model_validate({**data["maintenance"], "rules": data.get("rules", [])})


def test_sample_parses_and_states_the_defaults():
    cfg = load_sample()
    default = MaintenanceConfig()
    assert (cfg.window_s, cfg.hop_s, cfg.period_s, cfg.alerts) == (default.window_s, default.hop_s, default.period_s,
                                                                   default.alerts)
    assert cfg.quality == default.quality and "quality" in tomllib.loads(SAMPLE.read_text())["maintenance"]
    a = cfg.assets[0]
    assert a.anomaly == AnomalyAssetConfig(signals=a.anomaly.signals)  # every other key at its default
    assert a.iso20816.boundaries == (1.4, 2.8, 4.5)
    assert [r.kind for r in cfg.rules] == ["threshold", "rate", "threshold"]
    assert cfg.notify.webhooks[0].attempts == 3


def test_errors_name_the_key():
    with pytest.raises(ValidationError) as e:
        MaintenanceConfig.model_validate({"assets": [{"name": "P", "process_stats": ["median"]}]})
    assert "unknown statistic" in str(e.value)
    with pytest.raises(ValidationError, match="resolution"):
        AnomalyAssetConfig(signals=("a",), train_samples=100, alpha=0.001)
    with pytest.raises(ValidationError, match="unique"):
        MaintenanceConfig.model_validate({"assets": [{"name": "P"}, {"name": "P"}]})
    with pytest.raises(ValidationError) as e:
        MaintenanceConfig.model_validate({"assets": [{"name": "P", "iso20816": {"group": 4}}]})
    assert "assets.0.iso20816.group" in str(e.value)


@pytest.mark.parametrize(("train_samples", "window"), [(40, 5), (99, 10), (300, 10), (300, 1), (1800, 10)])
def test_the_config_refuses_exactly_the_alphas_the_detector_cannot_fit(train_samples, window):
    """``[maintenance]`` checks alpha against the p-value resolution before a detector trains for train_samples
    seconds; it must refuse exactly the alphas `AnomalyDetector.fit` would (one rule, `min_scores`, with the
    detector's own count of calibration scores: one per disjoint window), no more and no fewer."""
    import numpy as np

    from maintenance.anomaly import AnomalyConfig, AnomalyDetector

    healthy = np.random.default_rng(train_samples).standard_normal((train_samples, 2))
    n_cal = (train_samples - int(train_samples * AnomalyConfig.fit_fraction)) // window
    for alpha in (1 / (n_cal + 1), 1 / (n_cal + 1) * 0.999, 1 / n_cal, 1 / (n_cal + 2)):
        try:
            AnomalyAssetConfig(signals=("a", "b"), train_samples=train_samples, window=window, alpha=alpha)
            config_ok = True
        except ValidationError as exc:
            assert "alpha" in str(exc) and "train_samples" in str(exc), "the error names the settings"
            config_ok = False
        try:
            AnomalyDetector(AnomalyConfig(window=window, alpha=alpha, max_drift=None)).fit(healthy)
            fit_ok = True
        except ValueError as exc:
            assert "resolution" in str(exc)
            fit_ok = False
        assert config_ok == fit_ok, (train_samples, alpha)
