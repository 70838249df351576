"""Period boundaries: local calendar days, months and years, and the fixed periods laid inside them."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from emissions import periods

HEL = ZoneInfo("Europe/Helsinki")


def ts(*a, tz=UTC) -> int:
    return int(datetime(*a, tzinfo=tz).timestamp())


def test_months_and_years_start_at_local_midnight():
    b = periods.boundaries("month", ts(2025, 1, 15), ts(2025, 4, 2), "Europe/Helsinki")
    assert [datetime.fromtimestamp(x, HEL).strftime("%Y-%m-%d %H:%M") for x in b] == [
        "2025-01-01 00:00", "2025-02-01 00:00", "2025-03-01 00:00", "2025-04-01 00:00", "2025-05-01 00:00"]
    y = periods.boundaries("year", ts(2025, 6, 1), ts(2026, 1, 2), "Europe/Helsinki")
    assert len(y) == 3 and y[1] == ts(2026, 1, 1, tz=HEL)


def test_half_hours_of_a_daylight_saving_day():
    start, end = periods.parse_day("2025-03-30", "Europe/Helsinki")
    assert end - start == 23 * 3600
    b = periods.boundaries("half_hour", start, end, "Europe/Helsinki")
    assert len(b) - 1 == 46 and b[0] == start and b[-1] == end


def test_parse_month_and_year_of():
    assert periods.parse_month("2025-12", "UTC") == (ts(2025, 12, 1), ts(2026, 1, 1))
    assert periods.year_of(ts(2025, 7, 1), "UTC") == (ts(2025, 1, 1), ts(2026, 1, 1))


@settings(max_examples=100, deadline=None)
@given(start=st.integers(1_600_000_000, 1_800_000_000), length=st.integers(1, 40 * 86400),
       period=st.sampled_from(["ten_min", "half_hour", "hour", "day", "month", "year"]),
       tz=st.sampled_from(["UTC", "Europe/Helsinki", "America/New_York", "Asia/Kolkata"]))
def test_every_time_falls_in_exactly_one_period(start, length, period, tz):
    b = periods.boundaries(period, start, start + length, tz)
    assert b[0] <= start and b[-1] >= start + length and np.all(np.diff(b) > 0)
    t = np.linspace(start, start + length - 1, 50).astype(np.int64)
    i = periods.locate(b, t)
    assert np.all((b[i] <= t) & (t < b[i + 1]))


def test_a_permit_in_standard_time_all_year_names_a_fixed_offset_zone():
    # Europe/Berlin's 2025-03-30 has 23 hours (02:00 CET -> 03:00 CEST); a permit counting in CET all year (UTC+1)
    # names Etc/GMT-1 (POSIX sign: GMT-1 is UTC+1): its day has 24 hours, from 23:00 UTC the evening before.
    assert periods.parse_day("2025-03-30", "Europe/Berlin") == (ts(2025, 3, 29, 23), ts(2025, 3, 30, 22))
    assert periods.parse_day("2025-03-30", "Etc/GMT-1") == (ts(2025, 3, 29, 23), ts(2025, 3, 30, 23))
    assert len(periods.boundaries("hour", *periods.parse_day("2025-10-26", "Etc/GMT-1"), "Etc/GMT-1")) - 1 == 24


def test_a_leap_year_has_8784_hours_and_a_29th_of_february():
    start, end = periods.year_of(ts(2024, 7, 1), "Europe/Helsinki")
    assert (end - start) // 3600 == 8784 and len(periods.boundaries("hour", start, end, "Europe/Helsinki")) - 1 == 8784
    assert periods.parse_month("2024-02", "UTC") == (ts(2024, 2, 1), ts(2024, 3, 1))
    assert ts(2024, 3, 1) - ts(2024, 2, 1) == 29 * 86400
