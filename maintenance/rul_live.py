"""Remaining useful life in the gateway: a RUL model (``rul_export``) served per asset, cycle by cycle.

For each asset with ``[maintenance.assets.rul]`` the readings of its setting and sensor tags are averaged
per cycle: cycles of ``cycle_s`` seconds (a cycle closes as soon as every tag the model uses has sent its last
reading for it: its latest one plus its sampling step, the gap to its previous reading but at most ``period_s``,
reaches the cycle's end; or when every such tag has sent a reading of a later cycle, held till then, or one a whole
cycle after its end arrives: a source lagging behind the others), or the asset's own cycles counted by a
``cycle_tag`` (flights, batches, strokes: a cycle closes when the counter changes, the counter value is the
age, and a counter that goes back starts a new life with an empty history; a reading older than the
current cycle's start is late and left out). Flagged readings of the settings and sensors (out of range, frozen,
the device's own doubt: `maintenance.quality`) are left out of the cycle means as bad ones are: a sensor fault must
not move the RUL; each prediction states the share of good readings in its cycle (``details.data_quality``), and
the RUL alert holds (neither raised nor cleared) on a cycle in which less than ``[maintenance.quality] min_share``
of the model's tags had a good reading. Each closed cycle goes through
the same steps as in training, incrementally: per-condition normalisation with the card's fitted parameters, the causal
bias-corrected exponentially weighted means (one recursion per span: ``num = x + (1 - a) num``,
``den = 1 + (1 - a) den``, exactly `rul.ewm`), the trend and the age in cycles; then the ONNX graph through
``models.runtime.OnnxModel`` (file checked against its sha256), the output clipped to [0, cap], and the
binned conformal interval of the card (``rul_intervals``; open-ended at the cap: ``upper`` None and
``details.open_ended``); a row the runtime refuses (a value beyond float32, a non-finite output) gives no
prediction for that cycle (logged, event ``rul_input_refused``); so does a cycle whose normalised sensors lie
beyond the range the model was trained on (the card's ``z_min``/``z_max`` widened by `DOMAIN_MARGIN`: an operating
condition the model never saw; event ``rul_out_of_domain`` once a run, and the cycle is left out of the EWM history).
Every ``predict_every`` cycles a `Prediction`
(kind ``rul``, model id, model version = sha256 of the ONNX file, registry version in ``details``) goes to the
predictions table; with ``alert_below``, an alert is raised while the interval's lower end is below that many cycles.

The model comes from a version directory or the registry's champion of a model id (its index in
``index.json`` or, with ``registry_db``, the site database the console promotes in). A registry-served asset
asks for the champion every ``refresh_s`` seconds and swaps a newly promoted or rolled-back version in
between two cycles, its features rebuilt from the cycles kept (`RulLive`).

The kept cycles outlive the process (`maintenance.rul_state`): each group of readings that closes cycles appends
them to a journal (``rul_state.journal``, one fsync'd line, before the group's predictions are handed on
(`maintenance.live`)); `snapshot` + `write` save every asset's per-cycle means, its current cycle and its age to
``rul_state.npz`` (atomically) at shutdown, with the cycle in progress, and at a periodic save once the journal is
as large as the snapshot; the next start reads the snapshot and the journal lines after it, so a restarted gateway
goes on with the asset's age and EWM history instead of starting a new life (the longest span, 240 cycles, takes
hundreds of cycles to fill again). A crash loses at most the readings of the cycle in progress (they are stored;
the cycle's mean is then made of the readings after the restart); killed between a close's append and the spool,
the gateway loses that cycle's prediction row, never the cycle. A saved asset whose tags or cycle settings changed
is not restored (logged).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge.errors import ConfigError, DataError
from edge.files import pack_state, read_state, write_atomic
from edge.records import Prediction, Reading
from maintenance import rul_state
from maintenance.alerts import AlertChange, AlertManager
from maintenance.config import AssetConfig, RulAssetConfig
from maintenance.indicators import value_of
from maintenance.quality import GOOD, QualityConfig, classify_reading
from maintenance.rul_intervals import BinnedConformal

log = logging.getLogger(__name__)
COUNTER = -1  # the position of an asset's cycle counter tag in `RulLive.tag_of`
STATE_FILE = "rul_state.npz"
STATE_FORMAT = 1
# How far beyond the training range of a normalised sensor (as a share of that range, on each side) a cycle may go
# and still be predicted: room for sensor noise and wear a little past the worst training engine, while an asset in
# an operating condition the model never saw (thousands of standard deviations off) is refused.
DOMAIN_MARGIN = 0.5


class ServedRulModel:
    """The card's preprocessing + the ONNX graph + the binned intervals of one RUL model version."""

    def __init__(self, directory: str | Path, *, onnx=None) -> None:
        """``directory`` (``model.onnx`` + ``card.json``, a configured ``model_dir``), or a registry version's
        model already loaded and checked (``onnx``: `ModelVersion.load`, which checks both files)."""
        from models.runtime import OnnxModel

        self.onnx = onnx if onnx is not None else OnnxModel.load(directory)
        card = self.onnx.card
        try:
            pp = card["preprocessing"]
            cond = pp["conditions"]
            ri = card["rul_intervals"]
        except KeyError as exc:
            raise ConfigError(f"{directory}: not a RUL model card (no {exc}); export it with "
                              "maintenance.rul_export") from None
        self.card = card
        self.model_id = card.get("model_id", "")
        self.sha256 = self.onnx.sha256
        self.registry_version = card.get("version")
        self.sensors = pp["sensors"]  # indices into the configured sensor tags, or None: all of them
        self.spans = np.asarray(pp["spans"], float)
        self.centres = np.asarray(cond["centres"], float)
        self.scale = np.asarray(cond["settings_scale"], float)
        self.mean = np.asarray(cond["mean"], float)
        self.std = np.asarray(cond["std"], float)
        self.keep = np.asarray(cond["keep"], bool)
        self.cap = float(card["rul"]["cap"])
        self.intervals = BinnedConformal.from_dict(ri)
        self.width = int(self.keep.sum())
        self.z_low = self.z_high = None  # a card exported before the range was recorded: no domain check
        if cond.get("z_min") is not None and cond.get("z_max") is not None:
            lo, hi = np.asarray(cond["z_min"], float), np.asarray(cond["z_max"], float)
            if lo.shape != (self.width,) or hi.shape != (self.width,):
                raise ConfigError(f"{directory}: the card's sensor range has {lo.size} values for {self.width} "
                                  "kept sensors")
            self.z_low, self.z_high = lo - DOMAIN_MARGIN * (hi - lo), hi + DOMAIN_MARGIN * (hi - lo)
        expect = 1 + self.width * (len(self.spans) + 1)
        if len(self.onnx.schema) != expect:
            raise ConfigError(f"{directory}: the graph takes {len(self.onnx.schema)} inputs, the card's preprocessing "
                              f"makes {expect}")

    def normalise(self, settings: np.ndarray, sensors: np.ndarray) -> np.ndarray:
        """One row: sensors standardised within the nearest operating condition, constant ones dropped."""
        if self.centres.shape[0] == 1:
            c = 0
        else:
            c = int((((settings / self.scale)[None, :] - self.centres) ** 2).sum(axis=1).argmin())
        return ((sensors - self.mean[c]) / self.std[c])[self.keep]

    def outside(self, z: np.ndarray) -> np.ndarray:
        """Positions among the kept sensors of a normalised row (`normalise`) beyond the training range widened by
        `DOMAIN_MARGIN`: the model has no knowledge there, so a RUL computed from it would be a guess shown as a
        figure with a 90 % interval."""
        if self.z_low is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero((z < self.z_low) | (z > self.z_high))

    def kept_sensors(self, n_configured: int) -> list[int]:
        """The configured sensor column of each kept (normalised) sensor, in the order of `normalise`'s output."""
        used = list(range(n_configured)) if self.sensors is None else list(self.sensors)
        return [used[j] for j in np.flatnonzero(self.keep)]

    def predict(self, x: np.ndarray) -> tuple[float, float, float]:
        """Value clipped to [0, cap], interval lower and upper (inf = open-ended) for one feature row."""
        out = self.onnx.predict(x[None, :])
        value = float(np.clip(out.value[0], 0.0, self.cap))
        lo, hi = self.intervals.interval(np.array([value]))
        return value, float(lo[0]), float(hi[0])


@dataclass
class EwmState:
    """Incremental `rul.history_features` of one asset."""

    alpha: np.ndarray  # (spans,)
    num: np.ndarray  # (spans, k)
    den: np.ndarray  # (spans,)

    @classmethod
    def new(cls, spans: np.ndarray, k: int) -> EwmState:
        return cls(2.0 / (spans + 1.0), np.zeros((len(spans), k)), np.zeros(len(spans)))

    def push(self, z: np.ndarray, cycle: float) -> np.ndarray:
        decay = (1.0 - self.alpha)
        self.num = z[None, :] + decay[:, None] * self.num
        self.den = 1.0 + decay * self.den
        e = self.num / self.den[:, None]
        return np.concatenate([[float(cycle)], e.ravel(), e[1] - e[-1]])


@dataclass
class _Asset:
    name: str
    cfg: RulAssetConfig
    model: ServedRulModel | None  # None until the registry has a champion (or can be read)
    sel: np.ndarray  # positions (settings, then sensors of the configuration) of the model's inputs
    n_settings: int  # how many of ``sel`` are settings
    period: float  # [maintenance] period_s: the longest sampling step a tag is assumed to have (cycles by time)
    state: EwmState | None
    history: deque  # (age, per-cycle means of every configured tag) of closed cycles, to replay on a swap
    slot: int | None = None
    first_slot: int | None = None
    closed: bool = False
    sums: np.ndarray = field(default_factory=lambda: np.zeros(0))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    last: np.ndarray = field(default_factory=lambda: np.zeros(0))
    flagged: np.ndarray = field(default_factory=lambda: np.zeros(0))  # readings of the cycle left out (not saved)
    # Cycles by time, per tag (not saved): the time of its previous reading, its sampling step (the latest gap, at
    # most `period`) and the time of its latest reading in the current cycle (NaN: none yet).
    prev: np.ndarray = field(default_factory=lambda: np.zeros(0))
    step: np.ndarray = field(default_factory=lambda: np.zeros(0))
    latest: np.ndarray = field(default_factory=lambda: np.zeros(0))
    appended: int = 0  # cycles closed since the asset's last journal record
    reset: bool = False  # a new life (history emptied) since the asset's last journal record
    cycles: int = 0  # feature rows pushed
    last_pred: int = -(10**9)
    next_refresh: float = 0.0
    refused: str | None = None  # sha256 of a champion that could not be served (logged once)
    refused_files: bool = False  # ... for its files (changed, missing): tried again at each refresh
    first_time: datetime | None = None  # counter mode: when the first counted cycle began
    end_time: datetime | None = None  # counter mode: when the cycle being closed ended
    error: str | None = None  # the registry's last read error (logged once until it changes)
    gone: bool = False  # the registry named no champion while one was served (logged once until one is named)
    out_of_domain: int = 0  # consecutive cycles refused as beyond the model's training range (logged once a run)
    # Cycles by time: readings of later cycles (pos, seconds, value, good) held while the current cycle waits for a
    # model tag that has not passed its end yet (a source lagging behind the others), and which tags they are of.
    ahead: list = field(default_factory=list)
    beyond: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    late: int = 0  # readings left out for a cycle already closed (logged once a run, see `late_said`)
    late_said: bool = False


def _describe(model: ServedRulModel | None) -> str:
    if model is None:
        return "no version (none served yet)"
    return f"{model.model_id} v{model.registry_version}" if model.registry_version is not None else model.model_id


def _registry(cfg: RulAssetConfig, dsn: str | None):
    from models.registry import Registry

    return Registry(cfg.registry, dsn if cfg.registry_db else None)


def bind(name: str, cfg: RulAssetConfig, model: ServedRulModel) -> tuple[np.ndarray, int]:
    """Positions among the configured tags (settings, then sensors) of the model's inputs and how many of them
    are settings; `ConfigError` where the model and the configuration do not fit together."""
    used = list(range(len(cfg.sensors))) if model.sensors is None else list(model.sensors)
    if max(used) >= len(cfg.sensors):
        raise ConfigError(f"asset {name!r}: the RUL model uses sensor column {max(used)} but "
                          f"{len(cfg.sensors)} sensor tags are configured")
    if len(model.mean[0]) != len(used):
        raise ConfigError(f"asset {name!r}: the RUL model was fitted on {len(model.mean[0])} sensors, "
                          f"not {len(used)}")
    multi = model.centres.shape[0] > 1
    if multi and len(cfg.settings) != model.centres.shape[1]:
        raise ConfigError(f"asset {name!r}: the RUL model has {model.centres.shape[0]} operating conditions "
                          f"of {model.centres.shape[1]} settings; {len(cfg.settings)} setting tags configured")
    ns = len(cfg.settings) if multi else 0
    sel = np.array(list(range(ns)) + [len(cfg.settings) + j for j in used], dtype=np.int64)
    tags = list(cfg.settings) + list(cfg.sensors)
    if any(not tags[i] for i in sel):
        raise ConfigError(f"asset {name!r}: a sensor column the RUL model uses has no tag")
    return sel, ns


def _replayed(history, model: ServedRulModel, sel: np.ndarray, ns: int) -> EwmState:
    """The EWM state of ``model`` after the kept cycles (cycles with a tag not yet seen give no row, as live)."""
    state = EwmState.new(model.spans, model.width)
    for age, raw in history:
        row = raw[sel]
        if np.isfinite(row).all():
            z = model.normalise(row[:ns], row[ns:])
            if not model.outside(z).size:  # as live: a cycle beyond the training range is not in the history
                state.push(z, age)
    return state


def _reset(a: _Asset) -> None:
    a.history.clear()
    a.appended, a.reset = 0, False
    a.slot = a.first_slot = a.first_time = a.end_time = None
    a.closed, a.cycles, a.last_pred = False, 0, -(10**9)
    a.sums[:] = 0.0
    a.counts[:] = 0.0
    a.flagged[:] = 0.0
    a.latest[:] = np.nan
    a.last[:] = np.nan


def _new_cycle(a: _Asset) -> None:
    a.sums[:] = 0.0
    a.counts[:] = 0.0
    a.flagged[:] = 0.0
    a.latest[:] = np.nan


def _sampled(a: _Asset, pos: int, ts: float) -> None:
    """Note a reading of the tag at ``pos`` at ``ts`` (seconds): its sampling step and its latest time this cycle."""
    gap = ts - a.prev[pos]
    if gap > 0:  # NaN (its first reading) and repeats leave the step as it was
        a.step[pos] = min(gap, a.period)
    a.prev[pos] = a.latest[pos] = ts


def _passed(a: _Asset) -> bool:
    """Cycles by time: every model tag has sent its last reading for the current cycle (`_complete`'s test) or one
    of a later cycle (held in `ahead`): readings come in time order per tag, so none of this cycle is still due."""
    end = (a.slot + 1) * a.cfg.cycle_s
    return bool(((a.latest[a.sel] + a.step[a.sel] >= end - 1e-6) | a.beyond[a.sel]).all())


def _complete(a: _Asset) -> bool:
    """Cycles by time: every tag of the model has sent the last reading its sampling step leaves room for before
    the cycle's end (its next one falls in the next cycle), so the cycle can close now rather than at the next
    cycle's first reading. It used to close once every tag had ``cycle_s / period_s`` readings: a tag sampled
    faster than ``period_s`` got there early, and the rest of its cycle was dropped as late."""
    end = (a.slot + 1) * a.cfg.cycle_s
    return bool((a.latest[a.sel] + a.step[a.sel] >= end - 1e-6).all())  # NaN (no reading yet): False


class RulLive:
    """RUL predictions (and optional alerts) of every asset configured with a RUL model.

    Registry-served assets ask the registry for the champion every ``refresh_s`` seconds (``clock``) and swap a
    new champion in between two cycles: the asset's EWM state is rebuilt by replaying its kept cycles
    (``history_cycles``) through the new version's normalisation, so the next prediction is the one the new
    version would have made had it served from the start (exactly, while the asset's history fits in
    ``history_cycles``; beyond, the dropped cycles weigh less than (1 - 2/(span + 1))^history_cycles, about
    e^-16 for a span of 240 and 2,000 cycles). A champion that cannot be served (file not matching its sha256,
    not a RUL card, inputs the configuration does not map) is refused, logged once and counted; the served
    version goes on; one refused for its files is tried again at each refresh (served once they are restored).
    """

    def __init__(self, assets: list[AssetConfig], manager: AlertManager, period_s: float, *, dsn: str | None = None,
                 clock: Callable[[], float] = time.monotonic, metrics=None, state_dir: Path | None = None,
                 quality: QualityConfig | None = None) -> None:
        self.manager = manager
        self.quality = quality or QualityConfig()
        self.dsn = dsn
        self.clock = clock
        self.metrics = metrics
        self.swaps = 0
        self.refusals = 0
        self.refused_cycles: dict[str, int] = {}  # reason -> cycles closed without a prediction for it
        self.state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
        self.restored: dict[str, int] = {}  # asset -> cycles restored from the state file at start
        # Changed since the last snapshot: any reading taken (the cycle in progress is saved too, not only the closed
        # ones: a stop after a periodic save lost its readings), and whether a cycle closed (saved at once).
        self._dirty = False
        self.closed_unsaved = False
        self._snapshots = 0
        self._written = 0
        self._write_lock = threading.Lock()
        self._write_error: str | None = None
        # The journal of closed cycles (maintenance.rul_state): the last line's sequence number, the file's size,
        # the snapshot's last size (the journal is folded in once as large), a torn tail to cut before the next
        # append, the first line lost by a failed append (no line is appended until a snapshot holds it), and
        # whether the journal read at start is to be folded in at the next periodic save.
        self.journal_path = self.state_path.with_name(rul_state.JOURNAL_FILE) if self.state_path else None
        self._jseq = 0
        self._journal_size = 0
        self._snapshot_size = 0
        self._cut: int | None = None
        self._lost_seq: int | None = None
        self._compact_due = False
        self.compact_bytes: int | None = None  # journal size that folds it in (None: the snapshot's, >= 64 KiB)
        self.bytes_written = {"journal": 0, "snapshot": 0}  # bytes handed to the file system (bench/tests)
        self.assets: list[_Asset] = []
        self.tag_of: dict[str, tuple[int, int]] = {}  # tag -> (asset, position among its configured tags)
        now = clock()
        for a in assets:
            cfg = a.rul
            if metrics is not None:
                metrics.known_rul(a.name, cfg.model_id if cfg.model_dir is None else None)
            tags = list(cfg.settings) + list(cfg.sensors)
            n = len(tags)
            st = _Asset(a.name, cfg, None, np.flatnonzero([bool(t) for t in tags]), 0,
                        float(period_s), None, deque(maxlen=cfg.history_cycles),
                        sums=np.zeros(n), counts=np.zeros(n), last=np.full(n, np.nan), flagged=np.zeros(n),
                        prev=np.full(n, np.nan), step=np.full(n, float(period_s)), latest=np.full(n, np.nan),
                        next_refresh=now + cfg.refresh_s, beyond=np.zeros(n, bool))
            if cfg.model_dir is not None:
                try:
                    model = ServedRulModel(cfg.model_dir)
                except (OSError, ValueError) as exc:  # unreadable or corrupt files: name the setting
                    raise ConfigError(f"maintenance asset {a.name!r}: rul.model_dir {cfg.model_dir}: cannot load "
                                      f"the model ({exc})") from None
                self._serve(st, model)
            else:
                if cfg.registry_db and not dsn:
                    raise ConfigError(f"asset {a.name!r}: model registry {cfg.registry}: registry_db needs the site "
                                      "database (none configured)")
                mv = self._champion(st)  # None: no champion yet, or the registry not readable now (retried)
                onnx = self._files(st, mv) if mv is not None else None
                if onnx is not None:
                    # A configuration that does not fit the champion is an error at start-up, not a log line.
                    self._serve(st, ServedRulModel(mv.path, onnx=onnx))
                elif st.error is None:
                    log.warning("asset %s: RUL model %s has no champion yet; cycles are kept and predictions start "
                                "when one is promoted", a.name, cfg.model_id,
                                extra={"event": "model_no_champion", "asset": a.name})
            for j, t in enumerate(tags):
                if t:
                    self.tag_of[t] = (len(self.assets), j)
            if cfg.cycle_tag:
                self.tag_of[cfg.cycle_tag] = (len(self.assets), COUNTER)
            self.assets.append(st)
        if self.state_path is not None:
            self._load()

    # -- the served version ---------------------------------------------------------------------
    def due(self) -> bool:
        """Whether a registry-served asset is due to ask for its champion (`refresh`)."""
        now = self.clock()
        return any(a.cfg.model_dir is None and now >= a.next_refresh for a in self.assets)

    def refresh(self, force: bool = False) -> int:
        """Ask the registry for the champion of every registry-served asset due (all with ``force``) and swap
        where it changed; returns the number of swaps. Never raises: a failure keeps the served version.
        Blocking I/O (registry files, its database): the gateway calls it in a worker thread between two
        `update` calls, never concurrently with one."""
        now = self.clock()
        champions: dict[tuple, object] = {}
        swapped = 0
        for a in self.assets:
            cfg = a.cfg
            if cfg.model_dir is not None or (not force and now < a.next_refresh):
                continue
            a.next_refresh = now + cfg.refresh_s
            key = (cfg.registry, cfg.registry_db, cfg.model_id)
            if key not in champions:
                champions[key] = self._champion(a)
            mv = champions[key]
            if mv is None:
                if a.model is not None and a.error is None and not a.gone:
                    # Only an index restored from an older backup (or edited) loses its champion: promotions and
                    # rollbacks always leave one. The served version goes on, but it is no longer the promoted one.
                    a.gone = True
                    log.warning("asset %s: the registry names no champion of %s any more (an index restored from an "
                                "older backup?); %s goes on being served until one is promoted", a.name,
                                cfg.model_id, _describe(a.model),
                                extra={"event": "model_champion_gone", "asset": a.name})
                continue
            a.gone = False
            served = a.model.sha256 if a.model is not None else None
            if mv.sha256 == served or (mv.sha256 == a.refused and not a.refused_files):
                continue
            # A champion refused for its files (changed, missing, unreadable) is tried again at every refresh (they
            # are read and hashed): a refusal for good kept the previous version served after the files were
            # restored, while the registry named the champion. One that does not fit the configuration is not
            # (that takes a configuration change, and a restart). Logged and counted once per version.
            try:
                self._serve(a, ServedRulModel(mv.path, onnx=mv.load()))
                swapped += 1
            except Exception as exc:  # an unusable version must not stop the served one
                from models.runtime import IntegrityError

                a.refused_files = isinstance(exc, (OSError, IntegrityError))
                if a.refused != mv.sha256:
                    a.refused = mv.sha256
                    self.refusals += 1
                    self._count(cfg.model_id, "refused")
                    log.error("asset %s: RUL model %s v%s not served, keeping %s: %s", a.name, cfg.model_id,
                              mv.version, _describe(a.model), exc,
                              extra={"event": "model_swap_refused", "asset": a.name})
        return swapped

    def status(self) -> list[dict]:
        """Per asset, the RUL model version being served (for /healthz): model id, registry version, sha256,
        cycles seen, swaps so far, and a refused version or registry error if any."""
        out = []
        for a in self.assets:
            m = a.model
            out.append({"asset": a.name, "model_id": m.model_id if m else a.cfg.model_id,
                        "version": m.registry_version if m else None, "sha256": m.sha256 if m else None,
                        "cycles": len(a.history), "refused_sha256": a.refused, "registry_error": a.error,
                        "out_of_domain_cycles": a.out_of_domain, "late_readings": a.late})
        return out

    def _files(self, a: _Asset, mv):
        """The champion's ONNX model at start, or None when its files are refused (changed, missing, a graph this
        onnxruntime cannot run): raised, that stopped the whole gateway, though a restored file or another
        promotion mends it with no configuration change. Refused as at a refresh: logged and counted once, tried
        again at each refresh, the asset's cycles kept meanwhile."""
        from models.runtime import IntegrityError

        try:
            return mv.load()
        except (OSError, IntegrityError) as exc:
            a.refused, a.refused_files = mv.sha256, True
            self.refusals += 1
            self._count(a.cfg.model_id, "refused")
            log.error("asset %s: RUL model %s v%s not served at start, tried again at each refresh: %s", a.name,
                      a.cfg.model_id, mv.version, exc, extra={"event": "model_swap_refused", "asset": a.name})
            return None

    def _count(self, model_id: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.model_swaps.labels(model_id, outcome).inc()

    def _champion(self, a: _Asset):
        """The registry's champion for the asset (None: none yet, or the registry not readable: logged once)."""
        try:
            mv = _registry(a.cfg, self.dsn).champion(a.cfg.model_id)
        except Exception as exc:  # registry unreachable (database down): retried at the next refresh
            if a.error != str(exc):
                a.error = str(exc)
                log.error("asset %s: RUL model %s: registry not readable, keeping %s: %s", a.name, a.cfg.model_id,
                          _describe(a.model), exc, extra={"event": "model_registry_error", "asset": a.name})
            self._count(a.cfg.model_id, "error")
            return None
        a.error = None
        return mv

    def _serve(self, a: _Asset, model: ServedRulModel) -> None:
        """Serve ``model`` for the asset from its next cycle, its EWM state rebuilt from the kept cycles."""
        sel, ns = bind(a.name, a.cfg, model)
        state = _replayed(a.history, model, sel, ns)
        old = a.model
        a.model, a.sel, a.n_settings, a.state, a.refused = model, sel, ns, state, None
        if old is None:
            log.info("asset %s: serving RUL model %s (%s), %d cycles replayed", a.name, _describe(model),
                     model.sha256[:12], len(a.history), extra={"event": "model_served", "asset": a.name})
            return
        self.swaps += 1
        self._count(a.cfg.model_id, "swapped")
        log.info("asset %s: RUL model %s -> %s (%s), %d cycles replayed", a.name, _describe(old),
                 _describe(model), model.sha256[:12], len(a.history),
                 extra={"event": "model_swapped", "asset": a.name})

    def update(self, readings: list[Reading]) -> tuple[list[Prediction], list[AlertChange]]:
        """Readings in time order; returns the predictions and alert changes of the cycles they close."""
        preds: list[Prediction] = []
        changes: list[AlertChange] = []
        for r in readings:
            hit = self.tag_of.get(r.tag)
            if hit is None:
                continue
            v = value_of(r)
            if not math.isfinite(v):
                continue
            # The counter is what it is (a counter holds its value all cycle: frozen is its nature).
            good = hit[1] == COUNTER or classify_reading(r, v, self.quality.out_of_range) == GOOD
            a = self.assets[hit[0]]
            self._dirty = True
            if a.cfg.cycle_tag is not None:
                self._counted(a, hit[1], r.time, v, preds, changes, good)
                continue
            self._timed(a, hit[1], r.time.timestamp(), v, good, preds, changes)
        return preds, changes

    def _timed(self, a: _Asset, pos: int, ts: float, v: float, good: bool, preds: list[Prediction],
               changes: list[AlertChange]) -> None:
        """Cycles by time: one reading of the tag at ``pos`` at ``ts`` (seconds).

        A reading of a later cycle closes the current one only once every model tag has passed its end (sent the last
        reading its sampling leaves room for, or one of a later cycle), or one whole cycle after its end: until then
        it is held (`ahead`). The first reading of the next cycle used to close it: a source 5 s behind the others
        lost its last readings of every cycle (the RUL 1.15 cycles off the offline model's), one 30 s behind gave 1
        prediction in 31 cycles."""
        slot = math.floor(ts / a.cfg.cycle_s)
        if a.slot is None:
            a.slot = a.first_slot = slot
        if slot < a.slot or (slot == a.slot and a.closed):
            self._late(a, ts)
            return
        if slot > a.slot:
            if not a.closed and ts < (a.slot + 2) * a.cfg.cycle_s:
                a.ahead.append((pos, ts, v, good))
                a.beyond[pos] = True
                if not _passed(a):
                    return
                pos, ts, v, good = a.ahead.pop()  # every tag is past the end: close, then take the held in order
                slot = math.floor(ts / a.cfg.cycle_s)
            if not a.closed:
                self._close(a, preds, changes)
            held, a.ahead = a.ahead, []
            a.beyond[:] = False
            a.slot = min([math.floor(h[1] / a.cfg.cycle_s) for h in held] + [slot])
            a.closed = False
            _new_cycle(a)
            for h in held:
                self._timed(a, *h, preds, changes)
            self._timed(a, pos, ts, v, good, preds, changes)
            return
        _sampled(a, pos, ts)
        if not good:
            a.flagged[pos] += 1
        else:
            a.sums[pos] += v
            a.counts[pos] += 1
        if _complete(a):
            self._close(a, preds, changes)

    def _late(self, a: _Asset, ts: float) -> None:
        """A reading for a cycle already closed (a source more than a cycle behind, a redelivery): left out of the
        cycle means, counted (`late` in the status) and said once a run."""
        a.late += 1
        if self.metrics is not None:
            self.metrics.analytics_late.labels("rul").inc()
        if not a.late_said:
            a.late_said = True
            log.warning("asset %s: a reading of %s is for a cycle already closed (a source more than a cycle behind "
                        "the others, a backlog, a redelivery): left out of the cycle means; counted, said once a run",
                        a.name, datetime.fromtimestamp(ts, UTC).isoformat(),
                        extra={"event": "rul_reading_late", "asset": a.name})

    # -- the kept cycles across restarts (maintenance.rul_state) ---------------------------------------
    def journal(self) -> dict | None:
        """The journal line of the cycles closed since the last line or snapshot (on the event loop: a few hundred
        bytes of JSON an asset), for `write` to append in a worker thread; None when no cycle closed. While a line
        is lost (an append failed), the full snapshot instead: a later line would build on the lost one."""
        if self.state_path is None or not self.closed_unsaved:
            return None
        if self._lost_seq is not None:
            return self.snapshot(progress=False)
        self.closed_unsaved = False
        records = {a.name: rul_state.entry(a) for a in self.assets if a.appended or a.reset}
        if not records:
            return None
        self._jseq += 1
        return {"journal": rul_state.encode(self._jseq, records), "journal_seq": self._jseq}

    def snapshot(self, progress: bool = True) -> dict | None:
        """A copy of every asset's kept cycles, current cycle and age for the snapshot file, or None when none is
        due. Only array copies, for the event loop; `write` encodes and writes it in a worker thread.

        ``progress=True`` (shutdown): when anything changed since the last one, the cycle in progress included.
        ``progress=False`` (the periodic save): only to fold the journal in (once it is as large as the snapshot,
        at least ``COMPACT_MIN_BYTES``; or it was read at start) or when a closed cycle is on disk nowhere (its
        journal append failed). Rewriting the file at every close, or every ``state_save_s`` for a partial cycle,
        wrote every asset's whole history (2,000 cycles of 24 tags: 400 KB an asset) each time to the flash."""
        if self.state_path is None:
            return None
        limit = self.compact_bytes if self.compact_bytes is not None else max(self._snapshot_size,
                                                                              rul_state.COMPACT_MIN_BYTES)
        fold = self._compact_due or (self._journal_size > 0 and self._journal_size >= limit)
        if not (self._dirty or fold if progress else self.closed_unsaved or fold):
            return None
        self._dirty = self.closed_unsaved = self._compact_due = False
        absorbed = any(a.appended or a.reset for a in self.assets)
        for a in self.assets:  # the snapshot holds the cycles not journalled yet
            a.appended, a.reset = 0, False
        self._snapshots += 1
        return {"seq": self._snapshots, "journal_seq": self._jseq, "absorbed": absorbed,
                "assets": [(a.name, *rul_state.asset_state(a)) for a in self.assets if a.slot is not None]}

    def mark_unsaved(self, lost: bool = True) -> None:
        """A snapshot or journal line was taken but not written: a snapshot is due even if no cycle closes
        meanwhile. ``lost``: closed cycles it held are on disk nowhere, so journal lines wait for that snapshot (a
        line would build on the ones lost)."""
        self._dirty = self.closed_unsaved = True
        if lost and self._lost_seq is None:
            self._lost_seq = self._jseq

    def write(self, data: dict) -> bool:
        """Append a `journal` line (fsync'd) or replace the snapshot file with a `snapshot` atomically, then drop
        the journal lines it holds; an older snapshot never replaces a newer one. Blocking. A failure is logged
        once per kind and counted; the gateway goes on."""
        with self._write_lock:
            path = self.state_path
            try:
                if "journal" in data:
                    if self._cut is not None:  # a torn last line found at start: cut off before appending
                        rul_state.cut(self.journal_path, self._cut)
                        self._cut = None
                    rul_state.append(self.journal_path, data["journal"])
                    self._journal_size += len(data["journal"])
                    self.bytes_written["journal"] += len(data["journal"])
                else:
                    if data["seq"] <= self._written:
                        return False
                    meta = {"seq": data["seq"], "journal_seq": data["journal_seq"], "assets": {}}
                    arrays = {}
                    for k, (name, scalars, arr) in enumerate(data["assets"]):
                        meta["assets"][name] = {**scalars, "arrays": k}
                        arrays.update({f"{k}.{key}": v for key, v in arr.items()})
                    blob = pack_state(meta, arrays, STATE_FORMAT)
                    write_atomic(path, blob)
                    self._written, self._snapshot_size = data["seq"], len(blob)
                    self.bytes_written["snapshot"] += len(blob)
                    if self._lost_seq is not None and data["journal_seq"] >= self._lost_seq:
                        self._lost_seq = None  # the lost line's cycles are in the snapshot: lines may go on
                    self._cut = None
                    self._journal_size = rul_state.keep_after(self.journal_path, data["journal_seq"])
            except OSError as exc:
                if "journal" in data and self._lost_seq is None:
                    self._lost_seq = data["journal_seq"]
                # A snapshot at the next save; a failed fold of the journal (nothing only in it) lets lines go on.
                self.mark_unsaved(lost="journal" in data or data.get("absorbed", True))
                if self.metrics is not None:
                    self.metrics.analytics_errors.inc()
                if self._write_error != type(exc).__name__:
                    self._write_error = type(exc).__name__
                    log.error("RUL history not saved to %s (kept in memory, retried): %s", path, exc,
                              extra={"event": "rul_state_not_saved"})
                return False
            self._write_error = None
            return True

    def _load(self) -> None:
        path, jpath = self.state_path, self.journal_path
        try:
            lines, good, torn = rul_state.read(jpath)
        except OSError as exc:  # not a file (a folder in its place), unreadable: the snapshot alone
            log.warning("RUL journal %s not readable; the snapshot alone is restored: %s", jpath, exc,
                        extra={"event": "rul_state_unreadable"})
            lines, good, torn = [], 0, False
        if torn:
            self._cut = good
            log.warning("RUL journal %s: a torn or damaged line at byte %d (a crash during an append) left out",
                        jpath, good, extra={"event": "rul_journal_torn"})
        self._journal_size = good
        self._jseq = max((r["seq"] for r in lines), default=0)
        self._compact_due = bool(lines) or torn  # fold it into the snapshot at the next periodic save
        try:
            state = read_state(path, STATE_FORMAT)
            meta, arrays = state if state is not None else ({"assets": {}}, {})
            saved = meta.get("assets")
            if not isinstance(saved, dict) or not all(isinstance(v, dict) for v in saved.values()):
                raise ValueError(f"{path}: no per-asset entries")
            base = int(meta.get("journal_seq", 0))
        except (ValueError, TypeError) as exc:
            log.warning("RUL history not readable, every asset starts without history: %s", exc,
                        extra={"event": "rul_state_unreadable"})
            return
        self._jseq = max(self._jseq, base)
        skip: set[str] = set()  # a damaged snapshot entry: its journal lines build on what was lost
        found: set[str] = set()
        for a in self.assets:
            s = saved.get(a.name)
            if s is None:
                continue
            if s.get("key") != rul_state.key(a.cfg):
                log.warning("asset %s: the RUL history saved in %s is of another configuration (tags or cycles "
                            "changed); not restored, the asset starts without history", a.name, path,
                            extra={"event": "rul_state_mismatch", "asset": a.name})
                continue
            try:
                k = s["arrays"]
                rul_state.restore(a, s, {key: arrays[f"{k}.{key}"] for key in rul_state.ARRAYS})
            except (KeyError, TypeError, ValueError) as exc:
                _reset(a)
                skip.add(a.name)
                log.warning("asset %s: the RUL history saved in %s is damaged (%s); the asset starts without "
                            "history", a.name, path, exc, extra={"event": "rul_state_unreadable", "asset": a.name})
                continue
            found.add(a.name)
        by_name = {a.name: a for a in self.assets}
        for rec in lines:
            if rec["seq"] <= base:
                continue  # in the snapshot already (a crash between its rename and the journal's truncation)
            for name, r in rec["assets"].items():
                a = by_name.get(name)
                if a is None or name in skip or not isinstance(r, dict) or r.get("key") != rul_state.key(a.cfg):
                    continue
                try:
                    rul_state.apply(a, r)
                except (KeyError, TypeError, ValueError) as exc:
                    _reset(a)
                    skip.add(name)
                    found.discard(name)
                    log.warning("asset %s: the RUL journal %s is damaged (%s); the asset starts without history",
                                name, jpath, exc, extra={"event": "rul_state_unreadable", "asset": name})
                    continue
                found.add(name)
        for a in self.assets:
            if a.name not in found:
                continue
            if a.model is not None:
                a.state = _replayed(a.history, a.model, a.sel, a.n_settings)
            self.restored[a.name] = len(a.history)
            log.info("asset %s: RUL history restored from %s: %d cycles, age %s", a.name, path, len(a.history),
                     a.history[-1][0] if a.history else None, extra={"event": "rul_state_restored", "asset": a.name})

    def _counted(self, a: _Asset, pos: int, t: datetime, v: float, preds: list[Prediction],
                 changes: list[AlertChange], good: bool = True) -> None:
        """Counter mode: a reading of the cycle counter (``pos`` COUNTER) or of a tag of the current cycle."""
        began = a.end_time or a.first_time  # when the current cycle began (its counter value was first seen)
        if began is not None and (t < began if pos != COUNTER else t <= began and int(v) < a.slot):
            # Older than the current cycle (a device's buffered backlog sent after its live values, a redelivery):
            # its cycle is closed. A late counter value below the current one used to read as the counter going
            # back, closing the cycle early and starting a new life (the history and the EWM wiped); a late sensor
            # reading was counted in the current cycle. A genuine reset comes with a newer time; a counter going up
            # closes the cycle whatever its time (a device clock stepped back must not stop the cycles).
            self._late(a, t.timestamp())
            return
        if pos != COUNTER:
            if a.slot is not None and not good:
                a.flagged[pos] += 1
            elif a.slot is not None:  # before the first counter value the cycle is unknown: not used
                a.sums[pos] += v
                a.counts[pos] += 1
            return
        n = int(v)
        if a.slot is not None and n == a.slot:
            return
        if a.slot is not None:
            a.end_time = t
            self._close(a, preds, changes)
            if n < a.slot:  # the counter went back: a new life (the part was replaced, the counter reset)
                log.warning("asset %s: cycle counter %s went from %d to %d: a new life, its history starts again",
                            a.name, a.cfg.cycle_tag, a.slot, n, extra={"event": "rul_new_life", "asset": a.name})
                a.history.clear()
                a.appended, a.reset = 0, True
                a.last[:] = np.nan
                a.cycles, a.last_pred, a.first_time = 0, -(10**9), None
                if a.model is not None:
                    a.state = EwmState.new(a.model.spans, a.model.width)
        a.slot, a.closed = n, False
        a.first_time = a.first_time or t
        _new_cycle(a)

    def _count_refused(self, a: _Asset, reason: str) -> None:
        self.refused_cycles[reason] = self.refused_cycles.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.rul_cycles_refused.labels(a.name, reason).inc()

    def _refuse_out_of_domain(self, a: _Asset, age: int, z: np.ndarray, far: np.ndarray) -> None:
        """A cycle beyond the training range: no prediction, no alert change; said once until back in range."""
        a.out_of_domain += 1
        self._count_refused(a, "out_of_domain")
        if a.out_of_domain > 1:
            return
        m = a.model
        cols = m.kept_sensors(len(a.cfg.sensors))
        worst = far[np.argsort(-np.abs(z[far]))][:3]
        named = ", ".join(f"{a.cfg.sensors[cols[j]]} at {z[j]:+.1f} standard deviations (accepted "
                          f"{m.z_low[j]:+.1f} to {m.z_high[j]:+.1f})" for j in worst)
        log.warning("asset %s: no RUL prediction from cycle %s on while its sensors are beyond what model %s was "
                    "trained on (%d of %d sensors; an operating condition it never saw, or a sensor fault): %s",
                    a.name, age, m.model_id, far.size, m.width, named,
                    extra={"event": "rul_out_of_domain", "asset": a.name})

    def _close(self, a: _Asset, preds: list[Prediction], changes: list[AlertChange]) -> None:
        a.closed = True
        self._dirty = self.closed_unsaved = True
        seen = a.counts > 0
        a.last[seen] = a.sums[seen] / a.counts[seen]
        if a.cfg.cycle_tag is not None:
            age = a.cfg.start_cycle + a.slot
        else:
            age = a.cfg.start_cycle + (a.slot - a.first_slot + 1)
        a.history.append((age, a.last.copy()))
        a.appended += 1
        row = a.last[a.sel]
        if a.model is None or not np.isfinite(row).all():
            return  # no model yet, or a tag never seen yet: no row (the age still advances with the cycles)
        m = a.model
        z = m.normalise(row[: a.n_settings], row[a.n_settings:])
        far = m.outside(z)
        if far.size:
            # Left out of the EWM history too: one such cycle would bias every prediction for hundreds of cycles
            # after (the longest span), long after the asset is back in the conditions the model knows.
            self._refuse_out_of_domain(a, age, z, far)
            return
        if a.out_of_domain:
            log.info("asset %s: cycle %s within the RUL model's training range again after %d cycles refused",
                     a.name, age, a.out_of_domain, extra={"event": "rul_back_in_domain", "asset": a.name})
            a.out_of_domain = 0
        x = a.state.push(z, age)
        a.cycles += 1
        if a.cycles - a.last_pred < a.cfg.predict_every:
            return
        a.last_pred = a.cycles
        try:
            value, lo, hi = m.predict(x)
        except DataError as exc:
            # The runtime refuses a row the float32 graph cannot hold or whose output is not finite (a tag without a
            # range sending its device's 1e39 "no value"): no prediction for this cycle rather than a RUL computed
            # from an infinite input, and no exception that would drop every asset's results of the group.
            log.warning("asset %s: no RUL prediction at cycle %s: %s", a.name, age, exc,
                        extra={"event": "rul_input_refused", "asset": a.name})
            self._count_refused(a, "input")
            return
        if a.cfg.cycle_tag is not None:
            t, start = a.end_time, a.first_time
        else:
            t = datetime.fromtimestamp((a.slot + 1) * a.cfg.cycle_s, UTC)
            start = datetime.fromtimestamp(a.first_slot * a.cfg.cycle_s, UTC)
        open_ended = math.isinf(hi)
        cov = m.intervals.coverage
        good, flagged = float(a.counts[a.sel].sum()), float(a.flagged[a.sel].sum())
        fresh = float((a.counts[a.sel] > 0).mean())
        quality = {"readings": int(good + flagged), "good": round(good / (good + flagged), 3) if good else 0.0,
                   "flagged": round(flagged / (good + flagged), 3) if flagged else 0.0,
                   "tags_with_good_readings": round(fresh, 3)}
        # The tags this version reads (named only by the configuration: the card has column positions), so that
        # an alert and a prediction can be traced to their calibrations (maintenance.trace).
        tags = (*a.cfg.settings, *a.cfg.sensors)
        inputs = {"signals": [tags[i] for i in a.sel]} | ({"cycle_tag": a.cfg.cycle_tag} if a.cfg.cycle_tag else {})
        pred = Prediction(m.model_id, m.sha256, a.name, t, value, lower=lo, upper=None if open_ended else hi,
                          coverage=cov, input_start=start, input_end=t, kind="rul", target="rul",
                          details={"cycle": age, "cap": m.cap, "open_ended": open_ended, "unit": "cycles",
                                   "registry_version": m.registry_version, "data_quality": quality, **inputs})
        preds.append(pred)
        if a.cfg.alert_below is None or fresh < self.quality.min_share:
            # Most of the model's tags carried their previous cycle's means (flagged or silent this cycle): the
            # prediction is stored, with its data quality, but moves no alert (maintenance.quality).
            return
        active = lo < a.cfg.alert_below
        upper = "or more" if open_ended else f"to {hi:.0f}"
        changes.extend(self.manager.observe(
            asset=a.name, tag=None, kind="rul", active=active, t=t, severity="warning",
            message=f"{a.name}: remaining useful life {value:.0f} cycles ({cov:.0%} interval {lo:.0f} {upper}), "
                    f"lower end below {a.cfg.alert_below:g}",
            evidence={"prediction": {"model_id": m.model_id, "model_version": m.sha256, "value": value,
                                     "lower": lo, "upper": None if open_ended else hi, "coverage": cov,
                                     "time": t, "input_start": start, "input_end": t, "cycle": age, **inputs},
                      "data_quality": quality}))
