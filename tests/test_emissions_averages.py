"""Averages, availability, validity and validated values: hand-computed reference cases and properties."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emissions import averages
from emissions.averages import Status
from emissions.config import IED_CI_PERCENT, StackConfig

T0 = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
DAY = 1440


def stack(regime: str = "lcp", **kw) -> StackConfig:
    key = "month" if regime == "lcp" else "day"
    data = {"name": "S", "regime": regime,
            "pollutants": [{"name": "NOx", "tag": "N", "elv": {key: 100.0}, "pems": {"tag": "P"}}]}
    data.update(kw)
    return StackConfig.model_validate(data)


def run(cfg: StackConfig, values: dict[str, np.ndarray], operating=None, t0: int = T0):
    from emissions.normalise import Primary

    n = len(next(iter(values.values())))
    return averages.compute(cfg, Primary(t0, 60, n, values, {}, operating))


def day_with_invalid_hours(k: int, hours: int = 24, per_hour: int = 60) -> np.ndarray:
    v = np.full(hours * per_hour, 50.0)
    for h in range(k):
        v[h * per_hour: h * per_hour + 21] = np.nan  # 39 of 60 valid: below 2/3
    return v


@pytest.mark.parametrize(("invalid_hours", "day_valid"), [(3, True), (4, False)])
def test_lcp_day_with_three_vs_four_invalid_hours(invalid_hours, day_valid):
    r = run(stack(), {"NOx": day_with_invalid_hours(invalid_hours)})
    hours, day = r.averages["NOx"]["hour"], r.averages["NOx"]["day"]
    assert (hours.status == Status.INVALID).sum() == invalid_hours
    assert bool(day.valid[0]) is day_valid
    assert day.sub_invalid[0] == invalid_hours and day.sub_valid[0] == 24 - invalid_hours
    if day_valid:
        assert day.value[0] == pytest.approx(50.0) and day.validated[0] == pytest.approx(30.0)
    else:
        assert np.isnan(day.validated[0])


@pytest.mark.parametrize(("invalid", "day_valid"), [(5, True), (6, False)])
def test_waste_day_with_five_vs_six_invalid_half_hours(invalid, day_valid):
    v = np.full(DAY, 50.0)
    for h in range(invalid):
        v[h * 30: h * 30 + 11] = np.nan  # 19 of 30 valid
    r = run(stack("waste_incineration"), {"NOx": v})
    assert (r.averages["NOx"]["half_hour"].status == Status.INVALID).sum() == invalid
    assert bool(r.averages["NOx"]["day"].valid[0]) is day_valid


def test_invalid_hour_rule_is_configurable():
    r = run(stack(regulatory={"day_max_invalid": 0}), {"NOx": day_with_invalid_hours(1)})
    assert not r.averages["NOx"]["day"].valid[0]


@pytest.mark.parametrize(("valid_minutes", "ok"), [(20, True), (19, False)])
def test_half_hour_needs_two_thirds_valid(valid_minutes, ok):
    v = np.full(30, np.nan)
    v[:valid_minutes] = 40.0
    hh = run(stack(), {"NOx": v}).averages["NOx"]["half_hour"]
    assert bool(hh.valid[0]) is ok
    assert hh.availability[0] == pytest.approx(valid_minutes / 30)
    assert hh.value[0] == pytest.approx(40.0)  # the mean is kept even when the average is invalid


def test_validated_average_per_pollutant():
    names = list(IED_CI_PERCENT)
    cfg = StackConfig.model_validate({
        "name": "W", "regime": "waste_incineration",
        "pollutants": [{"name": n, "tag": n, "elv": {"day": 100.0}} for n in names]})
    r = run(cfg, {n: np.full(DAY, 80.0) for n in names})
    for n in names:
        expected = 80.0 - IED_CI_PERCENT[n]  # CO 70, SO2/NOx 60, dust/TOC 50, HCl/HF 40
        assert r.averages[n]["half_hour"].validated[0] == pytest.approx(expected), n
        assert r.averages[n]["day"].validated[0] == pytest.approx(expected), n


def test_validated_is_clamped_at_zero_unless_configured():
    assert run(stack(), {"NOx": np.full(60, 5.0)}).averages["NOx"]["hour"].validated[0] == 0.0
    cfg = stack(regulatory={"clamp_validated_at_zero": False})
    assert run(cfg, {"NOx": np.full(60, 5.0)}).averages["NOx"]["hour"].validated[0] == pytest.approx(-15.0)


def test_substitution_flags_propagate_into_daily_averages():
    v = np.full(DAY, 50.0)
    v[600:720] = np.nan  # analyser down 10:00-12:00
    pems = np.full(DAY, 55.0)
    levels = run(stack(), {"NOx": v, "pems:NOx": pems}).averages["NOx"]
    hours, day = levels["hour"], levels["day"]
    assert hours.valid.all()
    assert hours.n_substituted[10] == 60 and hours.substituted_share[10] == 1.0 and hours.n_substituted[9] == 0
    assert day.valid[0] and day.n_substituted[0] == 120
    assert day.substituted_share[0] == pytest.approx(120 / DAY)
    assert day.value[0] == pytest.approx((22 * 50 + 2 * 55) / 24)
    assert levels["month"].n_substituted[0] == 120 and levels["year"].n_substituted[0] == 120


def test_not_operating_is_neither_valid_nor_invalid():
    v = day_with_invalid_hours(3)
    operating = np.ones(DAY, dtype=bool)
    operating[20 * 60:] = False  # shut down for the last four hours
    v[20 * 60:] = np.nan
    levels = run(stack(), {"NOx": v}, operating).averages["NOx"]
    hours = levels["hour"]
    assert (hours.status == Status.NOT_OPERATING).sum() == 4
    assert levels["day"].valid[0] and levels["day"].sub_invalid[0] == 3
    assert levels["day"].availability[0] == pytest.approx((20 * 60 - 3 * 21) / (20 * 60))


def test_month_uses_only_valid_days():
    v = np.full(2 * DAY, 50.0)
    v[:4 * 60] = np.nan  # day 1: four invalid hours ...
    v[4 * 60: DAY] = 500.0  # ... and high values in its valid hours
    levels = run(stack(), {"NOx": v}).averages["NOx"]
    assert levels["day"].valid.tolist() == [False, True]
    assert levels["month"].value[0] == pytest.approx(50.0)
    assert levels["month"].sub_invalid[0] == 1 and levels["month"].sub_valid[0] == 1
    assert levels["year"].sub_invalid[0] == 1  # invalid days per year


def test_daylight_saving_days_in_local_time():
    cfg = stack(timezone="Europe/Helsinki")
    t0 = int(datetime(2025, 3, 29, 22, tzinfo=UTC).timestamp())  # 2025-03-30 00:00 EET
    r = run(cfg, {"NOx": np.full(23 * 60, 10.0)}, t0=t0)
    assert len(r.averages["NOx"]["day"]) == 1 and r.averages["NOx"]["day"].sub_valid[0] == 23
    t0 = int(datetime(2025, 10, 25, 21, tzinfo=UTC).timestamp())  # 2025-10-26 00:00 EEST
    r = run(cfg, {"NOx": np.full(25 * 60, 10.0)}, t0=t0)
    assert len(r.averages["NOx"]["day"]) == 1 and r.averages["NOx"]["day"].sub_valid[0] == 25


def test_ten_minute_averages_where_configured():
    cfg = stack("waste_incineration", ten_min=True)
    r = run(cfg, {"NOx": np.arange(60, dtype=float)})
    assert r.averages["NOx"]["ten_min"].value.tolist() == pytest.approx([4.5, 14.5, 24.5, 34.5, 44.5, 54.5])


@settings(max_examples=60, deadline=None)
@given(c=st.floats(0.0, 1e5), seed=st.integers(0, 2**32 - 1), gap=st.floats(0.0, 0.5),
       regime=st.sampled_from(["lcp", "waste_incineration"]))
def test_averages_of_constant_input_are_that_constant(c, seed, gap, regime):
    rng = np.random.default_rng(seed)
    v = np.full(2 * DAY, c)
    v[rng.random(2 * DAY) < gap] = np.nan
    r = run(stack(regime), {"NOx": v})
    for period, av in r.averages["NOx"].items():
        have = np.isfinite(av.value)
        assert have.any() or period not in ("ten_min", "half_hour", "hour"), period
        assert av.value[have] == pytest.approx(np.full(have.sum(), c), rel=1e-12), period
        ci = 20.0
        assert np.allclose(av.validated[av.valid], max(c - ci, 0.0), rtol=1e-12), period


def half_zero_half_250() -> np.ndarray:
    return np.r_[np.zeros(12 * 60), np.full(12 * 60, 250.0)]


def test_a_day_is_validated_from_its_hours_before_they_are_clamped():
    # LCP, ELV 100 mg/Nm³, CI 20 % of it = 20 mg. 12 hours at 0 mg/Nm³, 12 at 250: the day's measured average is
    # 125 and its validated one 125 - 20 = 105 (IED Annex V Part 3 10: from the valid hourly averages minus the
    # CI), within 110 % of the ELV (110). The hours are reported as 0 (0 - 20 clamped) and 230; averaging those
    # reported hours made the day 115, a breach of Part 4 1(b) the directive does not make.
    levels = run(stack(), {"NOx": half_zero_half_250()}).averages["NOx"]
    assert levels["hour"].validated[:12].tolist() == [0.0] * 12 and levels["hour"].validated[12] == 230.0
    assert levels["day"].validated[0] == pytest.approx(105.0)
    assert levels["month"].validated[0] == pytest.approx(105.0) and levels["year"].validated[0] == pytest.approx(105.0)
    # A day that is all below the CI is reported as 0, not below: 10 mg/Nm³ all day -> 10 - 20 -> 0.
    assert run(stack(), {"NOx": np.full(DAY, 10.0)}).averages["NOx"]["day"].validated[0] == 0.0


def test_a_permit_may_average_the_clamped_hours():
    cfg = stack(regulatory={"clamp_before_averaging": True})
    levels = run(cfg, {"NOx": half_zero_half_250()}).averages["NOx"]
    assert levels["day"].validated[0] == pytest.approx((12 * 0.0 + 12 * 230.0) / 24)  # 115
    assert levels["month"].validated[0] == pytest.approx(115.0)


def two_days_one_short() -> np.ndarray:
    # Day 1: 24 valid hours at 100 mg/Nm³; day 2: 3 invalid hours (still a valid day) and 21 at 50.
    v = np.r_[np.full(DAY, 100.0), np.full(DAY, 50.0)]
    v[DAY: DAY + 3 * 60] = np.nan
    return v


@pytest.mark.parametrize(("mean_of", "month"), [
    ("sub_averages", (24 * 100 + 21 * 50) / 45),  # the 45 valid hours: 76.67 (validated 56.67)
    ("days", (100 + 50) / 2),  # the two days: 75 (validated 55)
])
def test_a_month_is_the_mean_of_its_hours_or_of_its_days(mean_of, month):
    levels = run(stack(regulatory={"month_mean_of": mean_of}), {"NOx": two_days_one_short()}).averages["NOx"]
    assert levels["day"].value.tolist() == pytest.approx([100.0, 50.0]) and levels["day"].valid.all()
    for period in ("month", "year"):
        av = levels[period]
        assert av.value[0] == pytest.approx(month) and av.validated[0] == pytest.approx(month - 20.0)
        assert av.n_valid[0] == 45 * 60 and av.n_operating[0] == 48 * 60 and av.sub_valid[0] == 2


def test_a_month_of_days_leaves_an_invalid_day_out():
    v = two_days_one_short()
    v[DAY + 3 * 60: DAY + 4 * 60] = np.nan  # a fourth invalid hour: day 2 is invalid
    levels = run(stack(regulatory={"month_mean_of": "days"}), {"NOx": v}).averages["NOx"]
    assert levels["day"].valid.tolist() == [True, False]
    assert levels["month"].value[0] == pytest.approx(100.0) and levels["month"].sub_invalid[0] == 1


@pytest.mark.parametrize(("operating_min", "valid_min", "ok"), [(45, 30, True), (45, 29, False), (60, 40, True)])
def test_an_hour_with_exactly_two_thirds_of_its_operating_minutes_valid(operating_min, valid_min, ok):
    # 2/3 of the operating minutes: 30 of 45 (a start-up took the first 15) is valid, 29 is not; 40 of 60 is valid.
    v = np.full(60, np.nan)
    v[60 - valid_min:] = 80.0
    operating = np.arange(60) >= 60 - operating_min
    hour = run(stack(), {"NOx": v}, operating).averages["NOx"]["hour"]
    assert bool(hour.valid[0]) is ok and hour.n_operating[0] == operating_min
    assert hour.availability[0] == pytest.approx(valid_min / operating_min)


def test_a_day_without_a_valid_hour_is_invalid_and_counted():
    # Two operating hours, both without data: within the three invalid hours allowed, but the day has no valid
    # average, so it is invalid and one of the year's invalid days.
    operating = np.zeros(DAY, dtype=bool)
    operating[:120] = True
    levels = run(stack(), {"NOx": np.full(DAY, np.nan)}, operating).averages["NOx"]
    assert levels["day"].sub_invalid[0] == 2 and levels["day"].status[0] == Status.INVALID
    assert levels["year"].sub_invalid[0] == 1
