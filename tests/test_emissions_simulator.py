"""The sample stack K1 against the plant simulator's boiler: normalisation recovers the simulator's
reference-O2 concentrations, and CO2 from the measured CO2 and flue-gas flow agrees with CO2 from the
fuel (two independent routes through the units: vol %, wet actual flow, temperature, pressure, H2O)."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from emissions import averages, mass
from emissions.config import load_stacks
from emissions.normalise import Primary

plant = pytest.importorskip("collectors.simulator.plant", reason="the plant simulator is not in this build")

SAMPLE = Path(__file__).resolve().parents[1] / "emissions" / "sample.toml"
START = datetime(2026, 1, 1, tzinfo=UTC)


def simulate(cfg, minutes: int) -> Primary:
    p = plant.Plant(plant.PlantConfig(seed=3, start=START))
    roles = {tag: role for role, tag in cfg.tags().items()}
    values = {role: np.full(minutes, np.nan) for role in cfg.tags()}
    for i in range(minutes):
        for s in p.step(60.0):
            role = roles.get(s.tag)
            if role is not None and s.value is not None and s.status == 0:
                values[role][i] = float(s.value)
    state = values.pop("state")
    return Primary(int(START.timestamp()), 60, minutes, values, {}, ~np.isin(state, cfg.excluded_states))


def test_sample_stack_on_the_simulated_boiler():
    cfg = load_stacks(tomllib.loads(SAMPLE.read_text())["stacks"])[0].model_copy(update={"timezone": "UTC"})
    primary = simulate(cfg, 1440)
    r = averages.compute(cfg, primary)
    day = {p: r.averages[p]["day"] for p in ("NOx", "SO2", "CO2")}
    assert all(bool(d.valid[0]) for d in day.values())
    # The simulator makes NOx at 3 % O2 as 62 + 25 × load/100 (+ noise), load 35-100 %: normalising the
    # analyser's dry values at measured O2 back to 3 % must land in that band.
    assert 62.0 < day["NOx"].value[0] < 87.0
    assert 15.0 < day["SO2"].value[0] < 30.0
    t0 = int(START.timestamp())
    co2_measured_t = {m.pollutant: m for m in mass.totals(r, t0, t0 + 86400)}["CO2"].tonnes
    fuel = mass.fuel_co2_by_period(cfg, cfg.fuels[0], primary, "day")
    assert co2_measured_t == pytest.approx(float(fuel.co2_t[0]), rel=0.05)
