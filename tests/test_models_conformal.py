"""Conformal maths against values worked out by hand: the quantile index, p-values with ties, too-small
calibration sets (infinite or refused, never too narrow), and coverage on exchangeable data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.conformal import AdaptiveConformal, ConformalPValue, SplitConformal, min_scores, p_values, quantile


def test_quantile_is_the_ceil_n_plus_1_rule():
    s = np.arange(1.0, 20.0)  # 19 scores 1..19
    # ceil(20 * 0.9) = 18 -> 18; ceil(20 * 0.95) = 19 -> 19; n = 18 at alpha 0.05: ceil(19 * 0.95) = 19 > 18 -> inf
    assert quantile(s, 0.1) == 18.0 and quantile(s, 0.05) == 19.0
    assert math.isinf(quantile(s[:18], 0.05)) and math.isinf(quantile([], 0.1))
    # 9 scores at alpha 0.1: ceil(10 * 0.9) = 9 (the largest); 8: ceil(9 * 0.9) = 9 > 8 -> inf
    assert quantile(np.arange(1.0, 10.0), 0.1) == 9.0 and math.isinf(quantile(np.arange(1.0, 9.0), 0.1))


def test_p_values_count_ties_as_at_least_as_extreme():
    cal = [1, 2, 2, 3, 5]  # n = 5
    # p = (1 + #{cal >= s}) / 6
    np.testing.assert_allclose(p_values(cal, [0, 2, 2.5, 5, 6]), [6 / 6, 5 / 6, 3 / 6, 2 / 6, 1 / 6])
    # the score threshold of alpha: every score above it has p <= alpha
    pv = ConformalPValue().fit(np.arange(1.0, 20.0))
    t = pv.threshold(0.1)
    assert t == 18.0 and pv.p_value([t + 1e-9])[0] <= 0.1 < pv.p_value([t - 1e-9])[0]


def test_split_conformal_covers_exchangeable_data_at_the_nominal_level():
    """2,000 trials of 19 calibration residuals + 1 test point: coverage in [0.9, 0.95] (the bounds of split
    conformal without ties), allowing 3 standard errors of sampling noise."""
    rng = np.random.default_rng(0)
    hits = 0
    trials = 2000
    for _ in range(trials):
        r = rng.standard_normal(20)
        lo, hi = SplitConformal(alpha=0.1).fit(r[:19], np.zeros(19)).interval([0.0])[0]
        hits += lo <= r[19] <= hi
    se = math.sqrt(0.09 / trials)
    assert 0.9 - 3 * se <= hits / trials <= 0.95 + 3 * se


def test_adaptive_window_too_small_for_the_level_is_refused():
    """10 recent scores cannot give a 95 % interval (the conformal quantile needs n >= 19): the largest of 10 covers
    10/11 = 91 % of exchangeable data while predictions stated 95 %. Refused, like a too-small calibration set."""
    with pytest.raises(ValueError, match="window"):
        AdaptiveConformal(0.05, window=10)
    AdaptiveConformal(0.05, window=19)  # ceil(20 * 0.95) = 19 <= 19: finite
    AdaptiveConformal(0.1, window=10)  # ceil(11 * 0.9) = 10 <= 10: finite


def test_adaptive_intervals_cover_exchangeable_data():
    rng = np.random.default_rng(1)
    ac = AdaptiveConformal(0.1, window=168, gamma=0.005).start(np.abs(rng.standard_normal(500)))
    hits, n = 0, 5000
    for _ in range(n):
        y = rng.standard_normal()
        iv = ac.interval([0.0])
        hits += iv[0, 0] <= y <= iv[0, 1]
        ac.update([y], [0.0], interval=iv)
    assert hits / n == pytest.approx(0.9, abs=3 * math.sqrt(0.09 / n) + 0.005)


@pytest.mark.parametrize("alpha", [0.5, 0.25, 0.1, 0.05, 0.01, 1 / 41, 1 / 720, 0.001, 0.0123])
def test_min_scores_is_also_the_p_value_resolution(alpha):
    """The one rule behind every alpha check (models.train, maintenance's config and detectors): n scores give a
    finite quantile at alpha exactly when their smallest conformal p-value, 1/(n+1), reaches alpha."""
    n = min_scores(alpha)
    smallest = p_values(np.zeros(n), [1.0])[0]
    assert smallest <= alpha and smallest == pytest.approx(1 / (n + 1))
    if n > 1:
        assert p_values(np.zeros(n - 1), [1.0])[0] > alpha


@pytest.mark.parametrize("gamma", [-0.005, math.nan, math.inf])
def test_adaptive_step_must_be_a_non_negative_number(gamma):
    """A negative ACI step turns the update round: each miss narrows the interval, so `valvoja models evaluate
    gas-turbine --gamma -1` / `report --gamma -1` ran and showed 90 % intervals that covered 83 %."""
    with pytest.raises(ValueError, match="gamma must be a number >= 0"):
        AdaptiveConformal(0.1, window=168, gamma=gamma)
    AdaptiveConformal(0.1, window=168, gamma=0.0)  # a plain rolling window
