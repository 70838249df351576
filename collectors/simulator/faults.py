"""Faults the simulator can inject, from the command line or from tests.

Command-line form: ``TARGET:KIND[@START][+DURATION][,key=value...]`` with times in simulated
seconds (suffix ``s``, ``m``, ``h`` or ``d`` allowed), for example::

    P-101:bearing                   outer-race bearing damage on pump P-101 from the start, for ever
    P-102:cavitation@10m+30m        cavitation from minute 10 to minute 40
    P-101.bearing_temp:freeze@60    the sensor value stops changing after one minute
    P-103.vib_de:sensor_failure@120+60   Bad status (BadSensorFailure), no value, for one minute
    K1.NOx:nan,p=0.05               5 % of NOx values are NaN
    K1.NOx:drift,rate=2             analyser drift of +2 units per simulated hour (also in its QAL3 checks)
    K1:shutdown@1h+2h               boiler shut-down, off, start-up over two hours

Process faults (``bearing``, ``cavitation``, ``stop``) target a pump, ``shutdown`` the boiler
stack; sensor faults (``freeze``, ``sensor_failure``, ``uncertain``, ``nan``, ``drift``) target a
tag or a whole asset (every tag of it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROCESS_KINDS = {"bearing", "cavitation", "stop", "shutdown"}
SENSOR_KINDS = {"freeze", "sensor_failure", "uncertain", "nan", "drift"}
KINDS = PROCESS_KINDS | SENSOR_KINDS

# OPC UA status codes the sensor faults report.
BAD_SENSOR_FAILURE = 0x808C0000
UNCERTAIN_SENSOR_NOT_ACCURATE = 0x40930000

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(slots=True)
class Fault:
    """One injected fault, active on ``[start_s, start_s + duration_s)`` of simulated time."""

    target: str
    kind: str
    start_s: float = 0.0
    duration_s: float | None = None  # None: until cleared
    severity: float = 1.0  # bearing, cavitation: 0..1
    probability: float = 0.1  # nan: share of samples
    rate_per_h: float = 1.0  # drift: engineering units per simulated hour

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(sorted(KINDS))}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within 0..1")

    def active(self, t_s: float) -> bool:
        return t_s >= self.start_s and (self.duration_s is None or t_s < self.start_s + self.duration_s)

    def elapsed(self, t_s: float) -> float:
        return max(0.0, t_s - self.start_s)

    def applies_to(self, tag: str) -> bool:
        """A sensor fault on ``P-101`` covers ``P-101.*``; on ``P-101.flow`` only that tag."""
        return tag == self.target or ("." not in self.target and tag.startswith(self.target + "."))


def seconds(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (e.g. 90, 90s, 10m, 2h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


_SPEC = re.compile(r"^(?P<target>[^:@+,]+):(?P<kind>[a-z_]+)(?:@(?P<start>[^+,]+))?(?:\+(?P<dur>[^,]+))?"
                   r"(?P<opts>(?:,[a-z_]+=[^,]+)*)$")
_OPTS = {"severity": "severity", "p": "probability", "probability": "probability", "rate": "rate_per_h"}


def parse(spec: str) -> Fault:
    """A `Fault` from its command-line form; ValueError with the expected form otherwise."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise ValueError(f"fault {spec!r}: expected TARGET:KIND[@START][+DURATION][,key=value], "
                         "e.g. P-101:bearing@10m+1h,severity=0.7")
    kwargs: dict[str, float] = {}
    for opt in filter(None, m.group("opts").split(",")):
        key, _, value = opt.partition("=")
        if key not in _OPTS:
            raise ValueError(f"fault {spec!r}: unknown option {key!r}; one of severity, p, rate")
        kwargs[_OPTS[key]] = float(value)
    try:
        return Fault(target=m.group("target"), kind=m.group("kind"),
                     start_s=seconds(m.group("start")) if m.group("start") else 0.0,
                     duration_s=seconds(m.group("dur")) if m.group("dur") else None, **kwargs)
    except ValueError as exc:
        raise ValueError(f"fault {spec!r}: {exc}") from None
