"""Mass emissions: kg/h and tonnes per period; CO2 from fuel data."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from emissions import averages, mass
from emissions.config import StackConfig
from emissions.normalise import Primary

T0 = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())


def stack() -> StackConfig:
    return StackConfig.model_validate({
        "name": "K", "regime": "lcp", "reference_o2_percent": 3.0, "o2": {"tag": "O2"},
        "flow": {"tag": "Q", "moisture": "dry", "conditions": "standard"},
        "fuels": [{"name": "gas", "tag": "F", "unit": "kNm3", "ncv_gj_per_unit": 36.0, "ef_t_co2_per_tj": 56.1}],
        "pollutants": [{"name": "NOx", "tag": "N", "elv": {"month": 100.0}},
                       {"name": "CO2", "tag": "C", "unit": "percent", "o2_correction": False}]})


def test_fuel_co2_formula():
    # 1000 kNm³ natural gas × 36 GJ/kNm³ = 36 TJ × 56.1 t/TJ × 0.995 = 2009.48 t
    assert mass.fuel_co2_t(1000.0, 36.0, 56.1, 0.995) == pytest.approx(36 * 56.1 * 0.995)


def test_mass_rate_and_tonnes_per_day():
    n = 1440
    v = {"NOx": np.full(n, 80.0), "o2": np.full(n, 6.0), "flow": np.full(n, 100_000.0), "CO2": np.full(n, 10.0),
         "fuel:gas": np.full(n, 10.0)}
    v["NOx"][:30] = np.nan  # half an hour missing: filled with its hour's mean
    cfg = stack()
    p = Primary(T0, 60, n, v)
    r = averages.compute(cfg, p)
    day = r.averages["NOx"]["day"]
    # 80 mg/Nm³ (before O2 correction) × 100 000 Nm³/h = 8 kg/h; 24 h -> 192 kg
    assert day.mass_kg_h[0] == pytest.approx(8.0)
    assert day.mass_kg[0] == pytest.approx(192.0)
    assert r.averages["NOx"]["day"].value[0] == pytest.approx(80 * 18 / 15)  # the concentration is corrected
    tot = {t.pollutant: t for t in mass.totals(r, T0, T0 + 86400)}
    assert tot["NOx"].tonnes == pytest.approx(0.192) and tot["NOx"].gap_h == 0
    co2_kg_h = 10.0 * 1e4 * 44.01 / 22.414 * 100_000 * 1e-6  # 10 vol % measured CO2 × flow
    assert tot["CO2"].mean_kg_h == pytest.approx(co2_kg_h)
    fuel = mass.fuel_co2_by_period(cfg, cfg.fuels[0], p, "day")
    assert fuel.activity[0] == pytest.approx(240.0) and fuel.availability[0] == 1.0
    assert fuel.co2_t[0] == pytest.approx(240 * 36 / 1000 * 56.1)


def test_hours_without_valid_data_are_reported_as_gap():
    n = 120
    v = {"NOx": np.r_[np.full(60, np.nan), np.full(60, 50.0)], "o2": np.full(n, 3.0), "flow": np.full(n, 1e5)}
    r = averages.compute(stack(), Primary(T0, 60, n, v))
    t = {x.pollutant: x for x in mass.totals(r, T0, T0 + 7200)}["NOx"]
    assert t.tonnes == pytest.approx(0.005) and t.gap_h == pytest.approx(1.0) and t.operating_h == 2.0


def test_an_o2_outage_leaves_the_mass_whole():
    """The mass rate uses the concentration *without* the O2 correction: an hour whose O2 analyser was down is an
    invalid concentration average, but its NOx and flow give its mass (80 mg/Nm³ × 100 000 Nm³/h = 8 kg/h)."""
    n = 120
    o2 = np.full(n, 6.0)
    o2[60:] = np.nan  # the second hour without O2
    v = {"NOx": np.full(n, 80.0), "o2": o2, "flow": np.full(n, 100_000.0)}
    r = averages.compute(stack(), Primary(T0, 60, n, v))
    hours = r.averages["NOx"]["hour"]
    assert list(hours.valid) == [True, False]  # the concentration needs the O2, the mass does not
    assert hours.mass_kg_h == pytest.approx([8.0, 8.0]) and hours.mass_kg == pytest.approx([8.0, 8.0])
    t = {x.pollutant: x for x in mass.totals(r, T0, T0 + 7200)}["NOx"]
    assert t.tonnes == pytest.approx(0.016) and t.gap_h == 0 and t.mean_kg_h == pytest.approx(8.0)


def test_a_day_mean_mass_rate_is_its_mass_over_its_hours():
    """An hour of 80 mg/Nm³ (8 kg/h) and an hour of 160 mg/Nm³ (16 kg/h) of which only half is measured (an invalid
    concentration average, its mass filled from its own mean): 24 kg in 2 h is 12 kg/h for the day, as the report's
    mass totals say, not the 8 kg/h of the valid hour alone."""
    n = 120
    nox = np.r_[np.full(60, 80.0), np.full(30, 160.0), np.full(30, np.nan)]
    v = {"NOx": nox, "o2": np.full(n, 3.0), "flow": np.full(n, 100_000.0)}
    r = averages.compute(stack(), Primary(T0, 60, n, v))
    hours, day = r.averages["NOx"]["hour"], r.averages["NOx"]["day"]
    assert list(hours.valid) == [True, False] and hours.mass_kg == pytest.approx([8.0, 16.0])
    assert day.mass_kg[0] == pytest.approx(24.0)
    assert day.mass_kg_h[0] == pytest.approx(12.0)
    assert r.averages["NOx"]["month"].mass_kg_h[0] == pytest.approx(12.0)
    assert mass.totals(r, T0, T0 + 7200)[0].mean_kg_h == pytest.approx(12.0)
