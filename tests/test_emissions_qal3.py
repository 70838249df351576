"""QAL3 control charts: in-control data is quiet, drift and precision problems raise their alarms."""

from __future__ import annotations

import numpy as np
import pytest

from emissions import qal3
from emissions.config import Qal3


def cfg(**kw) -> Qal3:
    return Qal3.model_validate({"analyser": "NOx", "zero_tag": "z", "span_tag": "s", "span_reference": 80.0,
                                "s_ams": 1.0, **kw})


def days(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 86400


def test_in_control_checks_raise_no_action_alarm():
    rng = np.random.default_rng(3)
    values = 80.0 + 0.5 * rng.standard_normal(60)  # well inside s_AMS = 1
    checks = qal3.chart(cfg(), "span", days(60), values)
    assert not any(a in c.alarms for c in checks for a in ("drift_action", "cusum_up", "cusum_down", "precision"))
    assert qal3.state(cfg(), "span", checks).status in ("in_control", "warning")


def test_shewhart_warning_and_action_limits():
    checks = qal3.chart(cfg(), "zero", days(3), np.array([0.0, 2.5, -3.5]))
    assert checks[0].alarms == ()
    assert checks[1].alarms == ("drift_warning",)
    assert "drift_action" in checks[2].alarms and checks[2].z == pytest.approx(-3.5)


def test_cusum_detects_a_small_sustained_drift_that_shewhart_misses():
    values = np.r_[np.zeros(5), np.full(20, 1.5)]  # +1.5 s: below the 2 s warning limit
    checks = qal3.chart(cfg(), "zero", days(25), values)
    assert not any("drift_warning" in c.alarms or "drift_action" in c.alarms for c in checks)
    first = next(i for i, c in enumerate(checks) if "cusum_up" in c.alarms)
    # EN 14181's drift CUSUM (k = 0.501, h = 2.85 s_AMS): S+ grows by 1.5 - 0.501 = 0.999 per check from check 5:
    # 0.999, 1.998, 2.997 > 2.85 at the 3rd drifted check (with h = 4, the old default, at the 5th).
    assert first == 7 and checks[first].cusum_pos == pytest.approx(2.997)
    assert checks[first + 1].cusum_pos == pytest.approx(0.999)  # restarted after the alarm
    # A drift of 0.6 s_AMS: 0.099 per check, past 2.85 at the 29th (h = 4: the 41st).
    checks = qal3.chart(cfg(), "zero", days(45), np.r_[np.zeros(5), np.full(40, 0.6)])
    assert next(i for i, c in enumerate(checks) if "cusum_up" in c.alarms) == 5 + 28


def test_cusum_down():
    checks = qal3.chart(cfg(), "span", days(10), np.full(10, 78.8))
    assert any("cusum_down" in c.alarms for c in checks)


def test_precision_alarm_on_a_jump_between_checks():
    checks = qal3.chart(cfg(), "zero", days(3), np.array([1.9, -1.9, 0.0]))
    assert "precision" in checks[1].alarms  # moving range 3.8 > 3.686 s
    assert "precision" not in checks[2].alarms


def test_s_ams_estimated_from_the_first_checks():
    rng = np.random.default_rng(7)
    values = 0.8 * rng.standard_normal(200)
    checks = qal3.chart(cfg(s_ams=None, n_initial=20), "zero", days(200), values)
    assert all(np.isnan(c.z) for c in checks[:20]) and checks[19].alarms == ()
    assert checks[20].s_estimated and checks[20].s_ams == pytest.approx(qal3.estimate_s(values[:20]))
    assert 0.4 < checks[20].s_ams < 1.3
    assert qal3.state(cfg(s_ams=None), "zero", checks[:10]).status == "estimating"


def test_config_needs_span_reference_and_ordered_limits():
    with pytest.raises(ValueError, match="span_reference"):
        Qal3.model_validate({"analyser": "NOx", "span_tag": "s"})
    with pytest.raises(ValueError, match="warn_sigma"):
        cfg(warn_sigma=3.0, action_sigma=2.0)


def test_unordered_and_missing_values():
    checks = qal3.chart(cfg(), "zero", np.array([3, 1, 2]) * 86400, np.array([0.3, 0.1, np.nan]))
    assert [c.time for c in checks] == [86400, 3 * 86400]


def test_checks_too_alike_to_estimate_s_ams_are_said_not_judged_not_estimating():
    """A zero check read as 0.0 every time (an analyser or DAS that rounds it) gives no spread to estimate s_AMS from:
    every later check went unjudged, and the chart said "estimating" with a check 10 units off the zero gas. It says
    ``no_spread`` once the first n_initial checks are in, and still "estimating" before."""
    q = cfg(s_ams=None, n_initial=20)
    checks = qal3.chart(q, "zero", days(22), np.r_[np.zeros(21), 10.0])
    assert all(c.z != c.z and c.alarms == () for c in checks)
    assert qal3.state(q, "zero", checks[:20]).status == "estimating"
    assert qal3.state(q, "zero", checks).status == "no_spread" and checks[-1].deviation == 10.0


def test_the_span_chart_is_judged_by_its_own_s_ams_where_qal1_gives_one():
    """QAL1 gives s_AMS at zero and at span level (larger at span, as here: 0.5 and 2.0). With one value for both,
    a span check 2.6 above its gas was a drift action against the zero's spread; with ``span_s_ams`` it is 1.3 s_AMS,
    in control, while the zero chart keeps its 0.5."""
    both = cfg(s_ams=0.5)
    own = cfg(s_ams=0.5, span_s_ams=2.0)
    assert "drift_action" in qal3.chart(both, "span", days(2), np.array([80.0, 82.6]))[1].alarms
    span = qal3.chart(own, "span", days(2), np.array([80.0, 82.6]))
    assert span[1].alarms == () and span[1].z == pytest.approx(1.3) and span[1].s_ams == 2.0
    zero = qal3.chart(own, "zero", days(2), np.array([0.0, 1.6]))
    assert "drift_action" in zero[1].alarms and zero[1].s_ams == 0.5
    assert qal3.state(own, "span", []).s_ams == 2.0


def test_span_s_ams_is_in_the_fingerprint_when_set():
    """The stack's fingerprint is stored with every result: a chart's own span s_AMS changes the results, so it is
    in it (left at its default the key is left out, as the other keys added since are)."""
    from emissions import synthetic

    def stack(**kw):
        return synthetic.waste_stack("W", qal3=[{"analyser": "NOx", "zero_tag": "W.z", "s_ams": 1.0, **kw}])

    assert stack(span_s_ams=2.0).fingerprint() != stack().fingerprint()
