"""What an operator at an unattended site sees of a running gateway (`valvoja run` as a real process, with the
fixture broker and database): its log under a flood of bad messages, and its /metrics."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
from gateway_proc import ROOT, GatewayProcess
from ops_support import Publisher, new_run, site_config, wait_for

from collectors.mqtt.router import LOG_TOPICS_PER_WINDOW
from edge.validate import RULE_NAMES


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


def test_series_of_known_label_values_are_there_at_0_from_the_start_and_counters_survive_a_reload(
        tmp_path, pg_dsn, mosquitto):
    """A counter whose first sample is 1 (or 10,000 after a flood) is a rise Prometheus' rate() and increase() never
    see, and an alert on a series' absence fires on a healthy gateway. A collector's counters, each validation
    rule's, the reload results and the notification results were absent until their first event. They are there at
    0 from the start (a collector a reload adds: from the reload), and a reload does not set any counter back."""
    run = new_run()
    config = site_config(pg_dsn, mosquitto.port, run=run)
    gw = GatewayProcess(tmp_path, config).start()
    pub = Publisher(mosquitto.port, run)
    try:
        at_start = _series(gw.metrics())
        for name in ("valvoja_readings_in_total", "valvoja_dead_letters_total", "valvoja_collector_reconnects_total",
                     "valvoja_readings_too_large_total", "valvoja_tag_names_too_long_total",
                     "valvoja_collector_messages_total"):
            assert at_start.get(f'{name}{{collector="plant"}}') == 0, name
        for rule in RULE_NAMES:
            assert at_start.get(f'valvoja_readings_flagged_total{{rule="{rule}"}}') == 0, rule
        for result in ("applied", "rejected"):
            assert at_start.get(f'valvoja_config_reloads_total{{result="{result}"}}') == 0, result
        for result in ("ok", "failed", "dropped", "skipped"):
            assert at_start.get(f'valvoja_alert_notifications_total{{result="{result}"}}') == 0, result
        for analysis in ("indicators", "rul", "emissions"):
            assert at_start.get(f'valvoja_analytics_late_total{{analysis="{analysis}"}}') == 0, analysis

        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector connected")
        pub.publish(100)
        pub.client.publish(f"ops/{run}/P-1/flow", b"{not json", qos=1).wait_for_publish(10)
        wait_for(lambda: _series(gw.metrics()).get('valvoja_dead_letters_total{collector="plant"}') == 1,
                 what="the dead letter counted")
        wait_for(lambda: _series(gw.metrics()).get('valvoja_readings_in_total{collector="plant"}') == 100,
                 what="100 readings counted")
        before = _series(gw.metrics())
        # the same collector section again, as a second collector of its own name, client id and topics
        other = config[config.index("[[collectors]]"):].replace('name = "plant"', 'name = "other"')
        gw.config.write_text(gw.config.read_text() + "\n" + other.replace(f"valvoja-{run}", f"other-{run}")
                             .replace(f"ops/{run}/", f"other/{run}/"))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config_applied" in gw.log.read_text(), what="the reload applied")
        after = _series(gw.metrics())
    finally:
        pub.close()
        assert gw.terminate() == 0
    lowered = {k: (v, after.get(k)) for k, v in before.items()
               if k.startswith("valvoja_") and "_total" in k and not (after.get(k, -1) >= v)}
    assert lowered == {}, "counters set back (or gone) by a reload"
    assert after['valvoja_config_reloads_total{result="applied"}'] == 1
    for name in ("valvoja_readings_in_total", "valvoja_dead_letters_total", "valvoja_collector_reconnects_total"):
        assert after.get(f'{name}{{collector="other"}}') == 0, name



async def test_the_emissions_jobs_counters_of_each_stack_are_there_at_0_when_the_gateway_starts(tmp_path, pg_dsn):
    """`valvoja_emissions_runs_total{stack,result}` appeared with the first run of a stack: the first run that
    failed was a rise no increase() saw (the suggested alert on errors missed it). Each configured stack's runs,
    revisions and QAL3 alarms are there at 0 from the start; the time of the last success is not (0 is 1970)."""
    import asyncio
    import tomllib

    from edge import settings
    from edge.gateway import Gateway

    stacks = tomllib.loads((ROOT / "emissions" / "sample.toml").read_text())["stacks"]
    cfg = settings.parse({"site": {"state_dir": str(tmp_path / "var")}, "http": {"enabled": False},
                          "stacks": stacks})
    gw = Gateway(cfg, conninfo=pg_dsn)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        await asyncio.wait_for(gw.ready.wait(), 30)
        got = _series(gw.metrics.render().decode())
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)
    names = [s["name"] for s in stacks]
    assert len(names) >= 2
    for stack in names:
        for result in ("ok", "db_unreachable", "error"):
            assert f'valvoja_emissions_runs_total{{result="{result}",stack="{stack}"}}' in got, (stack, result)
        assert f'valvoja_emissions_revisions_total{{stack="{stack}"}}' in got
        assert f'valvoja_emissions_qal3_alarms_total{{stack="{stack}"}}' in got


def test_the_latency_of_readings_forwarded_hours_late_is_told_apart_from_a_days(tmp_path, pg_dsn, mosquitto):
    """`valvoja_reading_latency_seconds` ended at 600 s: readings forwarded after a database outage of two hours
    (or two days) were all in +Inf, and histogram_quantile() said 600 s for any of them. Its buckets go to a day."""
    run = new_run()
    gw = GatewayProcess(tmp_path, site_config(pg_dsn, mosquitto.port, run=run)).start()
    pub = Publisher(mosquitto.port, run)
    pub.base = datetime.now(UTC) - timedelta(hours=2)  # stamped two hours ago, as a spool drained after an outage
    try:
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], what="collector connected")
        pub.publish(50)
        wait_for(lambda: _series(gw.metrics()).get("valvoja_readings_stored_total") == 50, what="50 stored")
        got = _series(gw.metrics())
    finally:
        pub.close()
        assert gw.terminate() == 0
    bucket = "valvoja_reading_latency_seconds_bucket"
    n = got["valvoja_reading_latency_seconds_count"]
    assert n > 0 and got[f'{bucket}{{le="3600.0"}}'] == 0 and got[f'{bucket}{{le="21600.0"}}'] == n


def test_metrics_has_no_created_series(tmp_path, pg_dsn, mosquitto):
    """Each counter and histogram had a `<name>_created` series beside it (its creation time), which Prometheus
    stores as a series of its own from the text format: a third of the gateway's series, none of use."""
    gw = GatewayProcess(tmp_path, site_config(pg_dsn, mosquitto.port)).start()
    try:
        text = gw.metrics()
    finally:
        assert gw.terminate() == 0
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert any(s.startswith("valvoja_readings_in_total") for s in samples)
    assert [s for s in samples if "_created" in s.split(" ", 1)[0]] == []


def test_the_watchdogs_restarts_are_there_at_0_for_each_part_it_watches(tmp_path, pg_dsn, mosquitto):
    """`valvoja_watchdog_restarts_total{part,reason}` appeared with a part's first restart, a rise the guide's
    suggested alert `increase(valvoja_watchdog_restarts_total[1h]) > 3` never counted. Each part's series is there at
    0 once the watchdog watches the gateway: died for every part, stalled for the forwarder, silent for a collector
    when `collector_silence_s` is set."""
    gw = GatewayProcess(tmp_path, site_config(pg_dsn, mosquitto.port, silence_s=600)).start()
    try:
        name = "valvoja_watchdog_restarts_total"
        want = [f'{name}{{part="ingest",reason="died"}}', f'{name}{{part="collector:plant",reason="died"}}',
                f'{name}{{part="forwarder",reason="stalled"}}', f'{name}{{part="collector:plant",reason="silent"}}']
        got = wait_for(lambda: (lambda s: s if all(w in s for w in want) else None)(_series(gw.metrics())),
                       what="the watchdog's series")
    finally:
        assert gw.terminate() == 0
    assert [got[w] for w in want] == [0, 0, 0, 0]
