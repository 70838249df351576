"""The simulated KIP-style plant: pumps, a boiler stack, site signals, and injected faults.

Pure and deterministic: the same `PlantConfig` (seed included), the same faults and the same
sequence of ``step(dt_s)`` calls give the same samples, whatever the wall clock says. Every
asset draws from its own random stream (spawned from the seed), so adding a fault on one pump
does not change the noise of another.

    plant = Plant(PlantConfig(seed=7))
    plant.inject("P-101:bearing@1h")        # or a `Fault`
    for _ in range(3600):
        samples = plant.step(1.0)           # [Sample(tag, value, status), ...]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np

from collectors.simulator import faults as faultlib
from collectors.simulator.boiler import Boiler
from collectors.simulator.dynamics import OU, daily
from collectors.simulator.faults import Fault
from collectors.simulator.pump import Pump, PumpFaults
from collectors.simulator.tags import TagSpec, catalogue

Value = float | int | bool | None


class Sample(NamedTuple):
    tag: str
    value: Value
    status: int = 0  # OPC UA status code; 0 = Good


@dataclass(frozen=True, slots=True)
class PlantConfig:
    seed: int = 1
    pumps: tuple[str, ...] = ("P-101", "P-102", "P-103")
    stack: str = "K1"
    site: str = "SITE"
    nominal_flow_m3h: tuple[float, ...] = (180.0, 180.0, 120.0)
    wear: tuple[float, ...] = (0.05, 0.15, 0.35)  # initial bearing wear, 1.0 = end of life
    wear_rate_per_h: tuple[float, ...] = (0.002, 0.004, 0.012)
    qal3_interval_s: float = 6 * 3600.0  # automatic zero/span checks of the NOx analyser
    # Only the time of day is taken from here (load and ambient follow daily cycles).
    start: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))


class Plant:
    def __init__(self, config: PlantConfig | None = None, faults: list[Fault | str] = ()) -> None:
        self.config = cfg = config or PlantConfig()
        if not len(cfg.pumps) == len(cfg.nominal_flow_m3h) == len(cfg.wear) == len(cfg.wear_rate_per_h):
            raise ValueError("pumps, nominal_flow_m3h, wear and wear_rate_per_h need one entry per pump")
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(len(cfg.pumps) + 3)]
        self.pumps = [Pump(name, streams[i], nominal_flow_m3h=q, wear=w, wear_rate_per_h=r)
                      for i, (name, q, w, r) in enumerate(zip(cfg.pumps, cfg.nominal_flow_m3h, cfg.wear,
                                                             cfg.wear_rate_per_h, strict=True))]
        self.boiler = Boiler(streams[-3])
        self._fault_rng = streams[-2]
        self._ambient = OU(streams[-1], 1.5, 3 * 3600.0)
        self.tags: list[TagSpec] = catalogue(list(cfg.pumps), cfg.stack, cfg.site)
        self.t_s = 0.0
        self.faults: list[Fault] = []
        self._frozen: dict[tuple[int, str], Value] = {}
        self._next_qal3 = 0.0
        for f in faults:
            self.inject(f)

    # -- faults (the test API) -------------------------------------------------------------------------

    def inject(self, fault: Fault | str, *, from_now: bool = False) -> Fault:
        """Add a fault (a `Fault` or its command-line form). ``from_now``: its start counts from now."""
        f = faultlib.parse(fault) if isinstance(fault, str) else fault
        self._check_target(f)
        if from_now:
            f.start_s += self.t_s
        self.faults.append(f)
        return f

    def clear(self, target: str | None = None, kind: str | None = None) -> int:
        """Remove faults matching ``target`` and/or ``kind`` (all if both None); returns how many."""
        keep = [f for f in self.faults if (target and f.target != target) or (kind and f.kind != kind)]
        removed = len(self.faults) - len(keep)
        self.faults = keep
        return removed

    def _check_target(self, f: Fault) -> None:
        cfg = self.config
        if f.kind in ("bearing", "cavitation", "stop") and f.target not in cfg.pumps:
            raise ValueError(f"fault {f.kind}: target must be a pump ({', '.join(cfg.pumps)}), not {f.target!r}")
        if f.kind == "shutdown" and f.target != cfg.stack:
            raise ValueError(f"fault shutdown: target must be the boiler stack {cfg.stack!r}, not {f.target!r}")
        if f.kind in faultlib.SENSOR_KINDS and not any(f.applies_to(t.name) for t in self.tags):
            raise ValueError(f"fault {f.kind}: no tag or asset named {f.target!r}")

    def _active(self, t: float, kind: str, target: str) -> list[Fault]:
        return [f for f in self.faults if f.kind == kind and f.target == target and f.active(t)]

    # -- simulation ------------------------------------------------------------------------------------

    def step(self, dt_s: float) -> list[Sample]:
        """Advance ``dt_s`` simulated seconds and return every tag's value at the end of the step."""
        cfg = self.config
        t = self.t_s = self.t_s + dt_s
        hour = ((cfg.start.timestamp() + t) / 3600.0) % 24.0
        ambient = 2.0 + 4.0 * daily(hour, 15.0) + self._ambient.step(dt_s)
        shutdowns = self._active(t, "shutdown", cfg.stack)
        progress = None
        if shutdowns:
            f = shutdowns[0]
            progress = f.elapsed(t) / f.duration_s if f.duration_s else min(f.elapsed(t) / 6000.0, 0.69)
        nox_tag = f"{cfg.stack}.NOx"
        # A drift on the whole stack (K1:drift) covers its NOx too: only K1.NOx:drift reached the analyser, and K1's
        # drift moved every other K1 tag while NOx stayed put.
        nox_offset = sum(f.rate_per_h * f.elapsed(t) / 3600.0 for f in self.faults
                         if f.kind == "drift" and f.applies_to(nox_tag) and f.active(t))
        values: dict[str, Value] = {}
        stack = self.boiler.step(dt_s, hour_of_day=hour, ambient_c=ambient, shutdown_progress=progress,
                                 nox_offset=nox_offset)
        for pump in self.pumps:
            pf = PumpFaults(bearing=max((f.severity for f in self._active(t, "bearing", pump.name)), default=0.0),
                            cavitation=max((f.severity for f in self._active(t, "cavitation", pump.name)),
                                           default=0.0),
                            stopped=bool(self._active(t, "stop", pump.name)))
            for sig, v in pump.step(dt_s, load_pct=max(self.boiler.load, 30.0), ambient_c=ambient, faults=pf).items():
                values[f"{pump.name}.{sig}"] = v
        for sig, v in stack.items():
            values[f"{cfg.stack}.{sig}"] = v
        if t >= self._next_qal3:
            self._next_qal3 = t + cfg.qal3_interval_s
            for sig, v in self.boiler.qal3_check(nox_offset).items():
                values[f"{cfg.stack}.{sig}"] = v
        values[f"{cfg.site}.ambient_temp"] = round(ambient, 2)
        return [self._sensor(t, tag, v, nox_tag) for tag, v in values.items()]

    def _sensor(self, t: float, tag: str, value: Value, nox_tag: str) -> Sample:
        """What the instrument reports: the process value through any active sensor faults."""
        status = 0
        for f in self.faults:
            if f.kind not in faultlib.SENSOR_KINDS or not f.applies_to(tag):
                continue
            key = (id(f), tag)
            if not f.active(t):
                self._frozen.pop(key, None)
                continue
            if f.kind == "freeze":
                value = self._frozen.setdefault(key, value)
            elif f.kind == "drift" and isinstance(value, float) and not (
                    f.applies_to(nox_tag) and (tag == nox_tag or tag.startswith(nox_tag + "."))):
                # (the NOx analyser's drift, in its checks too, is the boiler model's nox_offset, applied once)
                value = round(value + f.rate_per_h * f.elapsed(t) / 3600.0, 4)
            elif f.kind == "nan" and isinstance(value, float) and self._fault_rng.random() < f.probability:
                value = math.nan
            elif f.kind == "uncertain":
                status = status or faultlib.UNCERTAIN_SENSOR_NOT_ACCURATE
            elif f.kind == "sensor_failure":
                status, value = faultlib.BAD_SENSOR_FAILURE, None
        return Sample(tag, value, status)
