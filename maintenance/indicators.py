"""Condition indicators over sliding windows, computed incrementally as readings arrive (DESIGN.md §7).

Two kinds of input:

- **Scalar series** (one value per sampling period, e.g. a 1 Hz velocity RMS, a temperature): every
  series has a row in a numpy ring buffer (``series × window slots``); a reading writes its slot.
  Each ``hop_s`` seconds the statistics of the last ``window_s`` seconds are computed for *all*
  series at once (vectorised across assets) and emitted as derived `Reading`s named
  ``<tag>.<stat>`` (``P-101.vib_de.rms``), so they go through the same spool and sink as raw data.
- **Waveform tags** (high-rate samples, e.g. 2560 Hz velocity): samples are collected into blocks;
  each full block gives velocity RMS, peak, crest factor, kurtosis and band RMS values from the
  spectrum (Parseval: the band values add up, in quadrature, to the block's RMS), and for a waveform rated in
  ISO 20816 zones ``iso_rms``, its RMS in the standard's 10-1000 Hz band. A block is made of
  evenly spaced good samples only: a gap in the samples' times or a bad sample starts a new block, and a
  repeated (or older) sample is skipped.

Statistics: ``mean std min max rms peak crest kurtosis slope`` (``slope`` per second, least squares;
``kurtosis`` is Pearson's: 1.5 for a sine, 3 for Gaussian noise). Bad-quality and non-finite values
are left out, and so are the readings `maintenance.quality` calls sensor problems (frozen, the device's own
doubt); a derived value is UNCERTAIN when less than ``min_coverage`` of its window had data or an input was
UNCERTAIN, and is not emitted at all without any data. Each slot also keeps its reading's class
(`maintenance.quality`), which ``on_window`` hears of at every closed window (sensor alerts, zones).
Window boundaries are aligned to the Unix epoch, so two gateways compute the same windows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from edge.records import Quality, Reading, utcnow
from maintenance.quality import BAD, FROZEN, GOOD, MISSING, NAMES, SOURCE, classify, classify_reading, usable


def value_of(r: Reading) -> float:
    """A reading's value as float for statistics; NaN when bad, missing or not numeric."""
    if r.quality == Quality.BAD:
        return math.nan
    v = r.value
    if type(v) is float:
        return v
    n = r.numeric
    return math.nan if n is None else n


def slot_numbers(times_s: np.ndarray, period_s: float) -> np.ndarray:
    """Absolute slot numbers (``floor(time / period)``) of times in seconds since the epoch.

    Computed in whole microseconds: in floating point, ``floor(t / 0.1)`` puts 40 % of the times on a 0.1 s
    grid one slot early (two readings in one slot, the first overwritten, and an empty slot beside it).
    Readings' times are whole microseconds, so ``t * 1e6`` rounds back to them exactly. A period of no whole
    number of microseconds keeps the floating-point division: slot times are ``slot * period`` (window ends,
    anomaly sample times), and a rounded period would drift from them (minutes at today's slot numbers)."""
    t = np.asarray(times_s, dtype=float)
    p_us = period_s * 1e6
    n_us = round(p_us)
    if n_us < 1 or abs(p_us - n_us) > 1e-12 * p_us:  # float error of a whole number of microseconds: ~1e-16
        return np.floor(t / period_s).astype(np.int64)
    return np.rint(t * 1e6).astype(np.int64) // n_us


def expected_readings(classes: np.ndarray) -> np.ndarray:
    """Per series, how many readings a window of ``classes`` (series x slots, `maintenance.quality` classes, MISSING
    where none) leaves room for at the series' own sampling step: the slots over the shortest step between two of its
    readings in the window, taken when it holds at least three (else one slot: the configured period). The share of a
    window a tag's readings fill is of these: a tag sampled every 3 s with ``period_s`` 1 filled a third of every
    window, below ``min_share``, and its zone was never judged (a vibration in zone D raised nothing)."""
    present = classes != MISSING
    rows, n = present.shape
    at = np.arange(n)
    latest = np.maximum.accumulate(np.where(present, at, -1), axis=1)  # the latest reading at or before each slot
    before = np.concatenate([np.full((rows, 1), -1), latest[:, :-1]], axis=1)
    gaps = np.where(present & (before >= 0), at - before, n)
    step = np.where(present.sum(axis=1) >= 3, gaps.min(axis=1, initial=n), 1)
    return np.ceil(n / step).astype(np.int64)


STATS = ("mean", "std", "min", "max", "rms", "peak", "crest", "kurtosis", "slope")


def window_stats(x: np.ndarray, dt_s: float = 1.0) -> dict[str, np.ndarray]:
    """Statistics along the last axis of ``x`` (NaN = missing), one value per row.

    Pure numpy so it runs on a whole bank of series in one call; rows without data give NaN.
    """
    x = np.atleast_2d(np.asarray(x, dtype=float))
    ok = np.isfinite(x)
    n = ok.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xz = np.where(ok, x, 0.0)
        mean = xz.sum(axis=-1) / n
        c = np.where(ok, x - mean[..., None], 0.0)
        m2 = (c * c).sum(axis=-1) / n
        m4 = (c**4).sum(axis=-1) / n
        rms = np.sqrt((xz * xz).sum(axis=-1) / n)
        peak = np.where(ok, np.abs(x), -np.inf).max(axis=-1)
        out = {
            "mean": mean,
            "std": np.sqrt(m2),
            "min": np.where(ok, x, np.inf).min(axis=-1),
            "max": np.where(ok, x, -np.inf).max(axis=-1),
            "rms": rms,
            "peak": peak,
            "crest": np.where(rms > 0, peak / rms, np.nan),
            "kurtosis": np.where(m2 > 0, m4 / (m2 * m2), np.nan),
        }
        t = np.arange(x.shape[-1], dtype=float) * dt_s
        tz = np.where(ok, t, 0.0)
        tmean = tz.sum(axis=-1) / n
        ct = np.where(ok, t - tmean[..., None], 0.0)
        stt = (ct * ct).sum(axis=-1)
        out["slope"] = np.where(stt > 0, (ct * c).sum(axis=-1) / stt, np.nan)
    empty = n == 0
    for v in out.values():
        v[empty] = np.nan
    return out


@dataclass(frozen=True, slots=True)
class Band:
    """A frequency band [low_hz, high_hz) whose RMS is reported as ``<tag>.band_<name>``."""

    name: str
    low_hz: float
    high_hz: float


def waveform_indicators(samples: np.ndarray, fs_hz: float, bands: Iterable[Band] = (),
                        iso_band: Band | None = None) -> dict[str, float]:
    """RMS, peak, crest factor, kurtosis and band RMS values of one block of waveform samples.

    ``rms``, ``peak`` and ``crest`` are of the vibration: the block's mean (a sensor's offset, an integrator's
    drift) is taken out first. ISO 20816 rates the RMS of the vibration velocity (10-1000 Hz); with the offset
    in, 1 mm/s of vibration on a 3 mm/s offset read 3.16 mm/s, zone C on a machine in zone A. When the
    sensor filters 10-1000 Hz the mean is about zero and this changes nothing. Band values come from a
    Hann-free rectangular one-sided spectrum scaled so that the sum of squares of all bands (DC excluded)
    is the variance (Parseval), so they add up, in quadrature, to ``rms``.

    ``iso_band`` adds ``iso_rms``: the RMS in the band ISO 20816-3 rates (10-1000 Hz; 2-1000 Hz at or below
    600 r/min), the value its zones are for. ``rms`` is broadband, DC to Nyquist: velocity integrated from an
    accelerometer carries low-frequency drift (integration amplifies it as 1/f), and a fast waveform holds
    gear-mesh or bearing content above 1 kHz; either put a healthy machine in zone C.
    """
    x = np.asarray(samples, dtype=float)
    s = window_stats((x - x.mean())[None, :], 1.0 / fs_hz)
    out = {k: float(s[k][0]) for k in ("rms", "peak", "crest", "kurtosis")}
    bands = list(bands)
    named = [(f"band_{b.name}", b) for b in bands] + ([("iso_rms", iso_band)] if iso_band is not None else [])
    if named:
        n = x.size
        spec = np.fft.rfft(x - x.mean())
        power = np.abs(spec) ** 2 / (n * n)
        power[1:] *= 2.0  # one-sided
        if n % 2 == 0:
            power[-1] /= 2.0  # the Nyquist bin has no mirror
        freqs = np.fft.rfftfreq(n, 1.0 / fs_hz)
        for key, b in named:
            sel = (freqs >= b.low_hz) & (freqs < b.high_hz)
            out[key] = float(np.sqrt(power[sel].sum()))
    return out


@dataclass(slots=True)
class _Block:
    fs_hz: float
    size: int
    bands: tuple[Band, ...]
    iso: Band | None = None  # the ISO 20816 measurement band: its RMS is ``iso_rms``
    buf: list[float] = field(default_factory=list)
    start: datetime | None = None
    worst: Quality = Quality.GOOD
    last: datetime | None = None  # time of the latest sample seen (good or bad)
    counts: np.ndarray = field(default_factory=lambda: np.zeros(len(NAMES), np.int64))  # samples per class
    # Samples no block used since the last one (a bad sample or a gap threw the block away), per class.
    lost: np.ndarray = field(default_factory=lambda: np.zeros(len(NAMES), np.int64))

    def restart(self, *, lost: bool = False) -> None:
        """Start a new block: after a full block handed on, or (``lost``) a gap or a bad sample, whose discarded
        samples are counted in ``lost``."""
        if lost:
            self.lost += self.counts
        else:
            self.lost[:] = 0
        self.buf, self.start, self.worst = [], None, Quality.GOOD
        self.counts[:] = 0


class IndicatorEngine:
    """Sliding-window indicators for many scalar series plus block indicators for waveform tags.

    ``series``: tag -> stats to emit. ``waveforms``: tag -> (fs_hz, block_samples, bands) or
    (fs_hz, block_samples, bands, iso_band) for a waveform rated in ISO 20816 zones.
    Feed readings with `update` in time order per tag (late readings within the window are
    accepted; older ones are left out and counted in `late`, `take_late`); it returns the derived readings that
    became due.
    """

    def __init__(self, series: dict[str, Iterable[str]], *, window_s: int = 60, hop_s: int = 10,
                 period_s: float = 1.0, min_coverage: float = 0.5,
                 waveforms: dict[str, tuple[float, int, Iterable[Band]] | tuple[float, int, Iterable[Band], Band]]
                 | None = None,
                 out_of_range: str = "unverified") -> None:
        """``out_of_range``: whether `update` uses out-of-range readings (`maintenance.quality.QualityConfig`)."""
        if window_s <= 0 or hop_s <= 0 or period_s <= 0:
            raise ValueError("window_s, hop_s and period_s must be positive")
        self.tags = list(series)
        self.row = {t: i for i, t in enumerate(self.tags)}
        self.stats = [tuple(s) for s in series.values()]
        for tag, st in zip(self.tags, self.stats, strict=True):
            bad = set(st) - set(STATS)
            if bad:
                raise ValueError(f"{tag}: unknown statistic(s) {sorted(bad)}; known: {', '.join(STATS)}")
        self.period = float(period_s)
        self.slots = max(1, round(window_s / period_s))
        self.hop_slots = max(1, round(hop_s / period_s))
        self.min_coverage = min_coverage
        self.buf = np.full((len(self.tags), self.slots), np.nan)
        self.uncertain = np.zeros((len(self.tags), self.slots), dtype=bool)
        self.cls = np.full((len(self.tags), self.slots), MISSING, dtype=np.int8)  # maintenance.quality classes
        self.last_seen = np.full(len(self.tags), -1, dtype=np.int64)  # absolute slot of each series' latest reading
        self.first_slot: int | None = None
        self.out_of_range = out_of_range
        # Readings older than the open window (a backlog behind newer readings of any series: the windows close for
        # all series at once) and waveform samples older than their tag's latest are left out: counted here, and
        # since the last `take_late` per tag (count, oldest and newest time in seconds), for the caller to count and
        # log (`MaintenanceLive`).
        self.late = 0
        self.late_tags: dict[str, list] = {}
        # Called as on_window(end_slot, values, classes) for each closed window, before its derived readings are made,
        # and on_block(tag, start, counts) for each waveform block (its samples per `maintenance.quality` class).
        self.on_window = None
        self.on_block = None
        self.slot_of = np.full(self.slots, -1, dtype=np.int64)  # absolute slot number held by each column
        self.next_emit: int | None = None  # absolute slot number at which the next window closes
        self.blocks = {t: _Block(w[0], int(w[1]), tuple(w[2]), w[3] if len(w) > 3 else None)
                       for t, w in (waveforms or {}).items()}

    # -- scalar series -------------------------------------------------------------------------
    def update(self, readings: Iterable[Reading], now: datetime | None = None) -> list[Reading]:
        """Take a batch of readings; return the derived readings of every window that closed."""
        out: list[Reading] = []
        rows, times, values, quality, flags = [], [], [], [], []
        for r in readings:
            i = self.row.get(r.tag)
            if i is None:
                if r.tag in self.blocks:
                    out.extend(self._waveform_sample(r))
                continue
            rows.append(i)
            times.append(r.time.timestamp())
            values.append(value_of(r))
            quality.append(int(r.quality))
            flags.append(r.flags)
        if rows:
            slots = slot_numbers(np.asarray(times), self.period)
            v = np.asarray(values, float)
            cls = classify(np.asarray(quality), np.asarray(flags), v, self.out_of_range)
            use = usable(cls, self.out_of_range)
            out.extend(self.update_arrays(np.asarray(rows), slots, np.where(use, v, np.nan),
                                          use & (np.asarray(quality) == Quality.UNCERTAIN), now, cls, raw=v))
        return out

    def update_arrays(self, rows: np.ndarray, slots: np.ndarray, values: np.ndarray, uncertain: np.ndarray,
                      now: datetime | None = None, classes: np.ndarray | None = None,
                      raw: np.ndarray | None = None) -> list[Reading]:
        """The vectorised core of `update`: series rows, absolute slot numbers, values (NaN = no value, or not to
        be used), and each reading's `maintenance.quality` class (default: good, or bad where NaN); ``raw``: the
        values as read (frozen ones too), to find where a freeze began (`_frozen_run`)."""
        out: list[Reading] = []
        if slots.size == 0:  # a period holding only readings of tags without indicators
            return out
        if classes is None:
            classes = np.where(np.isfinite(values), GOOD, BAD).astype(np.int8)
        if self.first_slot is None:
            self.first_slot = int(slots.min())
        order = np.argsort(slots, kind="stable")
        ordered = slots[order]
        cuts = np.flatnonzero(np.diff(ordered)) + 1
        for g, first in zip(np.split(order, cuts), np.r_[0, cuts], strict=True):
            slot = int(ordered[first])
            if self.next_emit is None:
                self.next_emit = (slot // self.hop_slots + 1) * self.hop_slots
            while slot >= self.next_emit:  # these readings belong to a later window: close the due ones first
                if self.next_emit - self.slots > self.slot_of.max():
                    # A gap longer than the window (a stopped machine, the gateway off for a day): every window
                    # from here to `slot` is empty. Jump rather than close them one hop at a time.
                    self.next_emit = (slot // self.hop_slots + 1) * self.hop_slots
                    break
                out.extend(self._emit(self.next_emit, now))
                self.next_emit += self.hop_slots
            if slot < self.next_emit - self.slots:  # older than the open window: no window to come holds it
                for r in rows[g].tolist():
                    self._left_out(self.tags[r], slot * self.period)
                continue
            col = slot % self.slots
            if self.slot_of[col] != slot:  # the column held an older slot: reset it for all series
                self.buf[:, col] = np.nan
                self.uncertain[:, col] = False
                self.cls[:, col] = MISSING
                self.slot_of[col] = slot
            self.buf[rows[g], col] = values[g]
            self.uncertain[rows[g], col] = uncertain[g]
            self.cls[rows[g], col] = classes[g]
            self.last_seen[rows[g]] = slot
            if raw is not None:
                for j in g[classes[g] == FROZEN].tolist():
                    self._frozen_run(int(rows[j]), slot, float(raw[j]))
        return out

    def _left_out(self, tag: str, t_s: float) -> None:
        self.late += 1
        got = self.late_tags.get(tag)
        if got is None:
            self.late_tags[tag] = [1, t_s, t_s]
        else:
            got[0] += 1
            got[1], got[2] = min(got[1], t_s), max(got[2], t_s)

    def take_late(self) -> dict[str, tuple[int, datetime, datetime]]:
        """The readings left out as late since the last call, per tag: (count, oldest time, newest time)."""
        got = {tag: (n, datetime.fromtimestamp(lo, UTC), datetime.fromtimestamp(hi, UTC))
               for tag, (n, lo, hi) in self.late_tags.items()}
        self.late_tags = {}
        return got

    def window_start(self) -> datetime | None:
        """The time of the open window's oldest slot: readings older than it are left out (None before any)."""
        return None if self.next_emit is None else datetime.fromtimestamp((self.next_emit - self.slots) * self.period,
                                                                          UTC)

    def _frozen_run(self, row: int, slot: int, value: float) -> None:
        """A reading flagged FROZEN at ``slot``: the validator flags a stuck value only after ``frozen_after_s``, so
        the readings of the same value before it (the run since the value last changed) were taken as good. They
        are the same stuck sensor: mark them frozen in the windows still to come. Left as they were, they alone
        filled ``min_share`` of the window after the detection and its mean was the stuck value (a zone alert from a
        stuck sensor). Stops at the first other value (the run's start) or an earlier frozen one (done before)."""
        low = max(self.next_emit - self.slots, slot - self.slots + 1)  # the oldest slot of a window to come
        for s in range(slot - 1, low - 1, -1):
            col = s % self.slots
            if self.slot_of[col] != s or self.cls[row, col] == MISSING:
                continue  # no reading of the series then: the run goes on across a gap, as in the validator
            if self.cls[row, col] == FROZEN or self.buf[row, col] != value:  # NaN (not a used value) too
                return
            self.buf[row, col] = np.nan
            self.uncertain[row, col] = False
            self.cls[row, col] = FROZEN

    def window(self, end_slot: int) -> tuple[np.ndarray, np.ndarray]:
        """Values of the window ending before absolute slot ``end_slot``, oldest first, and a
        per-series flag of uncertain inputs."""
        want = np.arange(end_slot - self.slots, end_slot)
        cols = want % self.slots
        valid = self.slot_of[cols] == want
        x = np.where(valid[None, :], self.buf[:, cols], np.nan)
        unc = (self.uncertain[:, cols] & valid[None, :]).any(axis=1)
        return x, unc

    def classes(self, end_slot: int) -> np.ndarray:
        """`maintenance.quality` class of each slot of the window ending before ``end_slot`` (MISSING: none)."""
        want = np.arange(end_slot - self.slots, end_slot)
        cols = want % self.slots
        return np.where((self.slot_of[cols] == want)[None, :], self.cls[:, cols], MISSING)

    def silent_s(self, end_slot: int) -> np.ndarray:
        """Per series, seconds since its latest reading (since the first reading of any series if it has none)."""
        since = np.maximum(self.last_seen, self.first_slot if self.first_slot is not None else end_slot)
        return (end_slot - 1 - since) * self.period

    def _emit(self, end_slot: int, now: datetime | None) -> list[Reading]:
        x, unc = self.window(end_slot)
        classes = self.classes(end_slot)
        if self.on_window is not None:
            self.on_window(end_slot, x, classes)
        stats = window_stats(x, self.period)
        coverage = np.isfinite(x).sum(axis=1) / expected_readings(classes)  # of those its sampling step leaves room for
        t = datetime.fromtimestamp(end_slot * self.period, UTC)
        recv = now or utcnow()
        out: list[Reading] = []
        for i, tag in enumerate(self.tags):
            if coverage[i] == 0:
                continue
            q = Quality.UNCERTAIN if (coverage[i] < self.min_coverage or unc[i]) else Quality.GOOD
            for name in self.stats[i]:
                v = float(stats[name][i])
                if math.isfinite(v):
                    out.append(Reading(f"{tag}.{name}", t, v, recv, quality=q, status_name="derived"))
        return out

    # -- waveforms -----------------------------------------------------------------------------
    def _waveform_sample(self, r: Reading) -> list[Reading]:
        b = self.blocks[r.tag]
        if b.last is not None:
            # The spectrum and the block's statistics assume evenly spaced samples: a block never joins two
            # bursts (the step between them reads as broadband energy, kurtosis and crest), and a repeated or
            # older sample (a redelivery, a late message) is not appended a second time or out of place.
            dt = (r.time - b.last).total_seconds() * b.fs_hz  # in sample periods
            if dt < 0.5:
                if dt < -0.5:  # older than the latest sample (a backlog, a late message); a repeat is no loss
                    self._left_out(r.tag, r.time.timestamp())
                return []
            if dt > 1.5:
                b.restart(lost=True)
        b.last = r.time
        v = r.numeric
        if v is None or r.quality == Quality.BAD or not math.isfinite(v):
            # Leaving the sample out would close up the block and shift every later sample's time: start anew.
            b.restart(lost=True)
            b.lost[BAD] += 1
            if b.lost.sum() >= b.size and self.on_block is not None:
                # A block's worth of samples no block used (a device reporting Bad for every sample made no block at
                # all, and its sensor died in silence): judged as a block, for the tag's sensor alert.
                self.on_block(r.tag, r.time - timedelta(seconds=b.size / b.fs_hz), b.lost.copy())
                b.lost[:] = 0
            return []
        if b.start is None:
            b.start = r.time
        b.buf.append(v)
        b.worst = max(b.worst, r.quality)
        # Each sample's class, as a scalar reading's (maintenance.quality): the block's share of flagged samples
        # decides whether its RMS says anything about the machine (`MaintenanceLive._block_quality`).
        b.counts[classify_reading(r, v, self.out_of_range)] += 1
        if len(b.buf) < b.size:
            return []
        return self.waveform_block(r.tag, b.start, np.asarray(b.buf), quality=b.worst, counts=b.counts.copy(),
                                   _reset=True)

    def waveform_block(self, tag: str, start: datetime, samples: np.ndarray, *, quality: Quality = Quality.GOOD,
                       counts: np.ndarray | None = None, _reset: bool = False) -> list[Reading]:
        """Indicators of one block of a waveform tag (also for sensors that deliver whole blocks). ``counts``: its
        samples per `maintenance.quality` class (default: all good, or all uncertain at the source when ``quality``
        is not GOOD), handed to ``on_block``."""
        b = self.blocks[tag]
        if _reset:
            b.restart()
        if counts is None:
            counts = np.zeros(len(NAMES), np.int64)
            counts[GOOD if quality == Quality.GOOD else SOURCE] = len(samples)
        if self.on_block is not None:
            self.on_block(tag, start, counts)
        ind = waveform_indicators(samples, b.fs_hz, b.bands, b.iso)
        recv = utcnow()
        return [Reading(f"{tag}.{k}", start, v, recv, quality=quality, status_name="derived")
                for k, v in ind.items() if math.isfinite(v)]
