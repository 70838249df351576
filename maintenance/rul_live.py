"""Remaining useful life in the gateway: a RUL model (``rul_export``) served per asset, cycle by cycle.

For each asset with ``[maintenance.assets.rul]`` the readings of its setting and sensor tags are averaged
per cycle (``cycle_s`` seconds; a cycle closes as soon as every tag the model uses has its readings for
it, or when a reading of a later cycle arrives). Each closed cycle goes through the same steps as in
training, incrementally: per-condition normalisation with the card's fitted parameters, the causal
bias-corrected exponentially weighted means (one recursion per span: ``num = x + (1 - a) num``,
``den = 1 + (1 - a) den``, exactly `rul.ewm`), the trend and the age in cycles; then the ONNX graph through
``models.runtime.OnnxModel`` (file checked against its sha256), the output clipped to [0, cap], and the
binned conformal interval of the card (``rul_intervals``; open-ended at the cap: ``upper`` None and
``details.open_ended``). Every ``predict_every`` cycles a `Prediction` (kind ``rul``, model id, model
version = sha256 of the ONNX file, registry version in ``details``) goes to the predictions table; with
``alert_below``, an alert is raised while the interval's lower end is below that many cycles.

The model comes from a version directory or the registry's champion of a model id, read at start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge.errors import ConfigError
from edge.records import Prediction, Reading
from maintenance.alerts import AlertChange, AlertManager
from maintenance.config import AssetConfig, RulAssetConfig
from maintenance.indicators import value_of
from maintenance.rul_intervals import BinnedConformal


class ServedRulModel:
    """The card's preprocessing + the ONNX graph + the binned intervals of one RUL model version."""

    def __init__(self, directory: str | Path, sha256: str | None = None) -> None:
        from models.runtime import OnnxModel

        self.onnx = OnnxModel.load(directory, sha256=sha256)
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
        self.intervals = BinnedConformal(coverage=ri["coverage"], cap=ri["cap"], edges_=np.asarray(ri["edges"], float),
                                         below_=np.asarray(ri["below"], float), above_=np.asarray(ri["above"], float))
        self.width = int(self.keep.sum())
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
    model: ServedRulModel
    tags: list[str]  # settings then the sensor tags the model uses
    n_settings: int
    per_cycle: int
    state: EwmState
    slot: int | None = None
    first_slot: int | None = None
    closed: bool = False
    sums: np.ndarray = field(default_factory=lambda: np.zeros(0))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    last: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cycles: int = 0  # feature rows pushed
    last_pred: int = -(10**9)


def load_model(cfg: RulAssetConfig) -> ServedRulModel:
    if cfg.model_dir is not None:
        return ServedRulModel(cfg.model_dir)
    from models.registry import Registry

    mv = Registry(cfg.registry).champion(cfg.model_id)
    if mv is None:
        raise ConfigError(f"model registry {cfg.registry}: {cfg.model_id!r} has no champion to serve")
    return ServedRulModel(mv.path, sha256=mv.sha256)


class RulLive:
    """RUL predictions (and optional alerts) of every asset configured with a RUL model."""

    def __init__(self, assets: list[AssetConfig], manager: AlertManager, period_s: float) -> None:
        self.manager = manager
        self.assets: list[_Asset] = []
        self.tag_of: dict[str, tuple[int, int]] = {}  # tag -> (asset, position)
        for a in assets:
            cfg = a.rul
            model = load_model(cfg)
            used = list(range(len(cfg.sensors))) if model.sensors is None else list(model.sensors)
            if max(used) >= len(cfg.sensors):
                raise ConfigError(f"asset {a.name!r}: the RUL model uses sensor column {max(used)} but "
                                  f"{len(cfg.sensors)} sensor tags are configured")
            if len(model.mean[0]) != len(used):
                raise ConfigError(f"asset {a.name!r}: the RUL model was fitted on {len(model.mean[0])} sensors, "
                                  f"not {len(used)}")
            if model.centres.shape[0] > 1 and len(cfg.settings) != model.centres.shape[1]:
                raise ConfigError(f"asset {a.name!r}: the RUL model has {model.centres.shape[0]} operating conditions "
                                  f"of {model.centres.shape[1]} settings; {len(cfg.settings)} setting tags configured")
            tags = list(cfg.settings if model.centres.shape[0] > 1 else ()) + [cfg.sensors[j] for j in used]
            if any(not t for t in tags):
                raise ConfigError(f"asset {a.name!r}: a sensor column the RUL model uses has no tag")
            n = len(tags)
            st = _Asset(a.name, cfg, model, tags, n - len(used), max(1, round(cfg.cycle_s / period_s)),
                        EwmState.new(model.spans, model.width), sums=np.zeros(n), counts=np.zeros(n),
                        last=np.full(n, np.nan))
            for j, t in enumerate(tags):
                self.tag_of[t] = (len(self.assets), j)
            self.assets.append(st)

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
            a = self.assets[hit[0]]
            slot = math.floor(r.time.timestamp() / a.cfg.cycle_s)
            if a.slot is None:
                a.slot = a.first_slot = slot
            if slot < a.slot or (slot == a.slot and a.closed):
                continue  # late for a cycle already closed
            if slot > a.slot:
                if not a.closed:
                    self._close(a, preds, changes)
                a.slot, a.closed = slot, False
                a.sums[:] = 0.0
                a.counts[:] = 0.0
            a.sums[hit[1]] += v
            a.counts[hit[1]] += 1
            if (a.counts >= a.per_cycle).all():
                self._close(a, preds, changes)
        return preds, changes

    def _close(self, a: _Asset, preds: list[Prediction], changes: list[AlertChange]) -> None:
        a.closed = True
        seen = a.counts > 0
        a.last[seen] = a.sums[seen] / a.counts[seen]
        if not np.isfinite(a.last).all():
            return  # a tag never seen yet: no row (the age still advances with the cycles)
        m = a.model
        z = m.normalise(a.last[: a.n_settings], a.last[a.n_settings:])
        age = a.cfg.start_cycle + (a.slot - a.first_slot + 1)
        x = a.state.push(z, age)
        a.cycles += 1
        if a.cycles - a.last_pred < a.cfg.predict_every:
            return
        a.last_pred = a.cycles
        value, lo, hi = m.predict(x)
        t = datetime.fromtimestamp((a.slot + 1) * a.cfg.cycle_s, UTC)
        start = datetime.fromtimestamp(a.first_slot * a.cfg.cycle_s, UTC)
        open_ended = math.isinf(hi)
        cov = m.intervals.coverage
        pred = Prediction(m.model_id, m.sha256, a.name, t, value, lower=lo, upper=None if open_ended else hi,
                          coverage=cov, input_start=start, input_end=t, kind="rul", target="rul",
                          details={"cycle": age, "cap": m.cap, "open_ended": open_ended, "unit": "cycles",
                                   "registry_version": m.registry_version})
        preds.append(pred)
        if a.cfg.alert_below is None:
            return
        active = lo < a.cfg.alert_below
        upper = "or more" if open_ended else f"to {hi:.0f}"
        changes.extend(self.manager.observe(
            asset=a.name, tag=None, kind="rul", active=active, t=t, severity="warning",
            message=f"{a.name}: remaining useful life {value:.0f} cycles ({cov:.0%} interval {lo:.0f} {upper}), "
                    f"lower end below {a.cfg.alert_below:g}",
            evidence={"prediction": {"model_id": m.model_id, "model_version": m.sha256, "value": value,
                                     "lower": lo, "upper": None if open_ended else hi, "coverage": cov,
                                     "time": t, "input_start": start, "input_end": t, "cycle": age}}))
