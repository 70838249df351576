"""A centrifugal process-water pump (55 kW, 4-pole, 50 Hz) with bearing wear and process faults.

Flow follows the plant load; head follows a pump curve; motor current follows shaft power;
bearing temperature lags towards a load-, wear- and fault-dependent target. Bearing wear grows
by itself (exponentially, as degradation usually does) and faster under a bearing fault; the
vibration indicators come from a synthesised waveform (`vibration`). Wear 1.0 is the end of life:
vibration in ISO 20816-3 zone D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from collectors.simulator import vibration
from collectors.simulator.dynamics import OU, lag

SHUTOFF_HEAD_M = 62.0
SUCTION_BAR = 1.2
RATED_KW = 55.0


@dataclass(slots=True)
class PumpFaults:
    bearing: float = 0.0  # outer-race damage severity 0..1
    cavitation: float = 0.0  # 0..1
    stopped: bool = False


class Pump:
    def __init__(self, name: str, rng: np.random.Generator, *, nominal_flow_m3h: float, wear: float,
                 wear_rate_per_h: float) -> None:
        self.name = name
        self.rng = rng
        self.nominal_flow = nominal_flow_m3h
        self.wear = wear
        self.wear_rate_per_h = wear_rate_per_h
        self.bearing_temp: float | None = None
        self._flow_noise = OU(rng, 0.02, 60.0)
        self._current_noise = OU(rng, 0.4, 20.0)

    def step(self, dt_s: float, *, load_pct: float, ambient_c: float, faults: PumpFaults) -> dict[str, object]:
        """Advance ``dt_s`` simulated seconds; the pump's signals (without the asset prefix)."""
        rng = self.rng
        # Degradation: d(wear)/dt = rate * (0.2 + wear), faster with a damaged bearing; a running pump only.
        if not faults.stopped:
            growth = self.wear_rate_per_h * (1.0 + 2.0 * faults.bearing) * dt_s / 3600.0
            self.wear = min(1.5, self.wear + growth * (0.2 + self.wear) * rng.uniform(0.5, 1.5))
        room_c = max(ambient_c, 5.0) + 15.0  # pump hall
        if faults.stopped:
            self.bearing_temp = lag(self.bearing_temp or room_c, room_c, dt_s, 1800.0)
            sig = vibration.waveform(rng, shaft_hz=0.0, wear=0, bearing_fault=0, cavitation=0, flow_ratio=0)
            ind = vibration.indicators(sig)
            return self._signals(ind, 0.0, SUCTION_BAR + rng.normal(0, 0.02), 0.0, 0.0, False)

        ratio = (0.55 + 0.45 * load_pct / 100.0) * (1.0 + self._flow_noise.step(dt_s))
        cav = faults.cavitation
        if cav > 0:
            ratio *= (1.0 - 0.15 * cav) * (1.0 + 0.05 * cav * rng.normal())
        ratio = max(ratio, 0.05)
        flow = self.nominal_flow * ratio
        head = SHUTOFF_HEAD_M * (1.0 - 0.3 * ratio * ratio)
        if cav > 0:
            head *= (1.0 - 0.2 * cav) * (1.0 + 0.04 * cav * rng.normal())
        pressure = SUCTION_BAR + 0.0981 * head + rng.normal(0, 0.02)
        hydraulic_kw = 9.81 * (flow / 3600.0) * head
        efficiency = 0.78 - 0.25 * (ratio - 0.9) ** 2 - 0.05 * min(self.wear, 1.0)
        shaft_kw = hydraulic_kw / max(efficiency, 0.3)
        current = 12.0 + shaft_kw * 1000.0 / (math.sqrt(3) * 400.0 * 0.87 * 0.94) + self._current_noise.step(dt_s)
        if cav > 0:
            current += 2.0 * cav * rng.normal()
        speed = 1490.0 - 8.0 * shaft_kw / RATED_KW + rng.normal(0, 0.5)
        target = room_c + 18.0 + 12.0 * shaft_kw / RATED_KW + 30.0 * self.wear**2 + 20.0 * faults.bearing
        self.bearing_temp = lag(self.bearing_temp if self.bearing_temp is not None else target, target, dt_s, 1200.0)
        sig = vibration.waveform(rng, shaft_hz=speed / 60.0, wear=min(self.wear, 1.2), bearing_fault=faults.bearing,
                                 cavitation=cav, flow_ratio=ratio)
        return self._signals(vibration.indicators(sig), flow, pressure, current, speed, True)

    def _signals(self, ind: vibration.Indicators, flow: float, pressure: float, current: float, speed: float,
                 running: bool) -> dict[str, object]:
        noise = self.rng.normal(0, 0.1)
        return {
            "vib_de": round(ind.rms, 4), "vib_de_peak": round(ind.peak, 4), "vib_de_crest": round(ind.crest, 4),
            "vib_de_kurtosis": round(ind.kurtosis, 4), "bearing_temp": round(self.bearing_temp + noise, 3),
            "motor_current": round(max(current, 0.0), 3), "flow": round(flow, 3),
            "discharge_pressure": round(pressure, 4), "speed": round(speed, 2), "running": running,
        }
