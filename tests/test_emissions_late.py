"""Late readings of a closed year against a real PostgreSQL / TimescaleDB: the periodic job recomputes the stored
year when readings for it arrive after its year-end run (a database away over New Year's Eve while the gateway
spools, a restart in January with December still in the spool, a device's backlog), within `late_data_days`,
logged, recorded in `emission_runs` and named in reports; never from raw readings retention has removed.

Late readings are written as the forwarder writes them: rows into ``readings``, then the rollups of the minutes they
touched (`edge.sink.rollups.refresh`, what the forwarder's rollup task runs after each commit)."""

from __future__ import annotations

import csv
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest

from edge import cli
from edge.db.features import detect
from edge.db.migrate import migrate
from edge.sink import rollups
from emissions import job, periods, synthetic
from emissions.config import StackConfig


@pytest.fixture(params=["pg_dsn", "plain_pg_dsn"], ids=["timescaledb", "plain"])
def any_dsn(request) -> str:
    """A fresh database on TimescaleDB, then on plain PostgreSQL (the rollups and queries differ by edition)."""
    return request.getfixturevalue(request.param)


def stack(**extra) -> StackConfig:
    name = f"T{uuid.uuid4().hex[:8]}"
    return StackConfig.model_validate({"name": name, "regime": "lcp", "timezone": "Europe/Helsinki", **extra,
                                       "pollutants": [{"name": "NOx", "tag": f"{name}.NOx", "elv": {"month": 200.0}}]})


async def forward(conn, dsn: str, cfg: StackConfig, start: int, end: int, value: float = 300.0) -> None:
    """Readings every minute of [start, end) committed, then their rollups refreshed, as the forwarder does."""
    tag = cfg.pollutant("NOx").tag
    tid = synthetic.ensure_tags(conn, [tag], asset=cfg.name)[tag]
    t = np.arange(start, end, 60)
    synthetic.copy_readings(conn, tid, t, np.full(len(t), value))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as ac:
        await rollups.refresh(ac, detect(conn), [tid], _dt(start), _dt(end - 60))


def _dt(t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def day_average(conn, stack: str, day: int) -> tuple:
    """(value, valid, invalid hours) of the stored daily NOx average."""
    with conn.cursor() as cur:
        cur.execute("SELECT value, valid, sub_invalid FROM emission_averages WHERE stack = %s AND pollutant = 'NOx'"
                    " AND period = 'day' AND period_start = to_timestamp(%s)", (stack, day))
        return cur.fetchone()


def daily_breaches(conn, stack: str) -> list[tuple[int, bool, bool]]:
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM period_start)::bigint, breach, provisional FROM emission_events"
                    " WHERE stack = %s AND rule = 'lcp_daily_110' ORDER BY period_start", (stack,))
        return cur.fetchall()


def year_runs(conn, stack: str, year: int, new_year: int) -> list[tuple[str, int | None]]:
    """(reason, rollup_readings) of the stored runs of exactly that year, oldest first."""
    with conn.cursor() as cur:
        cur.execute("SELECT reason, rollup_readings FROM emission_runs WHERE stack = %s AND span_start ="
                    " to_timestamp(%s) AND span_end = to_timestamp(%s) ORDER BY id", (stack, year, new_year))
        return cur.fetchall()


def report(dsn: str, cfg: StackConfig, out: Path, *period: str) -> str:
    """``valvoja emissions report`` of ``cfg`` (one `stack`) for ``period`` (``--day D`` / ``--month M``) into ``out``,
    its site file there too; the HTML written."""
    site = out / "site.toml"
    site.write_text(f'[[stacks]]\nname = "{cfg.name}"\nregime = "lcp"\ntimezone = "Europe/Helsinki"\npollutants = '
                    f'[{{ name = "NOx", tag = "{cfg.name}.NOx", elv = {{ month = 200.0 }} }}]\n')
    assert cli.main(["emissions", "report", "--config", str(site), "--db", dsn, "--stack", cfg.name, *period, "--out",
                     str(out)]) == 0
    return (out / f"emissions_{cfg.name}_{period[1]}.html").read_text()


def events(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "") == name]


async def new_years_eve(conn, dsn: str, cfg: StackConfig) -> tuple[int, int, int, int]:
    """31 December 2025 at 300 mg/Nm³ (validated 260, over 110 % of the ELV 200). The database is away from 20:00 to
    00:30; the job's last run before was at 19:50. At 00:35 its first run back finishes 2025 before the forwarder
    has drained 20:00-24:00 from the spool: the day is judged on 20 hours (4 invalid > 3: invalid, no breach).
    Returns (day, new year, year start, where the job's runs ended)."""
    day, new_year = periods.parse_day("2025-12-31", cfg.timezone)
    year = periods.year_of(day, cfg.timezone)[0]
    await forward(conn, dsn, cfg, day, day + 20 * 3600)
    end = job._run_once(dsn, cfg, day + 19 * 3600 + 3000, "year", None)
    end = job._run_once(dsn, cfg, new_year + 2100, "year", end)
    assert day_average(conn, cfg.name, day)[1:] == (False, 4)
    assert daily_breaches(conn, cfg.name) == []
    return day, new_year, year, end


async def test_readings_drained_after_the_year_end_run_recompute_the_closed_year(any_dsn, caplog, tmp_path):
    """The forwarder drains 20:00-24:00 at 00:40; the hourly run at 01:35 recomputes 2025: the day is valid, a
    final breach of lcp_daily_110, the run recorded with its reason and logged naming the stack and the year; a
    report of December made afterwards says that its stored results were recomputed, when and why."""
    with psycopg.connect(any_dsn, autocommit=True) as conn:
        migrate(conn)
        cfg = stack()
        day, new_year, year, end = await new_years_eve(conn, any_dsn, cfg)
        await forward(conn, any_dsn, cfg, day + 20 * 3600, new_year)
        caplog.set_level(logging.INFO, logger="emissions")
        job._run_once(any_dsn, cfg, new_year + 5700, "year", end)
        value, valid, invalid_hours = day_average(conn, cfg.name, day)
        assert (valid, invalid_hours) == (True, 0) and value == pytest.approx(300.0)
        assert daily_breaches(conn, cfg.name) == [(day, True, False)]
        runs = year_runs(conn, cfg.name, year, new_year)
        assert [n for _, n in runs] == [1200, 1440]  # readings counted when each run started
        assert runs[0][0] == "" and runs[1][0].startswith("late data: 240 readings")
        (record,) = events(caplog, "emissions_late_recompute")
        assert record.stack == cfg.name and record.period == "2025" and "240 readings" in record.getMessage()
        html = report(any_dsn, cfg, tmp_path, "--month", "2025-12")
        assert "were recomputed at" in html and "late data: 240 readings of 2025 arrived after" in html
        assert "1 stored daily NOx average of this period changed after it closed" in html  # 31 December, invalid
        # The CSV export goes to systems that never see the HTML: the same notes, one row each.
        with (tmp_path / f"emissions_{cfg.name}_2025-12_notes.csv").open() as fh:
            notes = list(csv.DictReader(fh))
        assert [r["stack"] for r in notes] == [cfg.name] * len(notes)
        assert any("late data: 240 readings of 2025 arrived after" in r["note"] for r in notes)


async def test_a_closed_year_without_late_readings_is_not_recomputed(conn, pg_dsn, caplog):
    """The hourly year runs of January look at 2025 every time and find nothing new: it is computed once."""
    cfg = stack()
    _, new_year, year, end = await new_years_eve(conn, pg_dsn, cfg)
    caplog.set_level(logging.INFO, logger="emissions")
    for hours in (1, 2, 24 * 7):
        end = job._run_once(pg_dsn, cfg, new_year + hours * 3600 + 2100, "year", end)
    assert len(year_runs(conn, cfg.name, year, new_year)) == 1
    assert events(caplog, "emissions_late_recompute") == []


async def test_readings_later_than_late_data_days_are_logged_and_left(conn, pg_dsn, caplog):
    """late_data_days = 10: the readings drained on 12 January are not taken; the stored year stays as judged (and
    reported), a warning names the stack, the year and how to take them, once per process and not every hour."""
    cfg = stack(late_data_days=10)
    day, new_year, year, end = await new_years_eve(conn, pg_dsn, cfg)
    await forward(conn, pg_dsn, cfg, day + 20 * 3600, new_year)
    caplog.set_level(logging.INFO, logger="emissions")
    warned: dict = {}
    for hours in (11 * 24, 11 * 24 + 1):
        end = job._run_once(pg_dsn, cfg, new_year + hours * 3600 + 2100, "year", end, warned)
    assert day_average(conn, cfg.name, day)[1:] == (False, 4)
    assert len(year_runs(conn, cfg.name, year, new_year)) == 1
    (record,) = events(caplog, "emissions_late_data_ignored")
    assert record.stack == cfg.name and record.period == "2025"
    assert "late_data_days" in record.getMessage() and "valvoja emissions compute" in record.getMessage()


async def test_late_readings_do_not_recompute_a_year_whose_raw_readings_retention_removed(conn, pg_dsn, caplog):
    """Retention removed the raw readings of 30 December (its rollups are kept). Recomputing 2025 would replace that
    day's stored averages with ones from no data, so the late readings of the 31st are logged and not taken."""
    cfg = stack()
    day, new_year = periods.parse_day("2025-12-31", cfg.timezone)
    year = periods.year_of(day, cfg.timezone)[0]
    await forward(conn, pg_dsn, cfg, day - 86400, day + 20 * 3600)
    end = job._run_once(pg_dsn, cfg, new_year + 2100, "year", year + 3600)
    before = day_average(conn, cfg.name, day - 86400)
    assert before[1] is True
    with conn.cursor() as cur:
        cur.execute("DELETE FROM readings WHERE time < to_timestamp(%s)", (day,))
    await forward(conn, pg_dsn, cfg, day + 20 * 3600, new_year)
    caplog.set_level(logging.INFO, logger="emissions")
    job._run_once(pg_dsn, cfg, new_year + 5700, "year", end)
    assert day_average(conn, cfg.name, day - 86400) == before
    assert len(year_runs(conn, cfg.name, year, new_year)) == 1
    (record,) = events(caplog, "emissions_late_data_ignored")
    assert record.stack == cfg.name and "retention" in record.getMessage()


async def test_late_readings_are_not_judged_by_a_configuration_changed_since(conn, pg_dsn, caplog):
    """A new permit from 1 January (the monthly ELV 200 -> 150) is configured before December's readings drain: 2025
    is not recomputed by it unasked; the warning says why and how to take them with the configuration of 2025."""
    cfg = stack()
    day, new_year, year, end = await new_years_eve(conn, pg_dsn, cfg)
    await forward(conn, pg_dsn, cfg, day + 20 * 3600, new_year)
    new_permit = StackConfig.model_validate({**cfg.model_dump(), "pollutants": [
        {"name": "NOx", "tag": cfg.pollutant("NOx").tag, "elv": {"month": 150.0}}]})
    caplog.set_level(logging.INFO, logger="emissions")
    job._run_once(pg_dsn, new_permit, new_year + 5700, "year", end)
    assert day_average(conn, cfg.name, day)[1:] == (False, 4)
    assert len(year_runs(conn, cfg.name, year, new_year)) == 1
    (record,) = events(caplog, "emissions_late_data_ignored")
    assert "configuration changed" in record.getMessage() and "--config" in record.getMessage()


async def test_a_year_stored_before_runs_kept_a_count_is_recomputed_once_within_the_bound(conn, pg_dsn, caplog):
    """Runs stored by an earlier version have no count: within late_data_days the year before is computed again
    once (what arrived after it is unknown), recorded as such; after the bound nothing is done and nothing logged."""
    cfg = stack()
    _, new_year, year, end = await new_years_eve(conn, pg_dsn, cfg)
    with conn.cursor() as cur:
        cur.execute("UPDATE emission_runs SET rollup_readings = NULL WHERE stack = %s", (cfg.name,))
    caplog.set_level(logging.INFO, logger="emissions")
    for hours in (1, 2):
        end = job._run_once(pg_dsn, cfg, new_year + hours * 3600 + 2100, "year", end)
    assert [(r.split(":")[0], n) for r, n in year_runs(conn, cfg.name, year, new_year)] == [
        ("", None), ("late data check", 1200)]
    with conn.cursor() as cur:
        cur.execute("UPDATE emission_runs SET rollup_readings = NULL WHERE stack = %s", (cfg.name,))
    job._run_once(pg_dsn, cfg, new_year + 40 * 86400, "year", end)
    assert len(year_runs(conn, cfg.name, year, new_year)) == 2
    assert len(events(caplog, "emissions_late_recompute")) == 1 and events(caplog, "emissions_late_data_ignored") == []


# -- the real gateway process: MQTT -> spool during a database outage -> forwarder -> rollups -> the job ----------

STACK = """
[[stacks]]
name = "K9"
regime = "lcp"
timezone = "UTC"
late_data_days = 366                 # the closed year here is the real one before today's
pollutants = [{ name = "NOx", tag = "K9.NOx", elv = { month = 200.0 } }]
"""


def publish_minutes(pub, start: int, end: int, value: float = 300.0) -> None:
    """One QoS 1 message a minute of [start, end) for K9.NOx, stamped with its source time."""
    import orjson

    infos = [pub.client.publish(f"ops/{pub.run}/K9/NOx", orjson.dumps(
        {"value": value, "time": _dt(t).isoformat().replace("+00:00", "Z")}), qos=1) for t in range(start, end, 60)]
    for info in infos:
        info.wait_for_publish(30)


def late_runs(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return [r for (r,) in c.execute("SELECT reason FROM emission_runs WHERE stack = 'K9' AND reason <> ''"
                                        " ORDER BY id").fetchall()]


@pytest.mark.slow
async def test_gateway_takes_december_readings_spooled_over_a_database_outage(tmp_path, own_pg_server, mosquitto):
    """The year before this one was computed to its end (the job's year-end run) while the readings of its last
    evening were still on their way. The database goes away; the gateway collects 20:00-24:00 of 31 December over
    MQTT into its spool; the database returns and the forwarder drains them. The gateway's next year run (hourly; a
    restart brings it forward here) recomputes the closed year: the day is valid and judged, the run is recorded with
    its reason, the log names the stack and the year. The restart's run after that finds nothing new."""
    from gateway_proc import GatewayProcess
    from ops_support import Publisher, new_run, site_config, stored, wait_for

    dsn = own_pg_server.create_database("late", timescaledb=True)
    cfg = StackConfig.model_validate({"name": "K9", "regime": "lcp", "timezone": "UTC", "late_data_days": 366,
                                      "pollutants": [{"name": "NOx", "tag": "K9.NOx", "elv": {"month": 200.0}}]})
    year, new_year = periods.year_of(periods.year_of(int(time_now()), "UTC")[0] - 1, "UTC")
    day = new_year - 86400
    with psycopg.connect(dsn, autocommit=True) as c:
        migrate(c)
        await forward(c, dsn, cfg, day, day + 20 * 3600)
        job._run_once(dsn, cfg, new_year + 2100, "year", day + 19 * 3600)  # the year-end run, 20 hours of the day
        assert day_average(c, "K9", day)[1:] == (False, 4)
    run = new_run()
    site = site_config(dsn, mosquitto.port, run=run).replace(
        "connect_timeout_s = 3", "connect_timeout_s = 3\nrollup_interval_s = 0.2", 1) + STACK
    gw = GatewayProcess(tmp_path / "gw", site).start()
    wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], timeout_s=30, what="collector subscribed")
    pub = Publisher(mosquitto.port, run)
    try:
        own_pg_server.stop()
        publish_minutes(pub, day + 20 * 3600, new_year)
        wait_for(lambda: gw.health()["spool"]["readings"] >= 240, timeout_s=30, what="December spooled")
        own_pg_server.start()
        wait_for(lambda: stored(dsn, "K9.") == 1440 and gw.health()["spool"]["readings"] == 0, timeout_s=60,
                 what="spool drained")
        wait_for(lambda: rollup_count(dsn) == 1440, timeout_s=30, what="rollups of the drained minutes")
        assert late_runs(dsn) == []  # the job's year run at start came before the outage; the next is an hour away
        assert gw.terminate() == 0
        gw.start()
        wait_for(lambda: late_runs(dsn), timeout_s=60, what="the closed year recomputed")
        assert gw.terminate() == 0
    finally:
        pub.close()
        gw.kill()
    assert late_runs(dsn) == [f"late data: 240 readings of {periods.iso(year, 'UTC')[:4]} arrived after its "
                              f"computation at {late_runs(dsn)[0].rsplit('at ', 1)[1]}"]
    with psycopg.connect(dsn, autocommit=True) as c:
        value, valid, invalid_hours = day_average(c, "K9", day)
        assert (valid, invalid_hours) == (True, 0) and value == pytest.approx(300.0)
        assert daily_breaches(c, "K9") == [(day, True, False)]
    log = gw.log.read_text()
    assert "event=emissions_late_recompute" in log and "stack=K9" in log
    assert f"period={periods.iso(year, 'UTC')[:4]}" in log


def rollup_count(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT coalesce(sum(count + bad_count), 0) FROM readings_1h").fetchone()[0]


def time_now() -> float:
    import time

    return time.time()
