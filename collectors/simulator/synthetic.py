"""N synthetic float signals for scale tests and benchmarks (``--tags N``), computed as one numpy vector.

Each is a slow sine with its own level, amplitude, period and phase plus a little noise, so every
value changes on every update (a subscription sees every write).
"""

from __future__ import annotations

import numpy as np

from collectors.simulator.tags import TagSpec, synthetic_tags


class SyntheticSignals:
    def __init__(self, n: int, seed: int = 1) -> None:
        rng = self.rng = np.random.default_rng([seed, 0x5E])
        self.specs: list[TagSpec] = synthetic_tags(n)
        self.names = [s.name for s in self.specs]
        self.level = rng.uniform(-50.0, 50.0, n)
        self.amplitude = rng.uniform(1.0, 20.0, n)
        self.omega = 2 * np.pi / rng.uniform(10.0, 600.0, n)
        self.phase = rng.uniform(0.0, 2 * np.pi, n)

    def values(self, t_s: float) -> list[float]:
        v = self.level + self.amplitude * np.sin(self.omega * t_s + self.phase)
        v += self.rng.normal(0.0, 0.01, v.size) * self.amplitude
        return np.round(v, 6).tolist()
