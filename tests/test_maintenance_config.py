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
