"""Train an asset's live anomaly detector again on a period its team calls healthy, from the stored readings.

The gateway trains each detector on the first ``train_samples`` of its asset after the first start and keeps it
(``<state_dir>/anomaly_models.npz``). After an overhaul, or when monitoring started on a machine that was not
healthy, `train_asset` fits the detector on readings from the database instead: they go through the gateway's own
live path (`maintenance.live.MaintenanceLive`, the asset alone, from ``start``), so the samples, their staleness
rule and the fit are exactly what the gateway would have made had it started at ``start``. The result replaces
the asset's entry in the state file (under its lock); a running gateway adopts it with its next readings
(`maintenance.live.MaintenanceLive.sync_detectors`) and never writes over it, a stopped one at its start.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from edge.errors import ConfigError
from edge.records import Quality, Reading
from maintenance.config import AssetConfig, MaintenanceConfig
from maintenance.live import MaintenanceLive, replace_detector

CHUNK = 50_000  # readings fetched at a time (server-side cursor)


@dataclass
class Retrained:
    asset: str
    version: str
    samples: int
    first: datetime | None  # the first and last reading used
    last: datetime | None
    path: Path


def train_asset(config: MaintenanceConfig, asset: str, conninfo: str, state_dir: Path, start: datetime,
                end: datetime | None = None) -> Retrained:
    """Fit ``asset``'s detector on the readings of its anomaly signals from ``start`` (until it has
    ``train_samples`` samples, or ``end``) and store it in ``state_dir``'s anomaly state file. `ConfigError` when
    the asset has no anomaly model or the period holds too few samples."""
    cfg = next((a for a in config.assets if a.name == asset), None)
    if cfg is None or cfg.anomaly is None:
        names = sorted(a.name for a in config.assets if a.anomaly is not None)
        raise ConfigError(f"asset {asset!r} has no [maintenance.assets.anomaly] in this configuration "
                          f"(assets with one: {', '.join(names) or 'none'})")
    alone = MaintenanceConfig(period_s=config.period_s, assets=(AssetConfig(name=asset, anomaly=cfg.anomaly),))
    live = MaintenanceLive(alone)
    first = last = None
    n = 0

    async def replay(cur) -> None:
        nonlocal first, last, n
        while not live.anomaly.detectors:  # stop reading once fitted
            rows = cur.fetchmany(CHUNK)
            if not rows:
                return
            # With their validation flags: a flagged sample is not trained on, live or here (maintenance.quality).
            batch = [Reading(tag, t, v, t, Quality(q), flags) for tag, t, v, q, flags in rows]
            await live.process(batch)
            first, last, n = first or batch[0].time, batch[-1].time, n + len(batch)

    with psycopg.connect(conninfo) as conn, conn.cursor(name="valvoja_retrain") as cur:
        cur.execute("SELECT t.name, r.time, r.value, r.quality, r.flags FROM readings r JOIN tags t ON t.id = r.tag_id "
                    "WHERE t.name = ANY(%s) AND r.time >= %s AND (%s::timestamptz IS NULL OR r.time < %s) "
                    "ORDER BY r.time", (list(cfg.anomaly.signals), start, end, end))
        asyncio.run(replay(cur))
    if not live.anomaly.detectors:
        got = len(live.anomaly.training.get(0, []))
        raise ConfigError(f"asset {asset!r}: {got} complete samples of its {len(cfg.anomaly.signals)} signals from "
                          f"{start.isoformat()}" + (f" to {end.isoformat()}" if end else "") +
                          f" ({n} readings); training needs train_samples = {cfg.anomaly.train_samples}")
    version = live.anomaly.versions[0]
    # Trained through the live path, so its training notes are the gateway's own; made by the command.
    training = dict(live.anomaly.made[0] or {}, origin="retrained")
    path = replace_detector(config, Path(state_dir), asset, live.anomaly.detectors[0], version, training)
    return Retrained(asset, version, cfg.anomaly.train_samples, first, last, path)

