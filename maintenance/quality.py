"""Data quality in condition monitoring: what a validation flag means for a machine alert (DESIGN.md §2, §7).

The validator (`edge.validate`) keeps every raw value and says what is wrong with it in flags. Maintenance sorts a
reading into one class (worst first) and treats the classes differently (maintenance/README.md, "Data quality"):

- ``bad`` (quality BAD: not finite, wrong type, the device's Bad status), ``frozen`` (FROZEN), ``source_uncertain``
  (the device's own Uncertain status, a substituted or an MQTT retained value: not a current measurement) are
  *sensor problems*: left out of every machine condition, like a missing reading;
- ``out_of_range`` (OUT_OF_RANGE) is an *unusual value*: a broken loop or a saturated transmitter, or a machine
  vibrating beyond what the sensor was expected to see. With ``out_of_range = "unverified"`` (default) it may raise
  a machine condition, one severity lower and marked unverified, and never lowers a zone or clears an alert;
  ``"sensor"`` treats it as a sensor problem (4-20 mA loops: NAMUR NE 43 failure currents); ``"value"`` as a
  measurement (the behaviour before this module);
- ``good``: quality GOOD, or UNCERTAIN only for its time (STALE_TIME: a backlog older than ``max_age_s``;
  NO_SOURCE_TIME, UNKNOWN_TAG): the value itself is a measurement.

`SensorWatch` turns each closed indicator window into one 'sensor' condition per watched tag (mostly flagged, or
silent for ``no_data_after_s``), so a sensor fault pages as what it is, with the alert lifecycle of every other
condition (de-duplication, clear delay, suppression in maintenance windows, escalation).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge.records import Flag, Quality, Reading
from edge.validate import rule_names
from maintenance.alerts import SEVERITIES, AlertChange, AlertManager, dedup_key

# Class of a reading; in a window, MISSING is a slot without one.
MISSING, GOOD, OUT_OF_RANGE, FROZEN, BAD, SOURCE = range(6)
NAMES = ("missing", "good", "out_of_range", "frozen", "bad", "source_uncertain")
DESCRIBE = {OUT_OF_RANGE: "out of range", FROZEN: "frozen", BAD: "bad (not a number, wrong type or device Bad)",
            SOURCE: "uncertain at the source (device status, substituted or retained value)"}
FLAGGED = (OUT_OF_RANGE, FROZEN, BAD, SOURCE)
_FROZEN, _RANGE = int(Flag.FROZEN), int(Flag.OUT_OF_RANGE)
_NOT_MEASURED = int(Flag.SUBSTITUTED | Flag.RETAINED)
# Flags that explain an UNCERTAIN quality by the time alone, or by the range: what is left is the device's own doubt.
_EXPLAINED = int(Flag.OUT_OF_RANGE | Flag.STALE_TIME | Flag.FUTURE_TIME | Flag.FROZEN)


class SilenceConfig(BaseModel):
    """``[[maintenance.quality.silence]]``: tags that are silent by design (reported by exception: an OPC UA
    subscription with a deadband, MQTT publish-on-change), with their own limit for the 'no data' sensor alert."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tags: tuple[str, ...] = Field(min_length=1, description="tag names or patterns (fnmatch: 'P-101.valve_*')")
    no_data_after_s: float = Field(ge=0, description="the longest a healthy one stays silent (its device's integrity "
                                                     "report or heartbeat period, with a margin); 0: never")
    heartbeat: str | None = Field(None, min_length=1, description="a tag of the same source (device, PLC, MQTT "
                                                                  "client) that reports periodically: while it is "
                                                                  "silent too, the source is down, not each sensor")


class QualityConfig(BaseModel):
    """``[maintenance.quality]``: how flagged readings weigh in machine alerts, and the 'sensor' alerts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_share: float = Field(0.5, ge=0, le=1, description="a zone or a rule on an indicator moves only on windows "
                                                          "with this share of usable readings (good, and out of "
                                                          "range unless out_of_range = 'sensor'); RUL alerts only "
                                                          "on cycles with good readings of this share of the "
                                                          "model's tags")
    out_of_range: Literal["unverified", "sensor", "value"] = Field(
        "unverified", description="unverified: may raise a machine alert one severity lower, marked, never clear one; "
                                  "sensor: left out like a frozen value; value: used like a good one")
    sensor_alerts: bool = Field(True, description="a 'sensor' alert per watched tag whose readings are mostly "
                                                  "flagged or missing")
    sensor_share: float = Field(0.5, gt=0, le=1, description="flagged readings fill this share of a window: the "
                                                             "tag's sensor alert is active")
    no_data_after_s: float = Field(300.0, ge=0, description="a watched tag silent this long while others report: "
                                                            "a sensor alert (0: never)")
    sensor_severity: Literal["info", "warning", "critical"] = "warning"
    silence: tuple[SilenceConfig, ...] = Field((), description="tags reported by exception: their own no-data limit "
                                                               "and heartbeat (the first group naming a tag)")

    def silence_of(self, tag: str) -> SilenceConfig | None:
        """The first ``silence`` group whose names or patterns take ``tag`` (None: the default limit)."""
        return next((g for g in self.silence if any(fnmatchcase(tag, p) for p in g.tags)), None)


def classify(quality: np.ndarray, flags: np.ndarray, values: np.ndarray, out_of_range: str = "unverified"
             ) -> np.ndarray:
    """Class of each reading (int8) from its quality, flags and value (NaN: no number)."""
    quality = np.asarray(quality)
    flags = np.asarray(flags, np.int64)
    cls = np.full(quality.shape, GOOD, np.int8)
    if out_of_range != "value":
        cls[(flags & _RANGE) != 0] = OUT_OF_RANGE
    cls[(quality >= Quality.UNCERTAIN) & ((flags & _EXPLAINED) == 0)] = SOURCE
    cls[(flags & _NOT_MEASURED) != 0] = SOURCE
    cls[(flags & _FROZEN) != 0] = FROZEN
    cls[(quality >= Quality.BAD) | ~np.isfinite(np.asarray(values, float))] = BAD
    return cls


def classify_reading(r: Reading, value: float, out_of_range: str = "unverified") -> int:
    """`classify` of one reading, without numpy (rules see readings one at a time, most of them good)."""
    q, f = int(r.quality), r.flags
    if q >= Quality.BAD or not math.isfinite(value):
        return BAD
    if q == Quality.GOOD and not f:
        return GOOD
    if f & _FROZEN:
        return FROZEN
    if f & _NOT_MEASURED or (q >= Quality.UNCERTAIN and not f & _EXPLAINED):
        return SOURCE
    if f & _RANGE and out_of_range != "value":
        return OUT_OF_RANGE
    return GOOD


def usable(cls: np.ndarray, out_of_range: str = "unverified") -> np.ndarray:
    """Readings whose value enters machine conditions: good ones, and out of range ones when unverified."""
    return (cls == GOOD) | ((cls == OUT_OF_RANGE) & (out_of_range == "unverified"))


def lower(severity: str) -> str:
    """One severity step down (an unverified condition)."""
    return SEVERITIES[max(SEVERITIES.index(severity) - 1, 0)]


def data_quality(counts: np.ndarray, slots: int, **extra) -> dict:
    """The evidence of an alert about the data behind it: share of each class in the window (per `NAMES`)."""
    total = max(int(slots), 1)
    out = {name: round(float(counts[c]) / total, 3) for c, name in enumerate(NAMES)}
    out["readings"] = int(counts[GOOD:].sum())
    return {**out, **extra}


def one_reading(cls: int, r: Reading) -> dict:
    """`data_quality` of a condition judged on one reading (threshold rules)."""
    counts = np.zeros(len(NAMES))
    counts[cls] = 1
    return data_quality(counts, 1, flags=rule_names(r.flags), quality=Quality(r.quality).name.lower())


class SensorWatch:
    """One 'sensor' condition per watched tag, judged at each closed indicator window.

    ``tags``: the indicator engine's series, in its row order; ``assets``: tag -> asset for the watched ones.
    Active while flagged readings fill ``sensor_share`` of the window, or the tag has sent nothing for
    ``no_data_after_s`` (a tag of a ``silence`` group: its own limit, and not while its source's heartbeat is silent
    too); it clears (after the alert policy's ``clear_after_s``) once the data is usable again.
    """

    def __init__(self, tags: list[str], assets: dict[str, str], config: QualityConfig, manager: AlertManager,
                 window_s: float) -> None:
        """``tags`` must hold the ``heartbeat`` tags of ``config.silence`` (`MaintenanceLive` adds them as series)."""
        self.config = config
        self.manager = manager
        self.window_s = window_s
        self.tags = tags
        self.watched = np.array([t in assets for t in tags], bool)
        self.asset = [assets.get(t, "") for t in tags]
        self.key = {dedup_key(assets[t], t, "sensor"): i for i, t in enumerate(tags) if t in assets}
        # Per series: seconds of silence that make it 'no data' (inf: never), and the row of its source's heartbeat.
        self.row = row = {t: i for i, t in enumerate(tags)}
        self.block_active: dict[str, bool] = {}  # waveform tag -> whether its latest block's condition was active
        self.limit = np.full(len(tags), config.no_data_after_s or math.inf)
        self.heartbeat = np.full(len(tags), -1, np.int64)
        for i, t in enumerate(tags):
            g = config.silence_of(t)
            if g is not None:
                self.limit[i] = g.no_data_after_s or math.inf
                self.heartbeat[i] = row[g.heartbeat] if g.heartbeat else -1

    def window(self, t: datetime, counts: np.ndarray, slots: np.ndarray, silent_s: np.ndarray) -> list[AlertChange]:
        """Conditions of the window ending at ``t``: ``counts`` (series x classes), ``slots`` and ``silent_s`` per
        series (``slots``: the readings the series' sampling step leaves room for, `indicators.expected_readings`)."""
        if not self.config.sensor_alerts or not self.watched.any():
            return []
        flagged = counts[:, list(FLAGGED)].sum(axis=1)
        silent = silent_s >= self.limit
        beat = self.heartbeat >= 0
        if beat.any():
            # A tag whose source's heartbeat is silent too: the source (device, link) is down, not the sensor. The
            # heartbeat, a watched tag, says so once rather than one alert per tag of that source.
            hb = self.heartbeat[beat]
            silent[beat] &= silent_s[hb] < self.limit[hb]
        active = self.watched & ((flagged >= self.config.sensor_share * slots) | silent)
        rows = set(np.flatnonzero(active).tolist())
        # Calm tags matter only with an alert waiting to clear: a few open alerts, not every watched tag.
        rows.update(self.key[k] for k in self.manager.open if k in self.key)
        out: list[AlertChange] = []
        for i in sorted(rows):
            tag, asset = self.tags[i], self.asset[i]
            if not active[i]:
                out.extend(self.manager.observe(asset=asset, tag=tag, kind="sensor", active=False, t=t))
                continue
            no_data = (float(silent_s[i]), float(self.limit[i])) if silent[i] and flagged[i] == 0 else None
            out.extend(self._active(asset, tag, t, counts[i], int(slots[i]), self.window_s,
                                    f"the last {self.window_s:g} s", no_data))
        return out

    def block(self, asset: str, tag: str, t: datetime, counts: np.ndarray, span_s: float) -> list[AlertChange]:
        """The condition of a waveform tag at one of its blocks (``counts``: its samples per class, ``span_s`` long,
        ending at ``t``): active while flagged samples fill ``sensor_share`` of it, as a scalar tag's window."""
        if not self.config.sensor_alerts:
            return []
        n = int(counts.sum())
        self.block_active[tag] = active = bool(counts[list(FLAGGED)].sum() >= self.config.sensor_share * n)
        if active:
            return self._active(asset, tag, t, counts, n, span_s, f"a block of {n} samples")
        if dedup_key(asset, tag, "sensor") not in self.manager.open:
            return []
        return self.manager.observe(asset=asset, tag=tag, kind="sensor", active=False, t=t)

    def silence(self, asset: str, tag: str, t: datetime, silent_s: float, series_silent_s: np.ndarray
                ) -> list[AlertChange]:
        """A waveform tag's 'no data' condition at the indicator window ending at ``t``: sent nothing for
        ``silent_s``, judged as a scalar tag's silence (its ``silence`` group's limit and heartbeat, whose silence is
        read from ``series_silent_s``). While its latest block's condition is active, that one holds the alert."""
        if not self.config.sensor_alerts:
            return []
        g = self.config.silence_of(tag)
        limit = (g.no_data_after_s if g is not None else self.config.no_data_after_s) or math.inf
        active = silent_s >= limit
        if active and g is not None and g.heartbeat:
            hb = self.row[g.heartbeat]
            active = bool(series_silent_s[hb] < self.limit[hb])
        if active:
            counts = np.zeros(len(NAMES))
            counts[MISSING] = 1
            return self._active(asset, tag, t, counts, 1, self.window_s, "", no_data=(silent_s, limit))
        if self.block_active.get(tag) or dedup_key(asset, tag, "sensor") not in self.manager.open:
            return []
        return self.manager.observe(asset=asset, tag=tag, kind="sensor", active=False, t=t)

    def _active(self, asset: str, tag: str, t: datetime, counts: np.ndarray, slots: int, span_s: float, span: str,
                no_data: tuple[float, float] | None = None) -> list[AlertChange]:
        dq = data_quality(counts, slots, window_s=span_s)
        extra = {}
        if no_data is not None:  # (seconds silent, the tag's limit)
            problem = "no_data"
            what = f"no data for {no_data[0]:.0f} s (a healthy one reports within {no_data[1]:g} s)"
            extra = {"no_data_after_s": no_data[1]}
        else:
            worst = max(FLAGGED, key=lambda c: counts[c])
            problem = NAMES[worst]
            what = (f"{DESCRIBE[worst]} ({counts[worst] / slots:.0%} of {span}; good {dq['good']:.0%}, "
                    f"missing {dq['missing']:.0%})")
        return self.manager.observe(
            asset=asset, tag=tag, kind="sensor", active=True, t=t, severity=self.config.sensor_severity,
            message=f"{tag}: sensor problem: {what}; machine alerts from this tag hold while it lasts",
            evidence={"problem": problem, "data_quality": dq, "window": [t - timedelta(seconds=span_s), t], **extra})
