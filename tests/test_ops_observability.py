"""What an operator at an unattended site sees of a running gateway (`valvoja run` as a real process, with the
fixture broker and database): its log under a flood of bad messages, and its /metrics."""

from __future__ import annotations

import paho.mqtt.client as mqtt
from gateway_proc import GatewayProcess
from ops_support import new_run, site_config, wait_for

from collectors.mqtt.router import LOG_TOPICS_PER_WINDOW


def _series(text: str) -> dict[str, float]:
    """The samples of a /metrics text by their name with labels."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_malformed_messages_on_distinct_topics_are_counted_each_but_logged_a_few_lines(tmp_path, pg_dsn, mosquitto):
    """A publisher that puts a counter in its topics (or a thousand devices sending garbage) made one log line per
    message: 1,000 malformed messages a second wrote 60,000 lines a minute. The log says it in at most
    LOG_TOPICS_PER_WINDOW lines a minute per collector; the metric counts every one."""
    run, n = new_run(), 500
    gw = GatewayProcess(tmp_path, site_config(pg_dsn, mosquitto.port, run=run)).start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{run}")
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    try:
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector connected")
        infos = [pub.publish(f"ops/{run}/B{i}/y", b"{not json %d" % i, qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(30)
        wait_for(lambda: _series(gw.metrics()).get('valvoja_dead_letters_total{collector="plant"}') == n,
                 what=f"{n} dead letters counted")
    finally:
        pub.loop_stop()
        pub.disconnect()
        assert gw.terminate() == 0
    lines = [line for line in gw.log.read_text().splitlines() if "event=mqtt_dead_letter" in line]
    assert 1 <= len(lines) <= LOG_TOPICS_PER_WINDOW, f"{len(lines)} log lines for {n} malformed messages"
    assert "not logged" in lines[-1]  # the last line says the rest are held back (and counted)
