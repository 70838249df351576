"""The frozen-value rule across a SIGHUP reload and a restart of `valvoja run` (real process, mosquitto, PostgreSQL).

Its runs of repeated values lived only in the validator's memory: after every reload and restart a sensor stuck for
hours was a new run, and its readings were stored GOOD (no FROZEN flag) for ``frozen_after_s`` (600 s in the
examples), where emissions averages, retraining and the sensor alert took them for measurements.
"""

from __future__ import annotations

import datetime as dt
import signal

import orjson
from gateway_proc import GatewayProcess
from ops_support import new_run, rows, site_config
from test_mqtt_collector import publish

from edge.records import Flag, Quality

FROZEN_S = 10


def _publish(port: int, run: str, base: dt.datetime, seconds: range, value: float) -> None:
    """JSON samples of P-1.flow at ``base`` + each second of ``seconds`` (source times: the rule's clock)."""
    publish(port, [(f"ops/{run}/P-1/flow", orjson.dumps(
        {"value": value, "time": (base + dt.timedelta(seconds=s)).isoformat()})) for s in seconds])


def _stored(dsn: str) -> list[tuple[float, int, int]]:
    """(seconds after the first, quality, flags) of every stored P-1.flow reading, in time order."""
    got = rows(dsn, "SELECT r.time, r.quality, r.flags FROM readings r JOIN tags t ON t.id = r.tag_id "
                    "WHERE t.name = 'P-1.flow' ORDER BY r.time")
    return [((t - got[0][0]).total_seconds(), q, f) for t, q, f in got]


def test_a_stuck_sensor_stays_frozen_across_a_reload_and_a_restart(tmp_path, pg_dsn, mosquitto):
    run = new_run()
    config = site_config(pg_dsn, mosquitto.port, run=run) + (
        f'\n[[tags]]\nname = "P-1.flow"\nkind = "float"\nfrozen_after_s = {FROZEN_S}\n')
    base = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    gw = GatewayProcess(tmp_path, config).start()
    try:
        _publish(mosquitto.port, run, base, range(0, 15), 5.0)  # unchanged from 0 s: frozen from 11 s on
        gw.wait_for(lambda: len(_stored(pg_dsn)) == 15)
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_for(lambda: "event=config_applied" in gw.log.read_text())
        _publish(mosquitto.port, run, base, range(15, 18), 5.0)
        gw.wait_for(lambda: len(_stored(pg_dsn)) == 18)
        assert gw.terminate() == 0
        gw.start()
        _publish(mosquitto.port, run, base, range(18, 21), 5.0)
        gw.wait_for(lambda: len(_stored(pg_dsn)) == 21)
        _publish(mosquitto.port, run, base, range(21, 23), 6.0)  # it moves again: a new run, good
        gw.wait_for(lambda: len(_stored(pg_dsn)) == 23)
        assert gw.terminate() == 0
    finally:
        gw.kill()
    got = _stored(pg_dsn)
    frozen = [s for s, q, f in got if f & Flag.FROZEN and q == Quality.UNCERTAIN]
    assert frozen == [float(s) for s in range(FROZEN_S + 1, 21)], got
    assert all(q == Quality.GOOD and f == 0 for s, q, f in got if s <= FROZEN_S or s >= 21), got
