"""The sample configuration parses against the code's models, and its defaults are the code's defaults."""

import tomllib
from pathlib import Path

import numpy as np
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


@pytest.mark.parametrize(("bands", "problem"), [
    ([{"name": "bearing", "low_hz": 2000.0, "high_hz": 5000.0}], "Nyquist frequency 1280 Hz"),
    ([{"name": "hf", "low_hz": 1000.0, "high_hz": 1500.0}], "Nyquist frequency 1280 Hz"),
    ([{"name": "1x", "low_hz": 30.0, "high_hz": 20.0}], "low_hz must be below high_hz"),
    ([{"name": "1x", "low_hz": 49.0, "high_hz": 50.0}], "holds no line of the block's spectrum above 0 Hz"),
    ([{"name": "dc", "low_hz": 0.0, "high_hz": 2.0}], "holds no line of the block's spectrum above 0 Hz"),
    ([{"name": "a", "low_hz": 10.0, "high_hz": 20.0}, {"name": "a", "low_hz": 20.0, "high_hz": 30.0}], "unique"),
])
def test_a_waveform_band_the_spectrum_cannot_measure_is_refused(bands, problem):
    """A band's RMS sums the block's spectral lines in it (every fs_hz / block Hz, up to fs_hz / 2). One above the
    Nyquist frequency, inside out, or between two lines was accepted and read 0 mm/s for ever (a bearing band of
    2-5 kHz on a 2,560 Hz waveform: a defect there never showed); one reaching past Nyquist held only its part below
    it; two of one name wrote one indicator. Refused, naming the key, the band and the reason."""
    from maintenance.indicators import Band, waveform_indicators

    wave = {"tag": "P-1.vel", "fs_hz": 2560.0, "block": 1024, "bands": bands}  # lines every 2.5 Hz
    with pytest.raises(ValidationError) as e:
        MaintenanceConfig.model_validate({"assets": [{"name": "P-1", "waveforms": [wave]}]})
    assert "assets.0.waveforms.0" in str(e.value) and problem in str(e.value) and "P-1.vel" in str(e.value)
    # What such a band reported: nothing of a tone inside it.
    t = np.arange(1024) / 2560.0
    if bands[0]["name"] == "bearing":
        tone = np.sin(2 * np.pi * 3000.0 * t)  # aliased to 440 Hz: not in 2-5 kHz, nor anywhere near it
        assert waveform_indicators(tone, 2560.0, [Band("bearing", 2000.0, 5000.0)])["band_bearing"] < 1e-9
    if bands[0]["low_hz"] == 49.0:
        tone = np.sin(2 * np.pi * 49.5 * t)
        assert waveform_indicators(tone, 2560.0, [Band("1x", 49.0, 50.0)])["band_1x"] < 0.2  # of an RMS of 0.71


def test_the_sample_waveform_bands_are_measurable():
    cfg = load_sample()
    assert cfg.assets[0].waveforms[0].bands  # the sample has bands, and they pass the check above


@pytest.mark.parametrize(("iso_band_hz", "problem"), [
    ([1300.0, 2000.0], "starts at or above the Nyquist frequency 1280 Hz"),
    ([1000.0, 10.0], "its first value must be below its second"),
    ([-1.0, 1000.0], "starts below 0 Hz"),
    ([0.0, 2.0], "holds no line of the block's spectrum"),
])
def test_a_waveforms_iso_band_is_validated(iso_band_hz, problem):
    """``iso_band_hz`` (the band whose RMS the ISO 20816 zones rate) must hold spectral lines below Nyquist; its
    upper end above Nyquist is measured up to Nyquist (the default 10-1000 Hz on a 1 kHz waveform)."""
    wave = {"tag": "P-1.vel", "fs_hz": 2560.0, "block": 1024, "iso_band_hz": iso_band_hz}  # lines every 2.5 Hz
    with pytest.raises(ValidationError) as e:
        MaintenanceConfig.model_validate({"assets": [{"name": "P-1", "waveforms": [wave]}]})
    assert "assets.0.waveforms.0" in str(e.value) and problem in str(e.value) and "iso_band_hz" in str(e.value)
    # Not rated in zones, the band is not checked.
    MaintenanceConfig.model_validate({"assets": [{"name": "P-1", "waveforms": [{**wave, "iso20816": False}]}]})
