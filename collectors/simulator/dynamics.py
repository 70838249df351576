"""Small stochastic building blocks shared by the plant models (exact for any step length)."""

from __future__ import annotations

import math

import numpy as np


class OU:
    """Ornstein-Uhlenbeck noise: mean 0, standard deviation ``sigma``, correlation time ``tau_s``.

    Uses the exact discretisation, so a step of an hour (fast replay) is as valid as a step of a second.
    """

    __slots__ = ("rng", "sigma", "tau_s", "x")

    def __init__(self, rng: np.random.Generator, sigma: float, tau_s: float) -> None:
        self.rng, self.sigma, self.tau_s = rng, sigma, tau_s
        self.x = rng.normal(0.0, sigma)

    def step(self, dt_s: float) -> float:
        a = math.exp(-dt_s / self.tau_s)
        self.x = self.x * a + self.sigma * math.sqrt(1.0 - a * a) * self.rng.normal()
        return self.x


def lag(current: float, target: float, dt_s: float, tau_s: float) -> float:
    """First-order lag towards ``target`` (temperatures, ramps)."""
    return target + (current - target) * math.exp(-dt_s / tau_s)


def daily(t_of_day_h: float, peak_h: float) -> float:
    """A daily cycle in -1..1 that peaks at ``peak_h`` o'clock."""
    return math.cos(2 * math.pi * (t_of_day_h - peak_h) / 24.0)
