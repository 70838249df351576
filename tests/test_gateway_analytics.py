"""Live analytics in the gateway process: a developing bearing fault -> indicators, ISO zone and anomaly
alerts with evidence and uncertainty in the database (MQTT -> `valvoja run` -> TimescaleDB)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from gateway_proc import GatewayProcess
from ops_support import db_url, new_run, wait_for

pytestmark = pytest.mark.slow

SITE = """
[site]
gateway_id = "gw-analytics"
state_dir = "var"

[database]
url = "@DB@"
flush_interval_s = 0.1

[http]
listen = "127.0.0.1:{HTTP_PORT}"

[logging]
format = "text"

[validation]
max_age_s = 86400

[[collectors]]
kind = "mqtt"
name = "plant"
host = "127.0.0.1"
port = @PORT@
client_id = "gw-@RUN@"

[[collectors.subscriptions]]
topic = "an/@RUN@/batch"
tag = "{field}"
json = { samples = "s", tag = "tag", value = "v", time = "t", time_format = "epoch_s" }

[maintenance]
window_s = 30
hop_s = 10

[maintenance.alerts]
clear_after_s = 60

[[maintenance.assets]]
name = "P-1"
vibration_tags = ["P-1.vib"]
process_tags = ["P-1.temp"]
iso20816 = { group = 2, foundation = "rigid" }
# window 5: 240 samples leave 28 disjoint calibration windows, enough for alpha 0.05 (19; window 10: 14)
[maintenance.assets.anomaly]
signals = ["P-1.vib", "P-1.temp"]
train_samples = 240
window = 5
alpha = 0.05
confirm = 3
predict_every_s = 10
"""


def q(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            return conn.execute(sql).fetchall()
        except psycopg.errors.UndefinedTable:
            return []


class _Plant:
    """The analytics site's gateway (``gw``, replaced by a restart) and a publisher (``pub``) to its broker."""

    def __init__(self, tmp_path, pg_dsn: str, mosquitto) -> None:
        self.run = new_run()
        self.site = (SITE.replace("@DB@", db_url(pg_dsn)).replace("@PORT@", str(mosquitto.port))
                     .replace("@RUN@", self.run))
        self.gw_dir = tmp_path / "gw"
        self.pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{self.run}")
        self.pub.connect("127.0.0.1", mosquitto.port)
        self.gw: GatewayProcess | None = None

    def start_gateway(self) -> GatewayProcess:
        """Start the gateway (again, after a ``terminate``) and wait until its collector is connected."""
        self.gw = GatewayProcess(self.gw_dir, self.site).start()
        wait_for(lambda: self.gw.health()["collectors"]["plant"]["connected"], what="collector up")
        return self.gw


@contextlib.contextmanager
def _plant(tmp_path, pg_dsn: str, mosquitto) -> Iterator[_Plant]:
    """A running gateway and a connected publisher; at the end both stop and the gateway must exit 0."""
    plant = _Plant(tmp_path, pg_dsn, mosquitto)
    plant.pub.loop_start()
    try:
        plant.start_gateway()
        yield plant
    finally:
        plant.pub.loop_stop()
        plant.pub.disconnect()
        if plant.gw is not None:
            assert plant.gw.terminate() == 0


def _publish(pub, run: str, t0: float, seconds: range, rng, fault_from: int = 360) -> None:
    """Send P-1's vibration and temperature at 1 Hz, 20 s per message: healthy, then from ``fault_from`` s a
    bearing defect that grows."""
    infos = []
    for k in range(seconds.start, seconds.stop, 20):
        samples = []
        for i in range(k, k + 20):
            fault = max(0.0, (i - fault_from) / 60)
            samples += [{"tag": "P-1.vib", "t": t0 + i, "v": 1.0 + rng.normal(0, 0.03) + 2.5 * fault},
                        {"tag": "P-1.temp", "t": t0 + i, "v": 50.0 + rng.normal(0, 0.2) + 8 * fault}]
        infos.append(pub.publish(f"an/{run}/batch", orjson.dumps({"s": samples}), qos=1))
    for info in infos:
        info.wait_for_publish(10)


def test_bearing_fault_raises_iso_and_anomaly_alerts_with_evidence(tmp_path, pg_dsn, mosquitto):
    with _plant(tmp_path, pg_dsn, mosquitto) as plant:
        gw = plant.gw
        t0 = dt.datetime.now(dt.UTC).timestamp() - 3600  # an hour of history, sent in a few seconds
        _publish(plant.pub, plant.run, t0, range(0, 600), np.random.default_rng(7))

        def alerts():
            return q(pg_dsn, "SELECT kind, severity, evidence, model_version FROM alerts ORDER BY raised_at")

        got = wait_for(lambda: {a[0] for a in alerts()} >= {"iso20816", "anomaly"} and alerts(),
                       timeout_s=60, what="ISO zone and anomaly alerts")
        by_kind = {k: (sev, ev, ver) for k, sev, ev, ver in got}
        sev, ev, _ = by_kind["iso20816"]
        assert sev == "critical" and ev["zone"] == "D"  # 1 + 2.5 * 4 mm/s is far into zone D
        assert ev["readings"], "the readings behind the alert are kept"
        sev, ev, version = by_kind["anomaly"]
        pred = ev["prediction"]
        assert 0 < pred["p_value"] <= pred["alpha"], "an anomaly alert carries its conformal p-value"
        assert len(version) == 64 and pred["model_version"] == version
        assert {s["signal"] for s in ev["top_signals"]} <= {"P-1.vib", "P-1.temp"}
        # Healthy scoring left a trail of predictions with p-values, and indicators were stored as readings.
        preds = q(pg_dsn, "SELECT p_value FROM predictions WHERE kind = 'anomaly'")
        assert len(preds) >= 10 and all(0 < p <= 1 for (p,) in preds)
        derived = dict(q(pg_dsn, "SELECT t.name, count(*) FROM readings r JOIN tags t ON t.id = r.tag_id "
                                 "WHERE t.name LIKE 'P-1.vib.%' GROUP BY 1"))
        assert derived.get("P-1.vib.iso_zone", 0) >= 30 and derived.get("P-1.vib.mean", 0) >= 30
        status = gw.health()["analytics"]
        assert status["errors"] == 0 and status["dropped"] == 0
        assert json.loads(json.dumps(status))["processed"] >= 1200


def test_the_detector_trained_live_is_recorded_once_and_its_alert_traced_to_its_training(tmp_path, pg_dsn, mosquitto):
    """The detector the gateway trains itself is recorded (spool -> forwarder -> anomaly_detector_versions) with its
    training window; the anomaly alert's trace reaches it; a restart restoring it from the state file adds no row."""
    import asyncio

    from maintenance.trace import trace_alert

    sql = ("SELECT version, origin, training_origin, training_start, training_end, training_samples, left_out_flagged,"
           " signals, alpha, calibration_size, config_sha256 FROM anomaly_detector_versions")
    with _plant(tmp_path, pg_dsn, mosquitto) as plant:
        gw, pub, run = plant.gw, plant.pub, plant.run
        rng = np.random.default_rng(7)
        t0 = float(int(dt.datetime.now(dt.UTC).timestamp()) - 3600)
        _publish(pub, run, t0, range(0, 600), rng)
        alert = wait_for(lambda: q(pg_dsn, "SELECT id, model_version FROM alerts WHERE kind = 'anomaly'"),
                         timeout_s=60, what="anomaly alert")
        (version, origin, by, start, end, samples, flagged, signals, alpha, n_cal, sha), = q(pg_dsn, sql)
        assert version == alert[0][1] and (origin, by) == ("self_trained", "self_trained")
        # 240 samples of the healthy start, each at its 1 s slot's end, none left out.
        at = dt.datetime.fromtimestamp
        assert (start, end) == (at(t0 + 1, dt.UTC), at(t0 + 240, dt.UTC)) and (samples, flagged) == (240, 0)
        assert set(signals) <= {"P-1.vib", "P-1.temp"} and alpha == 0.05 and n_cal == 28 and len(sha) == 64

        async def go():
            async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
                return await trace_alert(conn, str(alert[0][0]))

        det = asyncio.run(go())["moments"][0]["prediction"]["detector"]
        assert (det["version"], det["training_start"], det["training_end"]) == (version, start, end)
        assert gw.terminate() == 0

        gw = plant.start_gateway()  # the restart restores the version from its state file
        _publish(pub, run, t0, range(600, 660), rng)
        wait_for(lambda: q(pg_dsn, f"SELECT 1 FROM predictions WHERE kind = 'anomaly' AND "
                                   f"time > to_timestamp({t0 + 620})"), timeout_s=60, what="scores after the restart")
        log = gw.log.read_text()
        assert "anomaly model" in log and "restored from" in log
        # Its record went the same way and was taken as the one already there: no second row, nothing refused.
        assert len(q(pg_dsn, sql)) == 1, "the restored version is the one already recorded: no second row"
        assert "database refused" not in log and not q(pg_dsn, "SELECT 1 FROM dead_letters")
