"""ISO 20816-3 vibration severity zones A-D for vibration velocity RMS (DESIGN.md §7).

Zones (ISO 20816-3:2022, clause 6 and Annex A; the same values as ISO 10816-3:2009 Table A.1):

- A: newly commissioned machines; B: acceptable for unrestricted long-term operation;
- C: unsatisfactory for long-term continuous operation (plan maintenance);
- D: severe enough to cause damage.

Default boundaries (A/B, B/C, C/D) of broad-band velocity RMS in mm/s, measured on bearing housings:

| machine group | rigid | flexible |
|---|---|---|
| 1: 300 kW - 50 MW (large machines)  | 2.3 / 4.5 / 7.1 | 3.5 / 7.1 / 11.0 |
| 2: 15 kW - 300 kW (medium machines) | 1.4 / 2.8 / 4.5 | 2.3 / 4.5 / 7.1  |

The standard says these are guidance values; plants set their own per asset (operating experience,
manufacturer's limits), so every asset may override its boundaries in configuration.
A value on a boundary belongs to the upper zone. "On" allows a relative millionth (`bounds.ON_BOUNDARY`): a window's
mean of readings all equal to a boundary comes out an ulp or two below it in floating point (the mean of 20
readings of 3 s each at 2.8 mm/s is 2.7999999999999994), and a sensor's float32 value of 7.1 is 7.0999999046 as a
double; either rated the lower zone for good, though no instrument resolves a millionth of a mm/s.
A zone change is reported once, with hysteresis: a value must fall ``hysteresis`` (relative) below a
boundary before the zone goes down, so a value hovering on a boundary does not flap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from maintenance.bounds import at_or_above

ZONES = ("A", "B", "C", "D")
DEFAULTS: dict[tuple[int, str], tuple[float, float, float]] = {
    (1, "rigid"): (2.3, 4.5, 7.1),
    (1, "flexible"): (3.5, 7.1, 11.0),
    (2, "rigid"): (1.4, 2.8, 4.5),
    (2, "flexible"): (2.3, 4.5, 7.1),
}
# Alert severity of entering a zone: B is normal operation, so only C and D raise.
SEVERITY = {"A": None, "B": None, "C": "warning", "D": "critical"}


class ZoneConfig(BaseModel):
    """Zone boundaries of one asset's vibration tags (``[[maintenance.assets]] iso20816 = {...}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: Literal[1, 2] = 2
    foundation: Literal["rigid", "flexible"] = "rigid"
    boundaries_mm_s: tuple[float, float, float] | None = Field(
        None, description="A/B, B/C, C/D in mm/s; default from the standard for the group and foundation")
    hysteresis: float = Field(0.05, ge=0.0, lt=0.5, description="relative drop below a boundary to go down a zone")

    @model_validator(mode="after")
    def _increasing(self) -> ZoneConfig:
        b = self.boundaries_mm_s
        if b is not None and not (0 < b[0] < b[1] < b[2]):
            raise ValueError(f"boundaries_mm_s must be positive and increasing (A/B < B/C < C/D), got {b}")
        return self

    @property
    def boundaries(self) -> tuple[float, float, float]:
        return self.boundaries_mm_s or DEFAULTS[(self.group, self.foundation)]


def zone(rms_mm_s: float, boundaries: tuple[float, float, float]) -> str:
    """The zone of a velocity RMS value; a value on a boundary (`bounds.at_or_above`) belongs to the upper zone."""
    if math.isnan(rms_mm_s):
        # NaN compares below no boundary: it read as zone D (critical) for a value that says nothing.
        raise ValueError("a vibration velocity of NaN has no ISO 20816 zone")
    for i, b in enumerate(boundaries):
        if not at_or_above(rms_mm_s, b):
            return ZONES[i]
    return ZONES[3]


@dataclass(slots=True)
class ZoneTracker:
    """Current zone of one tag with hysteresis; `update` returns the new zone on a change, else None."""

    config: ZoneConfig
    current: str | None = None

    def update(self, rms_mm_s: float) -> str | None:
        raw = zone(rms_mm_s, self.config.boundaries)
        if self.current is None:
            self.current = raw
            return raw
        cur = ZONES.index(self.current)
        new = ZONES.index(raw)
        if new > cur:
            self.current = raw
            return raw
        if new < cur:
            # Going down only once the value is clearly below the boundary of the current zone.
            lower_edge = self.config.boundaries[cur - 1]
            if rms_mm_s < lower_edge * (1.0 - self.config.hysteresis):
                target = zone(rms_mm_s / (1.0 - self.config.hysteresis), self.config.boundaries)
                target = ZONES[min(ZONES.index(target), cur - 1)]
                self.current = target
                return target
        return None
