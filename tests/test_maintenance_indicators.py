"""Indicator maths against hand-computed signals, and the incremental sliding-window engine."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from edge.records import Quality, Reading
from maintenance.indicators import Band, IndicatorEngine, waveform_indicators, window_stats

FS = 2560.0


def sine(amplitude=3.0, hz=50.0, seconds=1.0, phase=0.3):
    t = np.arange(int(FS * seconds)) / FS
    return amplitude * np.sin(2 * np.pi * hz * t + phase)


def test_sine_rms_peak_crest_kurtosis():
    x = sine(3.0)  # whole number of periods
    s = waveform_indicators(x, FS)
    assert s["rms"] == pytest.approx(3.0 / np.sqrt(2), rel=1e-9)
    assert s["peak"] == pytest.approx(3.0, rel=1e-4)
    assert s["crest"] == pytest.approx(np.sqrt(2), rel=1e-4)
    assert s["kurtosis"] == pytest.approx(1.5, rel=1e-9)


def test_gaussian_kurtosis_is_three():
    x = np.random.default_rng(1).normal(0, 2.0, 400_000)
    s = window_stats(x[None, :])
    assert s["kurtosis"][0] == pytest.approx(3.0, abs=0.03)
    assert s["std"][0] == pytest.approx(2.0, rel=0.01)


def test_square_wave_crest_and_kurtosis_are_one():
    x = np.tile([1.0, -1.0], 500)
    s = window_stats(x[None, :])
    assert s["crest"][0] == pytest.approx(1.0)
    assert s["kurtosis"][0] == pytest.approx(1.0)


def test_slope_mean_min_max_and_missing_values():
    x = np.array([[1.0, 3.0, np.nan, 7.0, 9.0]])  # y = 1 + 2 t, one gap
    s = window_stats(x, dt_s=1.0)
    assert s["slope"][0] == pytest.approx(2.0)
    assert s["mean"][0] == pytest.approx(5.0)
    assert (s["min"][0], s["max"][0]) == (1.0, 9.0)
    empty = window_stats(np.full((1, 4), np.nan))
    assert np.isnan(empty["mean"][0]) and np.isnan(empty["peak"][0])


def test_band_rms_parseval():
    x = sine(2.0, 50.0) + sine(1.0, 400.0, phase=1.0)
    s = waveform_indicators(x, FS, [Band("1x", 40, 60), Band("high", 300, 500), Band("rest", 60, 300)])
    assert s["band_1x"] == pytest.approx(2.0 / np.sqrt(2), rel=1e-6)
    assert s["band_high"] == pytest.approx(1.0 / np.sqrt(2), rel=1e-6)
    assert s["band_rest"] == pytest.approx(0.0, abs=1e-9)
    assert np.hypot(s["band_1x"], s["band_high"]) == pytest.approx(s["rms"], rel=1e-6)


def _r(tag, t, v, q=Quality.GOOD):
    return Reading(tag, t, v, t, quality=q)


def test_engine_emits_windows_incrementally():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    eng = IndicatorEngine({"P1.vib": ("mean", "max", "rms"), "P1.temp": ("slope",)}, window_s=10, hop_s=5)
    out = []
    for k in range(21):
        t = t0 + timedelta(seconds=k)
        out += eng.update([_r("P1.vib", t, float(k)), _r("P1.temp", t, 20.0 + 0.5 * k)])
    # windows close at 5, 10, 15, 20 s: the first reading opens the window ending at 5 s.
    times = sorted({r.time for r in out})
    assert times == [t0 + timedelta(seconds=s) for s in (5, 10, 15, 20)]
    at20 = {r.tag: r for r in out if r.time == t0 + timedelta(seconds=20)}
    assert at20["P1.vib.mean"].value == pytest.approx(14.5)  # values 10..19
    assert at20["P1.vib.max"].value == 19.0
    assert at20["P1.temp.slope"].value == pytest.approx(0.5)
    assert at20["P1.vib.mean"].quality == Quality.GOOD
    # The window ending at 5 s held only 5 of 10 slots: still GOOD at the default coverage 0.5.
    at5 = {r.tag: r for r in out if r.time == t0 + timedelta(seconds=5)}
    assert at5["P1.vib.mean"].value == pytest.approx(2.0)


def test_engine_skips_bad_and_marks_sparse_windows_uncertain():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    eng = IndicatorEngine({"A.x": ("mean",)}, window_s=10, hop_s=10, min_coverage=0.5)
    out = []
    for k in range(10):
        q = Quality.BAD if k % 2 else Quality.GOOD
        out += eng.update([_r("A.x", t0 + timedelta(seconds=k), 1000.0 if q == Quality.BAD else 1.0, q)])
    out += eng.update([_r("A.x", t0 + timedelta(seconds=13), 1.0)])  # closes the window ending at 10 s
    assert len(out) == 1 and out[0].value == 1.0
    # 5 good of 10 slots is coverage 0.5: GOOD; the next window (1 of 10) is UNCERTAIN.
    assert out[0].quality == Quality.GOOD
    nxt = eng.update([_r("A.x", t0 + timedelta(seconds=25), 1.0)])
    assert nxt[0].quality == Quality.UNCERTAIN and nxt[0].tag == "A.x.mean"


def test_waveform_tag_blocks():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    x = sine(4.0, 50.0, seconds=0.1)
    eng = IndicatorEngine({}, waveforms={"P1.vel": (FS, len(x), [Band("1x", 40, 60)])})
    out = eng.update([_r("P1.vel", t0 + timedelta(seconds=i / FS), float(v)) for i, v in enumerate(x)])
    got = {r.tag: r.value for r in out}
    assert got["P1.vel.rms"] == pytest.approx(4.0 / np.sqrt(2), rel=1e-6)
    assert got["P1.vel.band_1x"] == pytest.approx(4.0 / np.sqrt(2), rel=1e-6)
    assert got["P1.vel.kurtosis"] == pytest.approx(1.5, rel=1e-6)


def test_unknown_statistic_rejected():
    with pytest.raises(ValueError, match="unknown statistic"):
        IndicatorEngine({"a": ("median",)})
