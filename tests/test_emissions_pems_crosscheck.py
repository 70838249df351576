"""PEMS cross-check: an analyser that stays outside the prediction interval is flagged; noise is not."""

from __future__ import annotations

import numpy as np

from emissions.config import PemsLink
from emissions.pems import crosscheck, rolling_sum

LINK = PemsLink(tag="p", lower_tag="lo", upper_tag="hi", window_s=6 * 3600, min_outside_share=0.5)


def test_rolling_sum():
    assert rolling_sum(np.array([1, 1, 0, 1, 1]), 2).tolist() == [1, 2, 1, 1, 2]


def test_persistent_offset_is_flagged_noise_is_not():
    n = 72  # hourly values, three days
    t = 3600 * np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(0)
    point = np.full(n, 50.0)
    lo, hi = point - 10, point + 10
    analyser = point + 3 * rng.standard_normal(n)
    analyser[5::10] += 30  # isolated outliers, one in ten: what a 90 % interval lets through
    flag, dev = crosscheck(t, 3600, analyser, point, lo, hi, LINK)
    assert not flag.any() and dev == []
    analyser[40:52] += 25  # analyser drifts up for 12 hours
    flag, dev = crosscheck(t, 3600, analyser, point, lo, hi, LINK)
    assert len(dev) == 1
    d = dev[0]
    assert 40 * 3600 <= d.start <= 46 * 3600 and d.end <= 56 * 3600 and d.max_outside_share >= 0.5
    assert d.mean_analyser > d.mean_pems + 10


def test_too_few_pairs_are_not_judged():
    n = 24
    t = 3600 * np.arange(n, dtype=np.int64)
    analyser = np.full(n, 100.0)
    lo = np.full(n, np.nan)
    lo[::4] = 0.0  # the interval is known one hour in four
    flag, _ = crosscheck(t, 3600, analyser, np.full(n, 5.0), lo, np.full(n, 10.0), LINK)
    assert not flag.any()


def test_the_stored_cross_check_judges_measured_analyser_values_only():
    """Twelve hours of analyser values substituted upstream (a DAS holding its last value, flagged SUBSTITUTED) far
    outside the PEMS interval were reported as the analyser deviating; they say nothing of it. Measured ones that
    stay outside still are."""
    from emissions import job
    from emissions.config import StackConfig
    from emissions.normalise import Primary

    cfg = StackConfig.model_validate({"name": "S", "regime": "lcp", "pollutants": [
        {"name": "NOx", "tag": "N", "o2_correction": False, "elv": {"month": 100.0},
         "pems": {"tag": "p", "lower_tag": "lo", "upper_tag": "hi"}}]})
    n = 48
    analyser = np.full(n, 50.0)
    analyser[10:22] = 90.0  # outside [40, 60] for 12 hours
    held = np.zeros(n, dtype=bool)
    held[10:22] = True

    def events(substituted: np.ndarray) -> list:
        primary = Primary(0, 3600, n, {"NOx": analyser.copy(), "pems:NOx": np.full(n, 50.0),
                                       "pems_lo:NOx": np.full(n, 40.0), "pems_hi:NOx": np.full(n, 60.0)},
                          substituted={"NOx": substituted})
        return job.pems_events(cfg, primary)

    assert events(held) == []
    assert len(events(np.zeros(n, dtype=bool))) == 1
