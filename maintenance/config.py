"""Configuration of condition monitoring (``[maintenance]`` and ``[[rules]]`` in the site configuration).

The lead's site loader embeds `MaintenanceConfig` under ``[maintenance]`` and a list of
`maintenance.rules.RuleConfig` under ``[[rules]]``; ``maintenance/sample.toml`` shows every key.
Validation errors carry the key path (pydantic), which the loader turns into a ``ConfigError``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.paths import ConfigPath
from maintenance.alerts import AlertPolicy
from maintenance.anomaly import AnomalyConfig, calibration_scores, default_confirm
from maintenance.indicators import STATS
from maintenance.iso20816 import ZoneConfig
from maintenance.notify import WebhookConfig
from maintenance.notify_mqtt import MqttNotifyConfig
from maintenance.quality import QualityConfig
from maintenance.rules import RuleConfig
from maintenance.uncertainty import min_scores

if TYPE_CHECKING:
    import numpy as np


class BandConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    low_hz: float = Field(ge=0)
    high_hz: float = Field(gt=0)


class WaveformConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tag: str
    fs_hz: float = Field(gt=0)
    block: int = Field(gt=8, description="samples per indicator block")
    bands: tuple[BandConfig, ...] = ()
    iso20816: bool = Field(True, description="the waveform is vibration velocity in mm/s: rate its RMS in zones")
    iso_band_hz: tuple[float, float] = Field(
        (10.0, 1000.0), description="the band whose RMS the zones rate (ISO 20816-3: 10-1000 Hz; 2-1000 Hz for "
                                    "machines at or below 600 r/min); measured up to fs_hz / 2 where that is lower")

    @property
    def iso_band(self) -> tuple[float, float]:
        """The ISO band as measured: its upper end no higher than the Nyquist frequency (an anti-aliasing filter
        takes out what lies above it, so a waveform sampled under 2 kHz rates its band up to fs_hz / 2 only)."""
        return self.iso_band_hz[0], min(self.iso_band_hz[1], self.fs_hz / 2.0)

    @model_validator(mode="after")
    def _bands_measurable(self) -> WaveformConfig:
        # A band's RMS is the root of its spectral lines' power (`indicators.waveform_indicators`): lines lie every
        # fs_hz / block Hz up to the Nyquist frequency fs_hz / 2. A band above Nyquist, below its own low end or
        # between two lines holds none and read 0 mm/s for ever (a bearing band of 2-5 kHz on a 2,560 Hz waveform: a
        # defect there never showed); one reaching past Nyquist held only its part below it.
        names = [b.name for b in self.bands]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"{self.tag}: band names must be unique (each is the indicator {self.tag}.band_<name>): "
                             f"{dup}")
        for b in self.bands:
            self._measurable(f"{self.tag}: band {b.name!r} ({b.low_hz:g}-{b.high_hz:g} Hz)", b.low_hz, b.high_hz)
        if self.iso20816:
            low, high = self.iso_band_hz
            if low < 0:
                raise ValueError(f"{self.tag}: iso_band_hz {list(self.iso_band_hz)} starts below 0 Hz")
            if low >= self.fs_hz / 2.0:
                raise ValueError(f"{self.tag}: iso_band_hz {list(self.iso_band_hz)} starts at or above the Nyquist "
                                 f"frequency {self.fs_hz / 2.0:g} Hz of fs_hz {self.fs_hz:g}: nothing of it is in "
                                 "the samples; sample faster")
            self._measurable(f"{self.tag}: iso_band_hz ({low:g}-{high:g} Hz)", *self.iso_band, clip=True)
        return self

    def _measurable(self, where: str, low: float, high: float, *, clip: bool = False) -> None:
        nyquist, line = self.fs_hz / 2.0, self.fs_hz / self.block
        if low >= high:
            order = "its first value must be below its second" if clip else "low_hz must be below high_hz"
            raise ValueError(f"{where}: {order}")
        if high > nyquist and not clip:
            raise ValueError(f"{where} reaches above the Nyquist frequency {nyquist:g} Hz of fs_hz {self.fs_hz:g}: "
                             "nothing above it is in the samples; lower high_hz or sample faster")
        first = max(1, math.ceil(low / line - 1e-9)) * line  # the DC line is the block's mean, taken out
        if first >= high - 1e-9 * line:
            raise ValueError(f"{where} holds no line of the block's spectrum above 0 Hz (one every fs_hz / block "
                             f"= {line:g} Hz): widen the band or make block longer")


class AnomalyAssetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    signals: tuple[str, ...] = Field(min_length=1, description="tags scored together, in this order")
    train_samples: int = Field(1800, ge=40, description="healthy samples (1 per period) collected before scoring")
    window: int = Field(10, ge=1)
    alpha: float = Field(0.01, gt=0, lt=0.5,
                         description="flag at p <= alpha: the false alarm rate per scored sample on healthy "
                                     "data like the training period; needs (train_samples x 0.6 / window) >= "
                                     "about 1/alpha (maintenance/README.md)")
    # max_z: chosen in 16 of 16 leave-one-file-out selections on SKAB (maintenance/README.md)
    score: str = Field("max_z", pattern="^(mahalanobis|max_z)$")
    max_drift: float | None = 0.5
    # Unset: twice the window (at least 5), and twice the correlation time of the slowest healthy signal as measured
    # on the training samples (`maintenance.anomaly.default_confirm`). A score's window shares window - 1 samples
    # with the next one's, so a chance flag comes in a run about a window long: at confirm 5 and window 10, healthy
    # i.i.d. data raised 0.54 false alerts per asset-hour for 0.0087 flagged scores; at 20, none in 83 asset-hours. A
    # signal that wanders over minutes makes runs as long as its wander: at confirm 20, 18.5 false alerts per day on
    # AR(1) signals of coefficient 0.97 (maintenance/README.md). The flag must outlast both into independent data.
    confirm: int | None = Field(None, ge=1, description="consecutive flagged samples before an alert (debounce); "
                                                        "default 2 x window, at least 5, and at least twice the "
                                                        "correlation time of the signals measured in training")
    predict_every_s: float = Field(10.0, gt=0, description="store a prediction this often (and on every flag)")
    running_tag: str | None = Field(None, description="one of signals that says the machine runs (speed, current): a "
                                                      "period with it at or below running_above is neither trained "
                                                      "on nor scored (a stopped machine is not anomalous operation)")
    running_above: float = Field(0.0, description="running_tag above this: the machine runs")

    def confirm_samples(self, decorrelation: float | np.ndarray | None = None) -> int:
        """``confirm``, or its default for a detector whose signals' correlation times are ``decorrelation`` samples
        (`maintenance.anomaly.default_confirm`: the slowest counts; None: not measured, twice the window, at least
        5). Runs of one signal's own flags may confirm sooner (`maintenance.anomaly.own_runs`, unset confirm only)."""
        return self.confirm if self.confirm is not None else default_confirm(self.window, decorrelation)

    @model_validator(mode="after")
    def _running(self) -> AnomalyAssetConfig:
        if self.running_tag is not None and self.running_tag not in self.signals:
            raise ValueError(f"running_tag {self.running_tag!r} must be one of signals (its value is read with them)")
        return self

    @model_validator(mode="after")
    def _resolution(self) -> AnomalyAssetConfig:
        # Checked here, not first after train_samples seconds of training, with the detector's own rule: one
        # score per whole, non-overlapping window after AnomalyConfig.fit_fraction calibrates, and p-values step
        # by 1/(n+1).
        n_cal = calibration_scores(self.train_samples, self.window, AnomalyConfig.fit_fraction)
        if n_cal < min_scores(self.alpha):
            raise ValueError(f"alpha {self.alpha} is below the p-value resolution 1/{n_cal + 1} of "
                             f"{self.train_samples} training samples at window {self.window} ({n_cal} calibration "
                             f"windows; alpha {self.alpha} needs {min_scores(self.alpha)}); raise alpha or "
                             "train_samples, or shorten window")
        return self


class RulAssetConfig(BaseModel):
    """Remaining useful life of an asset from a RUL model (``maintenance.rul_export``: exported or registered)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model_dir: ConfigPath | None = Field(None, description="a version directory (model.onnx + card.json)")
    registry: ConfigPath | None = Field(None, description="model registry directory: serve the champion of model_id")
    model_id: str | None = None
    registry_db: bool = Field(False, description="the registry's index is the site database's model_registry table "
                                                 "(else <registry>/index.json)")
    refresh_s: float = Field(30.0, ge=0, description="how often the registry is asked for a new champion (hot swap)")
    history_cycles: int = Field(2000, ge=1, description="cycles kept per asset to rebuild a new version's features "
                                                        "on a swap")
    sensors: tuple[str, ...] = Field(min_length=1, description="tags of the model's sensor columns, in the order "
                                                               "of its training data (unused columns may be '')")
    settings: tuple[str, ...] = Field((), description="tags of the operating settings (operating conditions)")
    cycle_s: float | None = Field(None, gt=0, description="seconds per cycle: one feature row per cycle (mean of "
                                                          "its readings); or cycle_tag")
    cycle_tag: str | None = Field(None, min_length=1, description="a counter tag of the asset's cycles (flights, "
                                                                  "batches, strokes): a cycle ends when it changes, "
                                                                  "its value is the age; a lower value starts a new "
                                                                  "life (part replaced)")
    start_cycle: int = Field(0, ge=0, description="cycles the asset had run when monitoring (or its counter) started")
    predict_every: int = Field(1, ge=1, description="store a prediction every this many cycles")
    alert_below: float | None = Field(None, gt=0, description="alert while the interval's lower end is below this "
                                                              "many cycles")

    @model_validator(mode="after")
    def _source(self) -> RulAssetConfig:
        if (self.cycle_s is None) == (self.cycle_tag is None):
            raise ValueError("give either cycle_s (cycles by time) or cycle_tag (a cycle counter tag)")
        if (self.model_dir is None) == (self.registry is None and self.model_id is None):
            raise ValueError("give either model_dir or registry + model_id")
        if self.model_dir is None and not (self.registry and self.model_id):
            raise ValueError("registry and model_id go together")
        if self.model_dir is not None:  # caught by check-config, not first at the gateway's start
            missing = [f for f in ("model.onnx", "card.json") if not (Path(self.model_dir) / f).is_file()]
            if missing:
                raise ValueError(f"model_dir {self.model_dir}: no {' or '.join(missing)} there (write one with "
                                 "`valvoja maintenance evaluate cmapss --export DIR`)")
        return self


class AssetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    vibration_tags: tuple[str, ...] = Field((), description="velocity RMS tags in mm/s (ISO 20816 zones + stats)")
    process_tags: tuple[str, ...] = Field((), description="temperatures, pressures, currents, flows (stats)")
    waveforms: tuple[WaveformConfig, ...] = ()
    vibration_stats: tuple[str, ...] = ("mean", "max", "std", "kurtosis")
    process_stats: tuple[str, ...] = ("mean", "min", "max", "slope")
    iso20816: ZoneConfig = ZoneConfig()
    anomaly: AnomalyAssetConfig | None = None
    rul: RulAssetConfig | None = None

    @model_validator(mode="after")
    def _stats_known(self) -> AssetConfig:
        bad = (set(self.vibration_stats) | set(self.process_stats)) - set(STATS)
        if bad:
            raise ValueError(f"asset {self.name!r}: unknown statistic(s) {sorted(bad)}; known: {', '.join(STATS)}")
        return self


class NotifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mqtt: MqttNotifyConfig | None = None
    webhooks: tuple[WebhookConfig, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> NotifyConfig:
        # Two receivers of one chosen name would share one label and one backlog in the outbox.
        names = [r.name for r in (self.mqtt, *self.webhooks) if r is not None and r.name is not None]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"receiver names must be unique: {dup}")
        return self


class MaintenanceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    window_s: int = Field(60, gt=0, description="sliding window of the indicators")
    hop_s: int = Field(10, gt=0, description="indicators are emitted this often")
    period_s: float = Field(1.0, gt=0, description="sampling period of scalar tags")
    state_save_s: float = Field(60.0, gt=0, description="RUL assets: a closed cycle is appended to the state "
                                                         "folder's journal at once (a restart goes on from it); "
                                                         "this often the journal is folded into the snapshot when "
                                                         "it has grown as large as it (or an append failed); the "
                                                         "cycle in progress is saved at shutdown")
    assets: tuple[AssetConfig, ...] = ()
    alerts: AlertPolicy = AlertPolicy()
    quality: QualityConfig = QualityConfig()
    notify: NotifyConfig = NotifyConfig()
    rules: tuple[RuleConfig, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> MaintenanceConfig:
        names = [a.name for a in self.assets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"asset names must be unique: {dup}")
        return self
