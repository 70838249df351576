"""A 120 MW natural-gas boiler and its stack (continuous emission monitoring signals).

Load follows a daily profile with slow random variation. Fuel and steam follow load; excess air
(O2) falls as load rises; NOx rises with load; CO rises sharply when O2 gets low and during
start-up. Pollutants are produced as values at 3 % O2 and reported the way an extractive analyser
measures them: mg/m3, dry, 273.15 K and 101.325 kPa, at the *measured* O2
(E_meas = E_ref x (21 - O2) / 18). The operating state follows the emissions convention:
0 off, 1 start-up, 2 normal operation, 3 shut-down.
A shut-down fault runs shut-down (first 15 %), off, start-up (last 30 %) over its duration.
"""

from __future__ import annotations

import math

import numpy as np

from collectors.simulator.dynamics import OU, daily, lag

RATED_FUEL_KNM3H = 12.0  # 120 MW / 36 MJ/Nm3
RATED_STEAM_TH = 150.0
SPAN_GAS = 80.0  # NOx span gas, mg/m3
OFF, STARTUP, NORMAL, SHUTDOWN = 0, 1, 2, 3


class Boiler:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.load = 70.0
        self.temp_c: float | None = None
        self._load = OU(rng, 4.0, 1800.0)
        self._o2 = OU(rng, 0.25, 300.0)
        self._nox = OU(rng, 5.0, 600.0)
        self._so2 = OU(rng, 4.0, 3600.0)
        self._dust = OU(rng, 0.4, 900.0)
        self._temp = OU(rng, 1.5, 300.0)
        self._pressure = OU(rng, 0.5, 6 * 3600.0)

    def state_for(self, shutdown_progress: float | None) -> int:
        """Operating state at this point of a shut-down fault (None: no shut-down in progress)."""
        if shutdown_progress is None:
            return NORMAL
        if shutdown_progress < 0.15:
            return SHUTDOWN
        return OFF if shutdown_progress < 0.7 else STARTUP

    def step(self, dt_s: float, *, hour_of_day: float, ambient_c: float, shutdown_progress: float | None,
             nox_offset: float) -> dict[str, object]:
        """Advance ``dt_s``; signals without the stack prefix (QAL3 checks are the plant's)."""
        rng = self.rng
        state = self.state_for(shutdown_progress)
        profile = 72.0 + 15.0 * daily(hour_of_day, 14.0) + self._load.step(dt_s)
        if state == NORMAL:
            self.load = min(max(profile, 35.0), 100.0)
        elif state == SHUTDOWN:
            self.load = lag(self.load, 0.0, dt_s, 300.0)
        elif state == OFF:
            self.load = 0.0
        else:  # start-up: ramps towards 40 % over the last part of the fault window
            self.load = 40.0 * min(1.0, max(0.0, ((shutdown_progress or 0.0) - 0.7) / 0.3))
        firing = self.load > 1.0
        o2 = 5.8 - 2.6 * self.load / 100.0 + self._o2.step(dt_s) + (2.0 if state == STARTUP else 0.0)
        o2 = min(max(o2, 0.8), 20.9) if firing else 20.9 + rng.normal(0, 0.02)
        fuel = RATED_FUEL_KNM3H * self.load / 100.0 * (1.0 + 0.01 * rng.normal()) if firing else 0.0
        steam = RATED_STEAM_TH * self.load / 100.0 * (1.0 + 0.01 * rng.normal()) if firing else 0.0
        t_target = (95.0 + 45.0 * self.load / 100.0 + self._temp.step(dt_s)) if firing else ambient_c + 20.0
        self.temp_c = lag(self.temp_c if self.temp_c is not None else t_target, t_target, dt_s, 600.0)
        pressure = 101.3 - 0.15 + self._pressure.step(dt_s)
        excess = 21.0 / (21.0 - min(o2, 20.5))  # lambda
        if firing:
            dry_n = fuel * 1000.0 * (8.5 + 9.5 * (excess - 1.0))
            water_n = fuel * 1000.0 * 2.0 + 0.01 * dry_n
            h2o = 100.0 * water_n / (dry_n + water_n)
        else:
            dry_n, h2o = 5000.0, 1.0 + rng.normal(0, 0.05)
            water_n = dry_n * h2o / 100.0
        flow_actual = (dry_n + water_n) * (self.temp_c + 273.15) / 273.15 * 101.325 / pressure
        to_meas = (21.0 - o2) / 18.0  # from 3 % O2 reference to measured O2
        nox_ref = (62.0 + 25.0 * self.load / 100.0 + self._nox.step(dt_s)) * (1.3 if state == STARTUP else 1.0)
        co_ref = 4.0 + 60.0 * math.exp(-(o2 - 1.2) / 0.4) + (80.0 if state == STARTUP else 0.0)
        co_ref *= math.exp(rng.normal(0, 0.15))
        so2_ref = max(0.0, 22.0 + self._so2.step(dt_s))
        dust_ref = max(0.0, 1.5 + self._dust.step(dt_s))
        if not firing:
            nox_ref = co_ref = so2_ref = dust_ref = 0.0

        def analyser(v: float) -> float:
            return v + rng.normal(0, 0.01 * abs(v) + 0.3)

        return {
            "NOx": round(analyser(nox_ref * to_meas) + nox_offset, 3), "CO": round(analyser(co_ref * to_meas), 3),
            "SO2": round(analyser(so2_ref * to_meas), 3), "dust": round(max(0.0, analyser(dust_ref * to_meas)), 3),
            "O2": round(o2, 3), "CO2": round(11.7 * (21.0 - o2) / 21.0 if firing else 0.04, 3), "H2O": round(h2o, 3),
            "flow": round(flow_actual, 1), "T": round(self.temp_c, 2), "p": round(pressure, 3), "state": state,
            "load": round(self.load, 2), "fuel": round(fuel, 4), "steam": round(steam, 2),
        }

    def qal3_check(self, nox_offset: float) -> dict[str, object]:
        """One automatic zero and span check of the NOx analyser (drift shows in both)."""
        return {"NOx.zero": round(nox_offset + self.rng.normal(0, 0.4), 3),
                "NOx.span": round(SPAN_GAS + nox_offset + self.rng.normal(0, 0.8), 3)}
