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
