"""A short vibration velocity waveform per pump and the indicators a condition monitor derives from it.

The waveform (``SAMPLES`` points at ``FS_HZ``, one second) is the sum of running-speed harmonics,
vane-pass, broadband noise that grows with bearing wear, impacts ringing at a structural resonance
when the outer race is damaged (repeating at the ball-pass frequency), and random bursts under
cavitation. Indicators: velocity RMS, peak, crest factor (peak / RMS) and kurtosis (Pearson:
3 for Gaussian noise, larger for impacts). Pure numpy; the caller owns the random generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FS_HZ = 2560.0
SAMPLES = 2560
# Outer-race ball-pass frequency / shaft frequency: a 6205's (9 balls of 7.94 mm on a 39.04 mm pitch circle:
# 4.5 x (1 - 7.94/39.04) = 3.58, the drive-end bearing of the CWRU bearing data), not a 6309's (8 x 17.46 mm on
# 72.5 mm: 3.04) as this once said.
BPFO_ORDER = 3.58
VANES = 6
RESONANCE_HZ = 780.0

_T = np.arange(SAMPLES) / FS_HZ


@dataclass(slots=True)
class Indicators:
    rms: float
    peak: float
    crest: float
    kurtosis: float


def waveform(rng: np.random.Generator, *, shaft_hz: float, wear: float, bearing_fault: float,
             cavitation: float, flow_ratio: float) -> np.ndarray:
    """Velocity (mm/s) over one second. ``wear``, ``bearing_fault``, ``cavitation`` are 0..1."""
    if shaft_hz <= 0:
        return rng.normal(0.0, 0.03, SAMPLES)  # a stopped pump still sees floor vibration
    w = 2 * np.pi * shaft_hz
    phase = rng.uniform(0, 2 * np.pi, 3)
    one_x = 1.3 * (1.0 + 2.0 * wear)
    sig = one_x * np.sin(w * _T + phase[0])
    sig += 0.45 * (1.0 + 0.8 * wear) * np.sin(2 * w * _T + phase[1])
    # Vane pass grows away from the best-efficiency flow.
    sig += 0.35 * (1.0 + 2.0 * abs(1.0 - flow_ratio)) * np.sin(VANES * w * _T + phase[2])
    sig += rng.normal(0.0, 0.25 + 4.5 * wear * wear, SAMPLES)
    if bearing_fault > 0:
        sig += _impacts(rng, shaft_hz * BPFO_ORDER, 9.0 * bearing_fault)
    if cavitation > 0:
        sig += _bursts(rng, 2.5 * cavitation)
    return sig


def _impacts(rng: np.random.Generator, rate_hz: float, amplitude: float) -> np.ndarray:
    """Decaying resonance rings started at each impact (with a little timing jitter)."""
    out = np.zeros(SAMPLES)
    ring_len = 96
    ring = np.exp(-np.arange(ring_len) / 5.0) * np.sin(2 * np.pi * RESONANCE_HZ * np.arange(ring_len) / FS_HZ)
    period = FS_HZ / rate_hz
    starts = np.arange(rng.uniform(0, period), SAMPLES - ring_len, period)
    starts = (starts + rng.normal(0, 0.02 * period, starts.size)).astype(int).clip(0, SAMPLES - ring_len - 1)
    amps = amplitude * rng.uniform(0.6, 1.0, starts.size)
    for s, a in zip(starts, amps, strict=True):
        out[s:s + ring_len] += a * ring
    return out


def _bursts(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Cavitation: broadband noise in random short bursts (collapsing vapour bubbles)."""
    envelope = (rng.random(SAMPLES // 32) < 0.6).repeat(32).astype(float)
    return amplitude * envelope * rng.normal(0.0, 1.0, SAMPLES)


def indicators(sig: np.ndarray) -> Indicators:
    centred = sig - sig.mean()
    var = float(np.mean(centred * centred))
    rms = float(np.sqrt(np.mean(sig * sig)))
    peak = float(np.max(np.abs(sig)))
    kurt = float(np.mean(centred**4) / (var * var)) if var > 0 else 0.0
    return Indicators(rms=rms, peak=peak, crest=peak / rms if rms > 0 else 0.0, kurtosis=kurt)
