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


def test_readings_on_a_tenth_of_a_second_grid_each_get_their_own_slot():
    """period_s = 0.1 (10 Hz tags): a reading stamped exactly on the grid belongs to its own slot. Slots were
    floor(seconds / 0.1) in floating point, which puts 40 % of grid times one slot early: two readings in one slot
    (the first overwritten) and an empty slot beside it, so a full window had a lower coverage and lost values."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    eng = IndicatorEngine({"F.x": ("mean", "min", "max")}, window_s=1, hop_s=1, period_s=0.1, min_coverage=1.0)
    out = []
    for k in range(40):
        t = t0 + timedelta(microseconds=100_000 * k)
        out += eng.update([_r("F.x", t, float(k))])
    at3 = {r.tag: r for r in out if r.time == t0 + timedelta(seconds=3)}  # the window [2 s, 3 s): values 20..29
    assert (at3["F.x.min"].value, at3["F.x.max"].value) == (20.0, 29.0)
    assert at3["F.x.mean"].value == pytest.approx(24.5)
    assert all(r.quality == Quality.GOOD for r in out if r.time > t0 + timedelta(seconds=1))  # every slot filled
    # A period of no whole number of microseconds: the windows still end where their readings are.
    p = 0.3333333
    eng = IndicatorEngine({"F.x": ("mean",)}, window_s=3, hop_s=3, period_s=p)
    out = [d for k in range(40) for d in eng.update([_r("F.x", t0 + timedelta(seconds=k * p), 1.0)])]
    ends = [(d.time - t0).total_seconds() for d in out]  # windows aligned to the epoch: the first ends in [0, 3)
    assert len(ends) >= 4 and 0 <= ends[0] < 3 and np.allclose(np.diff(ends), 9 * p, atol=1e-5)


def test_waveform_block_never_spans_a_gap():
    """Waveform samples are evenly spaced only within a burst: a block must not join the end of one burst to the
    start of the next (the jump is a step in the signal: broadband energy, kurtosis and crest far from the
    machine's), nor close up over a bad sample, nor take a repeated sample twice."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    n = 256  # 0.1 s at 2560 Hz: 5 whole periods of 50 Hz
    eng = IndicatorEngine({}, waveforms={"P1.vel": (FS, n, [Band("1x", 40, 60), Band("high", 200, 1280)])})

    def burst(start, amplitude, count, phase=0.0):
        x = amplitude * np.sin(2 * np.pi * 50.0 * np.arange(count) / FS + phase)
        return [_r("P1.vel", start + timedelta(microseconds=round(i * 1e6 / FS)), float(v)) for i, v in enumerate(x)]

    first = burst(t0, 4.0, n // 2)  # half a block, then the sensor stops for ten minutes
    later = t0 + timedelta(minutes=10)
    second = burst(later, 2.0, n, phase=1.0)
    assert eng.update(first) == []
    out = eng.update(second)
    got = {r.tag: r.value for r in out}
    assert {r.time for r in out} == {later}  # the block of the second burst only
    assert got["P1.vel.rms"] == pytest.approx(2.0 / np.sqrt(2), rel=1e-6)
    assert got["P1.vel.kurtosis"] == pytest.approx(1.5, rel=1e-6)
    assert got["P1.vel.band_high"] == pytest.approx(0.0, abs=1e-9)

    # A bad sample inside a block: the block is dropped (closing up over it would shift every later sample's time).
    third = burst(t0 + timedelta(minutes=20), 2.0, n + 10)
    third[5] = _r("P1.vel", third[5].time, float("nan"), Quality.BAD)
    out = eng.update(third)
    assert {r.time for r in out} == {third[6].time}  # the block from the sample after the bad one
    # A sample delivered twice (an MQTT redelivery) is taken once.
    fourth = burst(t0 + timedelta(minutes=30), 2.0, n)
    out = eng.update(fourth[:100] + fourth[99:])
    got = {r.tag: r.value for r in out}
    assert {r.time for r in out} == {fourth[0].time}
    assert got["P1.vel.kurtosis"] == pytest.approx(1.5, rel=1e-6)


def test_waveform_rms_is_of_the_vibration_not_of_the_sensors_offset():
    """ISO 20816 rates the RMS of the vibration velocity (10-1000 Hz); a constant offset in the samples (sensor
    bias, an integrator's drift) is no vibration. With it in, 1.0 mm/s of vibration and a 3 mm/s offset read
    3.16 mm/s: zone C (a warning) on a machine in zone A. Peak and crest factor are of the vibration too; the
    band values (DC excluded) add up to the RMS again."""
    x = sine(1.0 * np.sqrt(2)) + 3.0  # 1.0 mm/s RMS of vibration on a 3 mm/s offset
    s = waveform_indicators(x, FS, [Band("all", 1, 1281)])
    assert s["rms"] == pytest.approx(1.0, rel=1e-9)
    assert s["peak"] == pytest.approx(np.sqrt(2), rel=1e-4)
    assert s["crest"] == pytest.approx(np.sqrt(2), rel=1e-4)
    assert s["band_all"] == pytest.approx(s["rms"], rel=1e-9)


def test_expected_readings_follow_each_series_own_step():
    from maintenance.indicators import expected_readings
    from maintenance.quality import GOOD, MISSING

    cls = np.full((5, 60), MISSING, np.int8)
    cls[0, :] = GOOD  # every period: 60
    cls[1, ::3] = GOOD  # every 3 s: 20
    cls[2, 1::7] = GOOD  # every 7 s: 9 readings at most in 60 slots
    cls[3, 50:] = GOOD  # a fast tag after a start, 10 readings: still 60 (the share stays a sixth)
    cls[4, [0, 59]] = GOOD  # two readings say nothing of a step: the configured period
    assert expected_readings(cls).tolist() == [60, 20, 9, 60, 60]
