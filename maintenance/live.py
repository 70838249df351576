"""Live condition monitoring: a consumer of validated Reading batches (DESIGN.md §7).

``await live.process(readings)`` returns ``(derived, predictions, changes)``:

- ``derived``: indicator readings (``<tag>.<stat>``, ``<tag>.iso_zone``) for the spool, like raw data;
- ``predictions``: anomaly scores with their conformal p-values (every ``predict_every_s`` per asset,
  and on every flagged sample), and remaining useful life with its interval for assets with a RUL model
  (`maintenance.rul_live`, every ``predict_every`` cycles), for the ``predictions`` table;
- ``changes``: `AlertChange`s (raised / updated / escalated / cleared / suppressed) from ISO 20816
  zones, configured rules, the anomaly detectors and RUL thresholds (``alert_below``), for
  `maintenance.store.apply_changes` and the notifiers.

Times are the readings' own (source) times, so a replay gives the same result as live operation.
Anomaly detectors train themselves on the first ``train_samples`` seconds of each asset (declare
that period healthy by starting monitoring on a healthy machine), then score every second; assets
are scored together in `AnomalyBank`s (numpy across assets). With a state folder the fitted detectors are
saved (``anomaly_models.npz``) when an asset finishes training and restored at the next start, so a restart
neither trains again on whatever the machine does then (a fault would become "healthy") nor leaves the asset
unscored for the training time; changed anomaly settings of an asset, or deleting the file, train again.
``valvoja maintenance train-anomaly`` replaces an asset's entry from another process; the running gateway adopts
it with its next readings (`MaintenanceLive.sync_detectors`) and never writes over it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from edge.files import FileId, file_id, locked, pack_state, read_asset_state, replace_if_unchanged, write_atomic
from edge.records import Flag, Prediction, Quality, Reading
from maintenance.alerts import AlertChange, AlertManager, Window, dedup_key
from maintenance.anomaly import AnomalyBank, AnomalyConfig, AnomalyDetector, own_runs, signal_confirms
from maintenance.config import AssetConfig, MaintenanceConfig
from maintenance.indicators import Band, IndicatorEngine, expected_readings, slot_numbers, value_of
from maintenance.iso20816 import SEVERITY, ZONES, ZoneTracker, zone
from maintenance.quality import (
    FLAGGED,
    GOOD,
    MISSING,
    NAMES,
    OUT_OF_RANGE,
    SensorWatch,
    classify,
    data_quality,
    lower,
    usable,
)
from maintenance.rules import RuleEngine

log = logging.getLogger(__name__)
STALE_PERIODS = 5  # a signal not updated for this many periods (or two of its own steps) is missing in the sample
UNSCORED_WINDOWS = 10  # an asset sending samples but unscored for this many window lengths is logged
ANOMALY_STATE_FILE = "anomaly_models.npz"
DETECTOR_ARRAYS = ("use", "mean", "scale", "precision", "calibration")  # AnomalyDetector's fitted `<name>_`
# The training holds fewer independent stretches than this (samples / `correlation_time` of its slowest signal):
# its calibration scores are too few in effect for alpha to mean much, said once per detector (`anomaly_slow_signals`).
MIN_STRETCHES = 20
STATE_FORMAT = 1
# How a saved detector was calibrated, part of its key: a model saved before calibration on disjoint windows has no
# such entry (its alpha was not held: FAR above alpha) and is trained again, with `anomaly_state_mismatch`.
CALIBRATION = {"calibration": "disjoint_windows", "fit_fraction": AnomalyConfig.fit_fraction}


def detector_version(d: AnomalyDetector) -> str:
    """sha256 of the fitted parameters: the model version a prediction is traced to."""
    h = hashlib.sha256()
    for a in (d.use_, d.mean_, d.scale_, d.precision_, d.calibration_):
        h.update(np.ascontiguousarray(a, dtype=float).tobytes())
    if d.decorrelation_ is not None:  # left out when not measured: a model saved before keeps its version
        h.update(np.ascontiguousarray(d.decorrelation_, dtype=float).tobytes())
    h.update(repr(d.config).encode())
    return h.hexdigest()


def _anomaly_key(a: AssetConfig) -> dict:
    """What a saved detector must match to be restored: the asset's anomaly settings that shape the fit."""
    c = a.anomaly
    running = {"running_tag": c.running_tag, "running_above": c.running_above} if c.running_tag else {}
    return {"signals": list(c.signals), "train_samples": c.train_samples, "window": c.window, "alpha": c.alpha,
            "score": c.score, "max_drift": c.max_drift} | running | CALIBRATION


def detector_record(a: AssetConfig, det: AnomalyDetector, version: str, origin: str, training: dict | None) -> dict:
    """The row of a detector version that came into service (``anomaly_detector_versions``, m0204): ``origin`` how
    (``self_trained``, ``retrained``: adopted from ``train-anomaly``, ``restored``: from the state file at start);
    ``training`` what it was trained on as `_Anomaly` noted it (None: a state file written before that was kept).
    ``config_sha256`` is the sha256 of the asset's anomaly settings it was fitted under (the state file's key)."""
    key = _anomaly_key(a)
    t = training or {}
    return {"model_id": f"anomaly:{a.name}", "version": version, "asset": a.name, "in_service_at": datetime.now(UTC),
            "origin": origin, "training_origin": t.get("origin"),
            "training_start": _instant(t.get("start")), "training_end": _instant(t.get("end")),
            "training_samples": t.get("samples"), "left_out_flagged": t.get("left_out_flagged"),
            "left_out_incomplete": t.get("left_out_incomplete"), "signals": list(det.signals_),
            "alpha": det.config.alpha, "calibration_size": len(det.calibration_),
            "config_sha256": hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest(), "config": key}


def _instant(text) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) else None


class _Anomaly:
    """Sample assembly, training and banked scoring of the assets that have an anomaly model."""

    def __init__(self, assets: list[AssetConfig], period_s: float) -> None:
        self.assets = assets
        self.period = period_s
        width = max((len(a.anomaly.signals) for a in assets), default=1)
        self.flat = {t: i * width + j for i, a in enumerate(assets) for j, t in enumerate(a.anomaly.signals)}
        self.values = np.full((len(assets), width), np.nan)
        self.seen = np.full((len(assets), width), -(10**12), dtype=np.int64)
        # Each signal's sampling step in periods: the shorter of its last two gaps (one long silence does not make a
        # slow signal of a fast one), and the latest gap.
        self.step = np.ones((len(assets), width), np.int64)
        self.gap = np.full((len(assets), width), 10**9, np.int64)
        # Whether each signal's latest value is out of range (scored, unverified) and whether its latest reading
        # carried any flag at all (never trained on), per `maintenance.quality`.
        self.oor = np.zeros((len(assets), width), bool)
        self.flagged = np.zeros((len(assets), width), bool)
        self.used = np.fromiter(sorted(self.flat.values()), np.int64)  # flat positions of configured signals
        # Per asset, the column of its `running_tag` (-1: none) and the value above which it runs.
        self.run_col = np.array([a.anomaly.signals.index(a.anomaly.running_tag) if a.anomaly.running_tag else -1
                                 for a in assets], np.int64)
        self.run_above = np.array([a.anomaly.running_above for a in assets], float)
        self.training: dict[int, list[np.ndarray]] = {i: [] for i in range(len(assets))}
        self.detectors: dict[int, AnomalyDetector] = {}
        self.versions: dict[int, str] = {}
        # What each asset's detector in training has seen (first/last sample slot, samples left out), what the
        # current version was trained on (kept in the state file), and the records of versions that came into
        # service not yet handed to the caller (`MaintenanceLive.detector_records`).
        self.trainlog: dict[int, dict] = {}
        self.made: dict[int, dict | None] = {}
        self.records: list[dict] = []
        self.banks: list[tuple[np.ndarray, AnomalyBank]] = []
        self.last_pred: dict[int, int] = {}
        self.run: dict[int, int] = {}  # consecutive flagged samples per asset
        self.signal_run: dict[int, np.ndarray] = {}  # and per signal, where signals confirm on their own runs
        # Per asset, samples in a row that gave no score for a signal missing from the window (not a silent asset), and
        # whether that was logged (once until it is scored again).
        self.unscored: dict[int, int] = {}
        self.said_unscored: set[int] = set()
        self.slot: int | None = None
        self.unsaved = False  # a detector was fitted since the last snapshot
        self.scored: dict[int, str] = {}  # the version each bank row's window of samples was scored with
        # The state file as this process last read or wrote it: its id, and the version of each asset it held.
        self.file_id: FileId | None = None
        self.known: dict[str, str | None] = {}
        # Periods after which a gap leaves nothing to score: signals stale, the longest window empty.
        self.horizon = STALE_PERIODS + 1 + max((a.anomaly.window for a in assets), default=1)

    def put(self, flat: np.ndarray, values: np.ndarray, slot: int, oor: np.ndarray | None = None,
            flagged: np.ndarray | None = None) -> None:
        """Latest values of one slot: ``flat`` = asset * width + signal (-1: not an anomaly signal); ``values`` NaN
        where the reading is not to be used (bad, or a sensor problem); ``oor``: out of range (used, unverified);
        ``flagged``: any flag (not for training)."""
        # A reading older than its signal's latest (a redelivery, a backlog behind live values) is left out: it
        # replaced the latest value and its time, and the next periods were scored with the older value (a signal
        # read every 10 s: a redelivery of the one before changed the next score from 0.93 to 2.47, lost another).
        ok = flat >= 0
        ok[ok] = slot >= self.seen.flat[flat[ok]]
        # A reading whose value is not to be used takes the slot as NaN: carrying the previous value forward would
        # score (and train on) a value the sensor has just said it cannot give.
        f = flat[ok]
        gap = slot - self.seen.flat[f]
        known = (gap > 0) & (gap < 10**9)  # not its first reading, nor a repeat
        self.step.flat[f] = np.where(known, np.minimum(gap, self.gap.flat[f]), self.step.flat[f])
        self.gap.flat[f] = np.where(known, gap, self.gap.flat[f])
        self.values.flat[f] = values[ok]
        self.seen.flat[f] = slot
        self.oor.flat[flat[ok]] = False if oor is None else oor[ok]
        self.flagged.flat[flat[ok]] = ~np.isfinite(values[ok]) if flagged is None else flagged[ok]

    def complete(self, slot: int) -> bool:
        """Every configured signal of every asset has a value for ``slot``: it can be scored now."""
        return bool(self.used.size) and bool((self.seen.flat[self.used] >= slot).all())

    def sample(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """The values of every asset's signals for ``slot`` (NaN: none usable), and which are out of range."""
        # A signal sampled slower than the period is carried forward to its next reading (two of its steps: one lost
        # reading too). With `STALE_PERIODS` alone, a signal read every 10 s left a gap in every window of 10: scored
        # on means of what was left, it flagged 0.029 of healthy samples at alpha 0.01 (now 0.0099, as trained).
        fresh = slot - self.seen <= np.maximum(STALE_PERIODS, 2 * self.step)
        return np.where(fresh, self.values, np.nan), fresh & self.oor

    def reported(self, slot: int) -> np.ndarray:
        """Per asset, whether any of its signals sent a reading for ``slot``. A period without one is no sample of the
        asset (neither trained on nor scored): the machine or its source stopped sending, and carrying its last values
        forward for `STALE_PERIODS` filled its window with copies of one sample (a noisy mean: false alarms at every
        stop). A signal slower than the period is still carried forward (`sample`) while another of the asset's
        reports."""
        return (self.seen >= slot).any(axis=1)

    def stopped(self, x: np.ndarray) -> np.ndarray:
        """Per asset, whether its sample ``x`` says the machine is stopped (`running_tag` at or below `running_above`;
        never without one, nor when its value is missing: that sample is incomplete anyway)."""
        has = self.run_col >= 0
        v = x[np.arange(len(self.assets)), np.maximum(self.run_col, 0)]
        with np.errstate(invalid="ignore"):
            return has & (v <= self.run_above)

    def train_ready(self, x: np.ndarray, slot: int | None = None, reported: np.ndarray | None = None) -> bool:
        changed = False
        for i in list(self.training):
            a = self.assets[i]
            n = len(a.anomaly.signals)
            if reported is not None and not reported[i]:
                continue  # no reading of the asset this period, or the machine stopped: not a sample (`reported`)
            log_i = self.trainlog.setdefault(i, {"first": None, "last": None, "flagged": 0, "incomplete": 0})
            # Trained on healthy data only: a sample with a flagged reading (out of range too, whatever the
            # out_of_range setting) would teach the detector that a broken sensor is the healthy machine.
            if np.isfinite(x[i, :n]).all() and not self.flagged[i, :n].any():
                self.training[i].append(x[i, :n].copy())
                log_i["first"] = slot if log_i["first"] is None else log_i["first"]
                log_i["last"] = slot
            elif self.flagged[i, :n].any():
                log_i["flagged"] += 1
            elif log_i["first"] is not None:  # a signal missing after training began (not the wait for the first)
                log_i["incomplete"] += 1
            if len(self.training[i]) >= a.anomaly.train_samples:
                c = a.anomaly
                cfg = AnomalyConfig(window=c.window, alpha=c.alpha, score=c.score, max_drift=c.max_drift, hold=0)
                det = AnomalyDetector(cfg, a.anomaly.signals).fit(np.asarray(self.training.pop(i)))
                self.detectors[i] = det
                self.versions[i] = detector_version(det)
                self.made[i] = self._training(self.trainlog.pop(i), a.anomaly.train_samples)
                self.records.append(detector_record(a, det, self.versions[i], "self_trained", self.made[i]))
                _say_slow(a, det)
                changed = True
        if changed:
            self._regroup()
            self.unsaved = True
        return changed

    def _training(self, log_i: dict, samples: int) -> dict:
        """What a detector was trained on: its samples' times (a sample's time is its slot's end, as scored), how
        many, and the samples left out in between (a flagged reading; a signal missing)."""
        def at(slot):
            return None if slot is None else datetime.fromtimestamp((slot + 1) * self.period, UTC).isoformat()

        return {"origin": "self_trained", "start": at(log_i["first"]), "end": at(log_i["last"]), "samples": samples,
                "left_out_flagged": log_i["flagged"], "left_out_incomplete": log_i["incomplete"]}

    def _regroup(self) -> None:
        """One bank per number of scored signals and window length. An asset already scored keeps its window of
        samples: regrouping (another asset finished training or was replaced) must not empty the windows of every
        other asset, whose next scores would then be means of a sample or two (noisy: false alarms)."""
        kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for rows, bank in self.banks:
            oldest_first, marks = bank.oldest_first()
            kept.update({int(i): (oldest_first[k], marks[k]) for k, i in enumerate(rows)})
        groups: dict[tuple[int, int], list[int]] = {}
        for i, d in self.detectors.items():
            groups.setdefault((len(d.use_), d.config.window), []).append(i)
        self.banks = []
        for rows in groups.values():
            bank = AnomalyBank([self.detectors[i] for i in rows])
            for k, i in enumerate(rows):
                if i in kept and kept[i][0].shape == bank.buf[k].shape and self.versions[i] == self.scored.get(i):
                    bank.buf[k], bank.marks[k] = kept[i]
            self.banks.append((np.array(rows), bank))
        self.scored = dict(self.versions)

    # -- fitted detectors across restarts ----------------------------------------------------------
    # Trained live on the first `train_samples` after start, a detector would otherwise be trained again at every
    # restart, on whatever the machine does then: a restart during a fault would learn the fault as healthy
    # (and clear its alert), and nothing is scored for the training time (30 min by default).
    # `valvoja maintenance train-anomaly` (another process) replaces one asset's entry in the same file; the
    # running gateway adopts it (`adopt`) and never writes over it (`edge.files.replace_if_unchanged`).
    def snapshot(self) -> tuple[bytes, dict[str, str]]:
        """The fitted detectors as a state file (`load` restores them) and the versions it holds per asset name."""
        self.unsaved = False
        meta: dict = {"assets": {}}
        arrays: dict[str, np.ndarray] = {}
        for i, d in self.detectors.items():
            meta["assets"][self.assets[i].name] = {"key": _anomaly_key(self.assets[i]), "version": self.versions[i],
                                                   "arrays": i, "training": self.made.get(i)}
            arrays.update({f"{i}.{k}": getattr(d, f"{k}_") for k in DETECTOR_ARRAYS})
            if d.decorrelation_ is not None:  # fitted too, but not among DETECTOR_ARRAYS: older files lack it
                arrays[f"{i}.decorrelation"] = d.decorrelation_
        return pack_state(meta, arrays, STATE_FORMAT), {n: e["version"] for n, e in meta["assets"].items()}

    def load(self, path: Path) -> None:
        """Restore the detectors saved in ``path`` whose asset's anomaly settings are unchanged (others train)."""
        fid = file_id(path)
        try:
            saved, arrays = read_asset_state(path, STATE_FORMAT)
        except ValueError as exc:
            log.warning("anomaly models not readable; every asset trains again: %s", exc,
                        extra={"event": "anomaly_state_unreadable"})
            return
        self.adopt(saved, arrays, path, fid, at_start=True)

    def adopt(self, saved: dict[str, dict], arrays: dict[str, np.ndarray], path: Path, fid: FileId | None, *,
              at_start: bool = False) -> int:
        """Take the entries of the state file read as (``saved``, ``arrays``) that changed since this process last
        read or wrote it (at start: all) and fit its assets' current anomaly settings; returns how many."""
        taken = 0
        for i, a in enumerate(self.assets):
            s = saved.get(a.name)
            if s is None or s.get("version") == self.known.get(a.name):
                continue  # not in the file, or what this process already knows from it
            if s.get("key") != _anomaly_key(a):
                old = isinstance(s.get("key"), dict) and "calibration" not in s["key"]
                log.warning("asset %s: the anomaly model saved in %s was %s; %s", a.name, path,
                            "calibrated by an older version, on overlapping windows (its false alarm rate was "
                            "above alpha)" if old else "trained with other settings",
                            "training again" if at_start else "keeping the current one",
                            extra={"event": "anomaly_state_mismatch", "asset": a.name})
                continue
            c = a.anomaly
            det = AnomalyDetector(AnomalyConfig(window=c.window, alpha=c.alpha, score=c.score,
                                                max_drift=c.max_drift, hold=0), c.signals)
            try:
                for k in DETECTOR_ARRAYS:
                    setattr(det, f"{k}_", arrays[f"{s['arrays']}.{k}"])
                # Absent from a model saved before it was measured: restored with None (its default confirm stays
                # 2 x window, as it was) under its own version, rather than trained again.
                measured = arrays.get(f"{s['arrays']}.decorrelation")
                det.decorrelation_ = None if measured is None else np.asarray(measured, dtype=float)
                det.signals_ = [c.signals[j] for j in det.use_]
                if det.decorrelation_ is not None and det.decorrelation_.shape != det.use_.shape:
                    raise ValueError("its correlation times are not one per signal")
                version = detector_version(det)
                if version != s["version"]:
                    raise ValueError("its parameters do not give its version")
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                log.warning("asset %s: the anomaly model saved in %s is damaged (%s); %s", a.name, path, exc,
                            "training again" if at_start else "keeping the current one",
                            extra={"event": "anomaly_state_unreadable", "asset": a.name})
                continue
            if version == self.versions.get(i):
                continue
            self.detectors[i], self.versions[i] = det, version
            self.made[i] = s.get("training") if isinstance(s.get("training"), dict) else None
            self.records.append(detector_record(a, det, version, "restored" if at_start else "retrained",
                                                self.made[i]))
            self.training.pop(i, None)
            self.trainlog.pop(i, None)
            self.run.pop(i, None)
            self.signal_run.pop(i, None)
            taken += 1
            _say_slow(a, det)
            if at_start:
                log.info("asset %s: anomaly model %s restored from %s (delete the file to train again)%s", a.name,
                         version[:12], path, "" if det.decorrelation_ is not None else
                         "; saved before its signals' correlation time was measured: unless confirm is set, alerts "
                         "are confirmed after 2 x window flagged samples as before (train it again to measure it)",
                         extra={"event": "anomaly_state_restored", "asset": a.name})
            else:
                log.warning("asset %s: anomaly model %s adopted from %s, written by another process (valvoja "
                            "maintenance train-anomaly); scored with it from now on", a.name, version[:12], path,
                            extra={"event": "anomaly_model_replaced", "asset": a.name})
        self.known = {n: e.get("version") for n, e in saved.items()}
        self.file_id = fid
        if taken:
            self._regroup()
        return taken


def _say_slow(a: AssetConfig, det: AnomalyDetector) -> None:
    """Log once per fitted detector when its training holds fewer than `MIN_STRETCHES` independent stretches of its
    slowest signal: its p-values are then valid in name only (the calibration windows are not independent), and the
    default confirmation is long (twice the correlation time)."""
    if det.decorrelation_ is None:
        return
    tau = float(np.max(det.decorrelation_))
    n = a.anomaly.train_samples
    if n / tau >= MIN_STRETCHES:
        return
    log.warning("asset %s: its healthy signals change slowly (correlation time %.0f samples, so %d training samples "
                "hold about %.0f independent stretches, fewer than %d): alpha %g per sample is not held (measured "
                "several times it on such signals) and alerts are confirmed after %d flagged samples (a run of a much "
                "faster signal's own flags sooner); train on more (train_samples) or set confirm", a.name, tau, n,
                n / tau, MIN_STRETCHES, a.anomaly.alpha, a.anomaly.confirm_samples(tau),
                extra={"event": "anomaly_slow_signals", "asset": a.name})


def replace_detector(config: MaintenanceConfig, state_dir: Path, asset: str, detector: AnomalyDetector,
                     version: str, training: dict | None = None) -> Path:
    """Put ``detector`` in ``state_dir``'s anomaly state file as ``asset``'s, keeping every other asset's saved one
    (`maintenance.retrain`); a running gateway adopts it at its next group of readings. ``training``: what it was
    trained on (`_Anomaly.made`), kept with it for the gateway's record of the version. Returns the file's path."""
    an = _Anomaly([a for a in config.assets if a.anomaly is not None], config.period_s)
    path = state_dir / ANOMALY_STATE_FILE
    with locked(path):  # the gateway's own save waits, then sees a new file and adopts this first
        an.load(path)
        i = next(k for k, a in enumerate(an.assets) if a.name == asset)
        an.detectors[i], an.versions[i], an.made[i] = detector, version, training
        write_atomic(path, an.snapshot()[0])
    return path


class MaintenanceLive:
    def __init__(self, config: MaintenanceConfig, windows: list[Window] | None = None, *, dsn: str | None = None,
                 metrics=None, state_dir: Path | None = None) -> None:
        """``dsn`` is the site database (RUL models whose registry index is there, ``registry_db``); ``metrics``
        (`edge.metrics.Metrics`) counts RUL model swaps; ``state_dir`` keeps the RUL assets' cycles across
        restarts (`maintenance.rul_live`)."""
        self.config = config
        self.manager = AlertManager(config.alerts, windows)
        # A zone or a rule on an indicator is judged when its window closes, up to a hop after the readings' clock:
        # a condition held through a maintenance window waits that long for its own observation (alerts.py).
        self.manager.release_after_s = float(config.window_s + config.hop_s)
        series: dict[str, tuple[str, ...]] = {}
        waveforms = {}
        self.zone_of: dict[str, tuple[str, ZoneTracker]] = {}
        self.waveform_of: dict[str, tuple[str, float]] = {}  # waveform tag -> (asset, seconds per block)
        self.iso_band_of: dict[str, tuple[float, float]] = {}  # waveform tag -> the band its zones rate, Hz
        watched: dict[str, str] = {}  # tag -> asset: the tags with a sensor alert (maintenance.quality)
        for a in config.assets:
            for t in a.vibration_tags:
                series[t] = tuple(dict.fromkeys(("mean", *a.vibration_stats)))
                self.zone_of[f"{t}.mean"] = (a.name, ZoneTracker(a.iso20816))
            for t in a.process_tags:
                series[t] = tuple(a.process_stats)
            for t in a.anomaly.signals if a.anomaly is not None else ():
                series.setdefault(t, ())  # a window without statistics: its sensor alert needs its data quality
            for t in (*a.vibration_tags, *a.process_tags, *(a.anomaly.signals if a.anomaly is not None else ())):
                watched.setdefault(t, a.name)
            for w in a.waveforms:
                bands = [Band(b.name, b.low_hz, b.high_hz) for b in w.bands]
                self.waveform_of[w.tag] = (a.name, w.block / w.fs_hz)
                if w.iso20816:  # zones rate the RMS in the standard's band, not the broadband `rms`
                    waveforms[w.tag] = (w.fs_hz, w.block, bands, Band("iso", *w.iso_band))
                    self.zone_of[f"{w.tag}.iso_rms"] = (a.name, ZoneTracker(a.iso20816))
                    self.iso_band_of[w.tag] = w.iso_band
                else:
                    waveforms[w.tag] = (w.fs_hz, w.block, bands)
        for g in config.quality.silence:
            if g.heartbeat:  # its silence tells a source that is down from sensors that are silent
                series.setdefault(g.heartbeat, ())
        self.quality = config.quality
        self.indicators = IndicatorEngine(series, window_s=config.window_s, hop_s=config.hop_s,
                                          period_s=config.period_s, waveforms=waveforms,
                                          out_of_range=config.quality.out_of_range)
        self.indicators.on_window = self._window
        self.indicators.on_block = self._block
        # The class counts of the waveform blocks made by the current `process` call: (tag, block start) -> counts.
        self._blocks: dict[tuple[str, datetime], np.ndarray] = {}
        self.sensors = SensorWatch(self.indicators.tags, watched, config.quality, self.manager, config.window_s)
        # The quality of the windows closed by the current `process` call, which zones and rules on indicators judge:
        # window end -> (class counts per series, RMS of each series' good readings, RMS of its usable readings: the
        # velocity RMS over the window that zones rate). Rows of the arrays, not a record per tag: a window closes for
        # every series at once.
        self._windows: dict[datetime, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._pending: list[AlertChange] = []  # sensor conditions of the windows closed by the current call
        self.rules = RuleEngine(config.rules, self.manager, config.quality)
        self.anomaly = _Anomaly([a for a in config.assets if a.anomaly is not None], config.period_s)
        self.anomaly_path = state_dir / ANOMALY_STATE_FILE if state_dir is not None and self.anomaly.assets else None
        if self.anomaly_path is not None:
            self.anomaly.load(self.anomaly_path)
        self._save_error: str | None = None
        self.metrics = metrics
        # Readings the indicator windows left out as late, since the first of the current run of calls that had any
        # (None: the last call had none): logged once at its start and once at its end, not per group.
        self._late_run: dict[str, list] | None = None
        rul_assets = [a for a in config.assets if a.rul is not None]
        self.rul = None
        if rul_assets:
            from maintenance.rul_live import RulLive

            self.rul = RulLive(rul_assets, self.manager, config.period_s, dsn=dsn, metrics=metrics,
                               state_dir=state_dir, quality=config.quality)

    def tags(self) -> set[str]:
        """The raw tags this reads: indicator series and waveforms, anomaly signals, RUL tags, rule tags."""
        rul = set(self.rul.tag_of) if self.rul is not None else set()
        return (set(self.indicators.row) | set(self.indicators.blocks) | set(self.anomaly.flat) | rul
                | set(self.rules.by_tag))

    async def process(self, readings: Iterable[Reading], now: datetime | None = None
                      ) -> tuple[list[Reading], list[Prediction], list[AlertChange]]:
        """Derived readings, predictions and alert changes caused by one batch (time-ordered per tag). The clock
        of escalations is ``now`` (the data's time), or the latest reading time when not given."""
        readings = list(readings)
        if now is not None:
            self.manager.advance(now)  # before observing: an alert from a backlog escalates from now, not its readings
        derived: list[Reading] = []
        preds: list[Prediction] = []
        changes: list[AlertChange] = []
        self._windows.clear()
        self._blocks.clear()
        scalar = [r for r in readings if r.tag not in self.indicators.blocks]
        if len(scalar) < len(readings):  # waveform samples: block indicators, each block's RMS rated in zones
            blocks = self.indicators.update([r for r in readings if r.tag in self.indicators.blocks])
            changes.extend(self._pending)  # the waveform tags' sensor conditions
            self._pending.clear()
            derived.extend(blocks)
            derived.extend(self._zones(blocks, changes))
        if scalar and self.anomaly_path is not None:
            await self.sync_detectors()
        if scalar:
            # One pass over the Reading objects; the rest is numpy per period.
            n = len(scalar)
            slots = slot_numbers(np.fromiter((r.time.timestamp() for r in scalar), float, n), self.config.period_s)
            values = np.fromiter((value_of(r) for r in scalar), float, n)
            both = np.fromiter((r.flags * 4 + r.quality for r in scalar), np.int64, n)  # one pass over the objects
            quality, flags = both & 3, both >> 2
            cls = classify(quality, flags, values, self.quality.out_of_range)
            # A sensor problem's value (frozen, the device's own doubt) is left out of every machine condition, as
            # a bad one always was: it tells nothing about the machine (maintenance.quality).
            use = usable(cls, self.quality.out_of_range)
            raw, values = values, np.where(use, values, np.nan)
            flagged = (cls != GOOD) | ((flags & int(Flag.OUT_OF_RANGE)) != 0)  # never trained on
            unc = use & (quality == Quality.UNCERTAIN)
            rows = np.fromiter((self.indicators.row.get(r.tag, -1) for r in scalar), np.int64, n)
            flat = np.fromiter((self.anomaly.flat.get(r.tag, -1) for r in scalar), np.int64, n)
            order = np.argsort(slots, kind="stable")
            ordered = slots[order]
            cuts = np.flatnonzero(np.diff(ordered)) + 1
            an = self.anomaly
            for g, first in zip(np.split(order, cuts), np.r_[0, cuts], strict=True):
                slot = int(ordered[first])
                if an.slot is None:
                    an.slot = slot
                if slot - an.slot > an.horizon:
                    # A gap: after `horizon` periods every signal is stale and every window empty (no scores),
                    # so the periods beyond need no scoring; jumping keeps a day's gap from stalling the loop.
                    for s in range(an.slot, an.slot + an.horizon):
                        self._score(s, preds, changes)
                    an.slot = slot
                while slot > an.slot:  # a new period began: score the finished one
                    self._score(an.slot, preds, changes)
                    an.slot += 1
                an.put(flat[g], values[g], slot, cls[g] == OUT_OF_RANGE, flagged[g])
                ind = g[rows[g] >= 0]
                new = self.indicators.update_arrays(rows[ind], slots[ind], values[ind], unc[ind], classes=cls[ind],
                                                    raw=raw[ind])
                changes.extend(self._pending)
                self._pending.clear()
                derived.extend(new)
                derived.extend(self._zones(new, changes))
            if an.slot is not None and an.complete(an.slot):
                # Score as soon as the period is complete rather than when the next one begins: the alert
                # then follows its readings within this call. Late readings of a scored period only
                # update the latest values (used by the next period).
                self._score(an.slot, preds, changes)
                an.slot += 1
            if self.anomaly.unsaved and self.anomaly_path is not None:
                await self._save_detectors()
            if self.rul is not None:
                if self.rul.due():
                    # Registry reads (files, the database) off the event loop: a slow database must not stall
                    # collection. Nothing else touches the RUL state meanwhile: groups are processed in turn.
                    await asyncio.to_thread(self.rul.refresh)
                p, c = self.rul.update(sorted((r for r in scalar if r.tag in self.rul.tag_of), key=lambda r: r.time))
                preds.extend(p)
                changes.extend(c)
                data = self.rul.journal()
                if data is not None:
                    # The cycles closed by this group are on disk (a journal line, fsync'd: a few hundred bytes an
                    # asset, not every asset's whole history) before its predictions are handed on: the readings were
                    # acknowledged upstream and are not analysed again, so a crash before the periodic save lost the
                    # cycle from the restored history (and every later EWM feature with it). A crash between the
                    # append and the spool loses the prediction row at most. Written off the event loop; a failure is
                    # logged, counted and made good by a snapshot at the periodic save.
                    try:
                        await asyncio.to_thread(self.rul.write, data)
                    except Exception:  # a bug in saving must not lose this group's predictions and alerts
                        self.rul.mark_unsaved()
                        if self.metrics is not None:
                            self.metrics.analytics_errors.inc()
                        log.exception("saving the RUL history failed; retried by the periodic save",
                                      extra={"event": "rul_state_not_saved"})
        changes.extend(self.rules.update(readings))
        changes.extend(self.rules.update(derived, judge=self._judge))
        # The caller's clock (the data's, never ahead of receipt: edge.pipeline) when given: one reading stamped
        # in the future must not escalate every open alert.
        newest = max((r.time for r in readings), default=None)
        t = now if now is not None else newest
        if t is not None:
            changes.extend(self.manager.tick(t, newest))
        self._say_late()
        return derived, preds, changes

    def _say_late(self) -> None:
        """Count and log the readings the indicator windows left out in this call: a backlog (an OPC UA history read,
        a Sparkplug node's historical values, a device's spool) that came after newer readings had moved the windows
        on. Its indicators, ISO zones and rules on indicators are not computed (the raw readings are stored, and rules
        on raw tags judge them); said once when it starts, with the tags and times lost, and once when it is over."""
        got = self.indicators.take_late()
        if not got:
            if self._late_run is not None:
                n = sum(v[0] for v in self._late_run.values())
                log.info("readings behind the indicator windows are over: %d left out in all, %d tag(s)", n,
                         len(self._late_run), extra={"event": "readings_behind_windows_over", "count": n})
                self._late_run = None
            return
        n = sum(v[0] for v in got.values())
        if self.metrics is not None:
            self.metrics.analytics_late.labels("indicators").inc(n)
        if self._late_run is None:
            self._late_run = {}
            lo, hi = min(v[1] for v in got.values()), max(v[2] for v in got.values())
            start = self.indicators.window_start()
            names = sorted(got)
            which = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            log.warning("%d reading(s) of %s from %s to %s arrived behind the indicator windows (open from %s): left "
                        "out of indicators, ISO zones and rules on indicators (stored all the same); said once until "
                        "they stop", n, which,
                        lo.isoformat(), hi.isoformat(), start.isoformat() if start is not None else "?",
                        extra={"event": "readings_behind_windows", "count": n, "tags": names[:20],
                               "oldest": lo.isoformat(), "newest": hi.isoformat()})
        for tag, (k, lo, hi) in got.items():
            run = self._late_run.setdefault(tag, [0, lo, hi])
            run[0] += k
            run[1], run[2] = min(run[1], lo), max(run[2], hi)

    def detector_records(self) -> list[dict]:
        """The records of the detector versions that came into service since the last call (trained here, adopted
        from ``train-anomaly``, restored at start), for ``anomaly_detector_versions`` through the spool (written
        once per version: `maintenance.store.write_detector_versions`)."""
        out, self.anomaly.records = self.anomaly.records, []
        return out

    async def sync_detectors(self) -> int:
        """Adopt the detectors another process put in the state file since this one last read or wrote it
        (`replace_detector`, run by ``valvoja maintenance train-anomaly``); returns how many. A stat per call
        (microseconds); the file is read, off the event loop, only when it changed."""
        fid = file_id(self.anomaly_path)
        if fid == self.anomaly.file_id:
            return 0
        try:
            saved, arrays = await asyncio.to_thread(read_asset_state, self.anomaly_path, STATE_FORMAT)
        except ValueError as exc:
            self.anomaly.file_id = fid  # once per version of the file; the next save writes a readable one
            self.anomaly.unsaved = True
            if self.metrics is not None:
                self.metrics.analytics_errors.inc()
            log.error("anomaly models written by another process not readable; keeping the current ones: %s", exc,
                      extra={"event": "anomaly_state_unreadable"})
            return 0
        return self.anomaly.adopt(saved, arrays, self.anomaly_path, fid)

    async def _save_detectors(self) -> None:
        """Write the fitted detectors (rare: when an asset finishes training) off the event loop, never over a
        version of the file this process has not seen (another process's change is adopted first, then written
        with ours); a failure is logged once per kind, counted, and retried with the next group of readings."""
        try:
            for _ in range(5):  # another writer between our read and our write: adopt its change and try again
                await self.sync_detectors()
                data, versions = self.anomaly.snapshot()
                fid = await asyncio.to_thread(replace_if_unchanged, self.anomaly_path, data, self.anomaly.file_id)
                if fid is not None:
                    self.anomaly.file_id, self.anomaly.known = fid, versions
                    self._save_error = None
                    return
            raise OSError("the file kept changing while it was being saved")
        except (OSError, ValueError) as exc:
            self.anomaly.unsaved = True
            if self.metrics is not None:
                self.metrics.analytics_errors.inc()
            if self._save_error != type(exc).__name__:
                self._save_error = type(exc).__name__
                log.error("anomaly models not saved to %s (a restart would train them again): %s",
                          self.anomaly_path, exc, extra={"event": "anomaly_state_not_saved"})

    def _window(self, end_slot: int, x: np.ndarray, cls: np.ndarray) -> None:
        """A closed indicator window (`IndicatorEngine.on_window`): its sensor conditions, and the quality of the
        windows zones and rules on indicators will judge."""
        n = len(NAMES)
        counts = np.bincount((np.arange(len(cls))[:, None] * n + cls).ravel(), minlength=len(cls) * n).reshape(-1, n)
        # Missing: of the readings each tag's own sampling step leaves room for, so a row sums to that many and every
        # share (min_share, sensor_share, data_quality) is of those (`expected_readings`).
        counts[:, MISSING] = expected_readings(cls) - (cls != MISSING).sum(axis=1)
        t = datetime.fromtimestamp(end_slot * self.config.period_s, UTC)
        good = cls == GOOD
        # A velocity RMS tag's readings are each the RMS over its own period: the RMS over the window, the quantity ISO
        # 20816 rates, is their quadratic mean. Their plain mean is lower wherever the vibration varies (half the time
        # at 6.4 mm/s and half at 1.0: mean 3.7, zone C, against 4.58, zone D for a group 2 rigid machine).
        sq = np.where(np.isfinite(x), x * x, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            self._windows[t] = (counts, np.sqrt(np.where(good, sq, 0.0).sum(axis=1) / counts[:, GOOD]),
                                np.sqrt(sq.sum(axis=1) / np.isfinite(x).sum(axis=1)))
        silent = self.indicators.silent_s(end_slot)
        self._pending.extend(self.sensors.window(t, counts, counts.sum(axis=1), silent))
        for tag, (asset, _) in self.waveform_of.items():  # a waveform gone silent: no block says so
            last = self.indicators.blocks[tag].last
            since = last.timestamp() if last is not None else self.indicators.first_slot * self.config.period_s
            self._pending.extend(self.sensors.silence(asset, tag, t, t.timestamp() - since, silent))

    def _block(self, tag: str, start: datetime, counts: np.ndarray) -> None:
        """A waveform block (`IndicatorEngine.on_block`): its samples per class, which its zone and rules judge, and
        the waveform tag's sensor condition."""
        self._blocks[(tag, start)] = counts
        asset, span = self.waveform_of[tag]
        self._pending.extend(self.sensors.block(asset, tag, start + timedelta(seconds=span), counts, span))

    def block_quality(self, tag: str, t: datetime) -> tuple[bool, bool, dict] | None:
        """How far the block of waveform ``tag`` starting at ``t`` can be trusted, as a window of scalar readings
        (`window_quality`): whether all its samples are good (its RMS is the machine's); whether it may only raise,
        unverified (flagged samples among them, usable ones filling ``min_share``: out of range counts as usable
        unless ``out_of_range = 'sensor'``); and its ``data_quality``. Neither: mostly flagged, not rated. None: not a
        block of this call."""
        counts = self._blocks.get((tag, t))
        if counts is None:
            return None
        q = self.quality
        n = int(counts.sum())
        oor = counts[OUT_OF_RANGE] if q.out_of_range == "unverified" else 0
        good = bool(counts[GOOD] == n)
        mixed = not good and counts[GOOD] + oor >= q.min_share * n
        return good, mixed, data_quality(counts, n, samples=n, window_s=self.waveform_of[tag][1])

    def window_quality(self, tag: str, t: datetime) -> tuple[float | None, bool | None, np.ndarray]:
        """How far the window of ``tag`` ending at ``t`` can be trusted: the RMS (quadratic mean) of its good
        readings when they fill ``min_share`` of it (else None); whether out-of-range readings are among its usable
        ones, which fill ``min_share`` with the good ones (its statistics are then unverified; else None); its class
        counts."""
        q = self.quality
        row = self.indicators.row[tag]
        counts, rms = self._windows[t][:2]
        counts, good_rms = counts[row], float(rms[row])
        n = counts.sum()  # the readings the tag's sampling step leaves room for in the window
        good = counts[GOOD] / n
        oor = counts[OUT_OF_RANGE] / n if q.out_of_range == "unverified" else 0.0
        trusted = good_rms if counts[GOOD] and good >= q.min_share else None
        unverified = (oor > 0 and good + oor >= q.min_share) or None
        return trusted, unverified, counts

    def _data_quality(self, counts: np.ndarray) -> dict:
        return data_quality(counts, counts.sum(), window_s=self.config.window_s)

    def _judge(self, d: Reading) -> tuple[int, dict] | None:
        """A rule on an indicator judges its window: it holds (MISSING) without ``min_share`` of usable readings,
        and a window with out-of-range readings in it is out of range (unverified), as one raw reading would be."""
        base = d.tag.rsplit(".", 1)[0]
        block = self.block_quality(base, d.time)
        if block is not None:  # a waveform block's indicator: its samples, as a window's readings
            good, mixed, dq = block
            return (GOOD if good else OUT_OF_RANGE if mixed else MISSING), dq
        if d.time not in self._windows or base not in self.indicators.row:
            return None  # not a window of this engine: its own flags say
        trusted, mixed, counts = self.window_quality(base, d.time)
        return (OUT_OF_RANGE if mixed else GOOD if trusted is not None else MISSING), self._data_quality(counts)

    def _zones(self, derived: list[Reading], changes: list[AlertChange]) -> list[Reading]:
        out = []
        for d in derived:
            hit = self.zone_of.get(d.tag)
            if hit is None:
                continue
            asset, tracker = hit
            tag = d.tag.rsplit(".", 1)[0]
            if tracker.current is None:
                # First value since the start (or a reload): with the tag's zone alert open (loaded from the store),
                # start from its zone so the hysteresis holds across the restart. Starting without a zone, a value
                # just under the boundary (inside the band) read as zone B and cleared the alert, raised again at the
                # next value above it: an alert and a notification per restart (as the rules' deadband, rules.py).
                held = self.manager.open.get(dedup_key(asset, tag, "iso20816"))
                if held is not None:
                    z0 = held.alert.evidence.get("zone")
                    tracker.current = z0 if z0 in ("C", "D") else "C"
            b = tracker.config.boundaries
            block = self.block_quality(tag, d.time)
            measured = float(d.value)  # the RMS of the block, or of the window's usable readings (below)
            if block is not None:
                # A waveform block's RMS (bad samples end a block): all samples good, it is the machine's; with flagged
                # ones among usable ones filling min_share it may raise the zone, unverified, never lower it; mostly
                # flagged, it says nothing about the machine and the zone holds (the tag's sensor alert says why).
                good, mixed, dq = block
                trusted, mixed = (float(d.value) if good else None), mixed or None
            elif d.time in self._windows:
                trusted, mixed, counts = self.window_quality(tag, d.time)
                dq = self._data_quality(counts)
                measured = float(self._windows[d.time][2][self.indicators.row[tag]])
            else:
                continue  # neither a window nor a block of this call: nothing to judge it by
            # The zone follows the good readings only. Out-of-range ones (a broken loop, or vibration beyond what the
            # sensor was expected to see) may raise it, unverified, never lower it: a cable reading 0 must not clear
            # zone D. Without enough of either (a sparse first window, a frozen sensor) the zone holds and its alert
            # stays as it is; the sensor alert says why.
            prev = tracker.current
            if trusted is not None:
                tracker.update(trusted)
            value = trusted
            unverified = bool(mixed) and (tracker.current is None
                                          or ZONES.index(zone(measured, b)) > ZONES.index(tracker.current))
            if unverified:
                tracker.current, value = zone(measured, b), measured
            if value is None:
                continue
            z = tracker.current
            out.append(replace(d, tag=f"{tag}.iso_zone", value=ZONES.index(z)))
            if z == prev and z not in ("C", "D") and dedup_key(asset, tag, "iso20816") not in self.manager.open:
                continue  # calm and no alert waiting to clear: nothing to tell the manager
            sev = SEVERITY[z]
            note = ""
            if unverified and sev is not None:
                sev = lower(sev)
                if block is not None:
                    flagged = ", ".join(f"{dq[NAMES[c]]:.0%} {NAMES[c]}" for c in FLAGGED if dq[NAMES[c]])
                    note = (f"; unverified: samples of the waveform block are flagged ({flagged}; a sensor fault, or "
                            "vibration beyond the sensor's range): check the sensor")
                else:
                    note = (f"; unverified: {dq['out_of_range']:.0%} of the window's readings are out of the sensor's "
                            "range (a sensor fault, or vibration beyond it): check the sensor")
            band = self.iso_band_of.get(tag)
            changes.extend(self.manager.observe(
                asset=asset, tag=tag, kind="iso20816", active=sev is not None, t=d.time, severity=sev or "info",
                message=f"{tag}: vibration {value:.2f} mm/s"
                        f"{f' ({band[0]:g}-{band[1]:g} Hz)' if band else ''} in ISO 20816-3 zone {z} "
                        f"(boundaries {b[0]}/{b[1]}/{b[2]} mm/s, group {tracker.config.group}, "
                        f"{tracker.config.foundation}){note}",
                evidence={"readings": [{"tag": d.tag, "time": d.time, "value": d.value}], "zone": z,
                          "velocity_rms_mm_s": value, "boundaries_mm_s": list(b),
                          **({"band_hz": list(band)} if band else {}),
                          "data_quality": {**dq, "unverified": unverified}}))
        return out

    def _score(self, slot: int, preds: list[Prediction], changes: list[AlertChange]) -> None:
        an = self.anomaly
        if not an.assets:
            return
        x, oor = an.sample(slot)
        # A stopped machine's period is no sample either: standstill is not the operation the detector learnt (it
        # flagged every stop, and a stop during training was learnt as healthy).
        reported = an.reported(slot) & ~an.stopped(x)
        if an.training:
            an.train_ready(x, slot, reported)
        t = datetime.fromtimestamp((slot + 1) * self.config.period_s, UTC)
        for rows, bank in an.banks:
            w = max(len(an.assets[i].anomaly.signals) for i in rows)
            score, p, contrib = bank.push(x[rows][:, :w], oor[rows][:, :w], reported[rows])
            flags = p <= bank.alpha
            quality = bank.window_quality()
            for k, i in enumerate(rows):
                if np.isnan(p[k]):
                    # No sample, or a window not full: no prediction, and the alert stays as it is.
                    if reported[i]:
                        self._unscored(int(i), bank, k)
                    continue
                an.unscored.pop(int(i), None)
                an.said_unscored.discard(int(i))
                self._anomaly_result(int(i), slot, t, float(score[k]), float(p[k]), bool(flags[k]), contrib[k],
                                     preds, changes, bank.window, [q[k] for q in quality])

    def _unscored(self, i: int, bank: AnomalyBank, k: int) -> None:
        """An asset sending samples but never a full window (a sensor flagged again and again, a signal silent while
        the others report) is scored by nothing: said once, naming the signals with gaps, rather than a detector gone
        quiet without a word."""
        an = self.anomaly
        n = an.unscored[i] = an.unscored.get(i, 0) + 1
        if i in an.said_unscored or n < UNSCORED_WINDOWS * bank.window:
            return
        an.said_unscored.add(i)
        det = an.detectors[i]
        gaps = [det.signals_[j] for j in np.flatnonzero(np.isnan(bank.buf[k]).any(axis=0))]
        log.warning("asset %s: no anomaly score for the last %d samples: %s had no usable value in every sample of the "
                    "window (flagged again and again, or silent while the asset's other signals report); scores need "
                    "each signal in each of the window's %d samples", an.assets[i].name, n, ", ".join(gaps),
                    bank.window, extra={"event": "anomaly_unscored", "asset": an.assets[i].name})

    def _anomaly_result(self, i: int, slot: int, t: datetime, score: float, p: float, flag: bool,
                        contrib: np.ndarray, preds: list[Prediction], changes: list[AlertChange], window: int,
                        quality: list) -> None:
        an = self.anomaly
        a = an.assets[i]
        det = an.detectors[i]
        every = max(1, round(a.anomaly.predict_every_s / self.config.period_s))
        an.run[i] = an.run.get(i, 0) + 1 if flag else 0
        confirm = a.anomaly.confirm_samples(det.decorrelation_)
        # Confirmation debounces raising; a flag on an asset whose alert is already open keeps it open.
        active = (an.run[i] >= confirm or (flag and dedup_key(a.name, None, "anomaly") in self.manager.open))
        # A run of one signal's own flags confirms at that signal's own length (`anomaly.confirmed_by_signal`): a
        # slow temperature beside vibrations made a vibration fault wait 153 samples instead of 21.
        own = (signal_confirms(det.config.window, det.decorrelation_)
               if a.anomaly.confirm is None and det.config.score == "max_z" else None)
        runs = None if own is None else own_runs(confirm, own)
        if runs is not None and runs.any():
            sig = det.signal_flags(contrib)
            if sig is not None:
                an.signal_run[i] = np.where(sig, an.signal_run.get(i, 0) + 1, 0)
                active = active or bool(((an.signal_run[i] >= runs) & (runs > 0)).any())
        if not flag and slot - an.last_pred.get(i, -(10**12)) < every:
            changes.extend(self.manager.observe(asset=a.name, tag=None, kind="anomaly", active=False, t=t))
            return
        an.last_pred[i] = slot
        total = float(np.clip(contrib, 0, None).sum()) or 1.0
        top = [{"signal": det.signals_[j], "share": round(float(max(contrib[j], 0.0)) / total, 3)}
               for j in np.argsort(-contrib)[:3]]
        start = datetime.fromtimestamp((slot + 1 - det.config.window) * self.config.period_s, UTC)
        # An anomaly that rests mostly on out-of-range values (their share of the score) may be a broken sensor:
        # unverified, one severity lower (maintenance.quality).
        good, out, oor = quality  # `AnomalyBank.window_quality` of this asset
        unverified = bool(flag and oor.any() and np.clip(contrib, 0, None)[oor].sum() >= 0.5 * total)
        quality = {"samples": window, "good": round(float(good), 3), "out_of_range": round(float(out), 3),
                   "missing": round(float(1.0 - good - out), 3), "unverified": unverified,
                   "signals_out_of_range": [det.signals_[j] for j in np.flatnonzero(oor)]}
        pred = Prediction(f"anomaly:{a.name}", an.versions[i], a.name, t, score, p_value=p, input_start=start,
                          input_end=t, kind="anomaly",
                          details={"alpha": det.config.alpha, "top_signals": top, "signals": det.signals_,
                                   "confirm": confirm, "confirm_by_signal": None if runs is None else runs.tolist(),
                                   "data_quality": quality})
        preds.append(pred)
        names = ", ".join(f"{c['signal']} ({c['share']:.0%})" for c in top)
        if flag and not active:
            return  # flagged, not yet confirmed: stored as a prediction, no alert change
        note = "; unverified: it rests on out-of-range values of " + ", ".join(quality["signals_out_of_range"]) + \
            " (a sensor fault, or real): check the sensor" if unverified else ""
        changes.extend(self.manager.observe(
            asset=a.name, tag=None, kind="anomaly", active=active, t=t, severity=lower("warning") if unverified
            else "warning",
            message=f"{a.name}: anomalous operation (p = {p:.4f} <= {det.config.alpha}); top signals: {names}{note}",
            evidence={"prediction": {"model_id": pred.model_id, "model_version": pred.model_version, "value": score,
                                     "p_value": p, "alpha": det.config.alpha, "time": t,
                                     "input_start": start, "input_end": t},
                      "top_signals": top, "data_quality": quality}))
