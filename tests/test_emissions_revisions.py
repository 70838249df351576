"""Revisions of closed periods against a real PostgreSQL / TimescaleDB: a run that changes the stored average of a day
(or of its hours) that had closed when it was stored records the change (`emission_revisions`), logs it, and a report
of the period made afterwards says that its stored results changed after it closed, with the old and new value. A run
over unchanged readings, or over a period that was still running, records nothing.

Readings are written as the forwarder writes them (rows, then their rollups: `test_emissions_late.forward`)."""

from __future__ import annotations

import csv
import logging

import numpy as np
import psycopg
import pytest
from test_emissions_late import _dt, day_average, events, forward, report, stack

from edge import cli
from edge.db.features import detect
from edge.db.migrate import migrate
from edge.sink import rollups
from emissions import job, periods, synthetic
from emissions.config import StackConfig


@pytest.fixture(params=["pg_dsn", "plain_pg_dsn"], ids=["timescaledb", "plain"])
def any_dsn(request) -> str:
    return request.getfixturevalue(request.param)


def revisions(conn, name: str) -> list[tuple]:
    """(period, period start, old value, new value, old status, new status) of the stored revisions, in order."""
    with conn.cursor() as cur:
        cur.execute("SELECT period, extract(epoch FROM period_start)::bigint, old_value, new_value, old_status,"
                    " new_status FROM emission_revisions WHERE stack = %s ORDER BY period, period_start", (name,))
        return cur.fetchall()


async def test_late_readings_of_a_closed_day_are_a_revision_the_report_states(any_dsn, caplog, tmp_path):
    """10 March 2026 (the running year): the job's run at 00:35 on the 11th closes the day on the 20 hours stored
    (4 invalid hours > 3: invalid). The device's backlog of 20:00-24:00 (at 100 mg/Nm³) arrives afterwards; the next
    5-minute run recomputes March: the day is valid at a lower value. The change is stored with the run, logged, and
    the report of the day says its stored daily average changed after it closed, from what to what, and names the
    four hours that did too."""
    with psycopg.connect(any_dsn, autocommit=True) as conn:
        migrate(conn)
        cfg = stack()
        day, next_day = periods.parse_day("2026-03-10", cfg.timezone)
        await forward(conn, any_dsn, cfg, day, day + 20 * 3600)
        end = job._run_once(any_dsn, cfg, next_day + 2100, "year", None)
        old, valid, _ = day_average(conn, cfg.name, day)
        assert valid is False
        await forward(conn, any_dsn, cfg, day + 20 * 3600, next_day, value=100.0)
        caplog.set_level(logging.INFO, logger="emissions")
        runs: list[job.SpanResult] = []
        job._run_once(any_dsn, cfg, next_day + 2400, "month", end, None, runs)
        assert [r.revisions for r in runs] == [5]  # what valvoja_emissions_revisions_total counts
        new, valid, _ = day_average(conn, cfg.name, day)
        assert valid is True and new < old
        said = "changed after it closed, at "
        change = f"{old:.2f} mg/Nm³ (invalid) -&gt; {new:.2f} mg/Nm³ (valid)"
        html = report(any_dsn, cfg, tmp_path, "--day", "2026-03-10")
        assert said in html and change in html and "4 stored hourly NOx averages of this period changed" in html
        with (tmp_path / f"emissions_{cfg.name}_2026-03-10_notes.csv").open() as fh:
            notes = [r["note"] for r in csv.DictReader(fh)]
        assert any(said in n and change.replace("-&gt;", "->") in n for n in notes)
        # The month's report names the day among its days.
        html = report(any_dsn, cfg, tmp_path, "--month", "2026-03")
        assert "1 stored daily NOx average of this period changed after it closed" in html and change in html
        # Stored with the run that made it (the report's own run changed nothing more) and logged.
        stored = revisions(conn, cfg.name)
        assert stored[0] == ("day", day, pytest.approx(old), pytest.approx(new), 1, 0)
        assert [(p, t) for p, t, *_ in stored[1:]] == [("hour", day + h * 3600) for h in range(20, 24)]
        (record,) = events(caplog, "emissions_revised")
        assert record.stack == cfg.name and record.revisions == 5 and record.periods == ["day", "hour"]


async def test_unchanged_readings_and_running_periods_are_no_revision(pg_dsn, caplog):
    """Readings with noise: the 5-minute month runs and the hourly year runs compute the same closed hours and days
    again from the same readings (summed over different spans), and the hours and day still running at one run are
    complete at the next: no revision, nothing logged."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
        cfg = stack()
        day, next_day = periods.parse_day("2026-03-10", cfg.timezone)
        tag = cfg.pollutant("NOx").tag
        tid = synthetic.ensure_tags(conn, [tag], asset=cfg.name)[tag]
        t = np.arange(day - 86400, next_day + 3 * 3600, 60)
        synthetic.copy_readings(conn, tid, t, 150.0 + np.random.default_rng(7).normal(0.0, 30.0, len(t)))
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as ac:
            await rollups.refresh(ac, detect(conn), [tid], _dt(int(t[0])), _dt(int(t[-1])))
        caplog.set_level(logging.INFO, logger="emissions")
        end = job._run_once(pg_dsn, cfg, day + 12 * 3600 + 2100, "year", None)  # the 10th to 12:00
        for now, context in ((day + 12 * 3600 + 2400, "month"), (next_day + 2100, "year"),
                             (next_day + 2400, "month"), (next_day + 2 * 3600 + 2100, "year")):
            end = job._run_once(pg_dsn, cfg, now, context, end)
        assert day_average(conn, cfg.name, day)[1] is True
        assert revisions(conn, cfg.name) == []
        assert events(caplog, "emissions_revised") == []


async def test_a_compute_that_changes_a_closed_day_of_a_waste_incinerator_records_its_half_hours(pg_dsn, tmp_path,
                                                                                                   monkeypatch):
    """Waste incineration: the day is built from half-hours (its half-hour limits). The day closed on 22 hours (valid:
    4 half-hours missing, at most 5 allowed); the last two hours' readings come later and are taken by `valvoja
    emissions compute` of the day: the day's value changes (still valid) and the four half-hours get one. Both are
    revisions, and the day's report names the day's change and the half-hours, and who recomputed them and why
    (`--reason`; the report said only "run N", a number in a table nobody filing the report reads)."""
    monkeypatch.setenv("VALVOJA_USER", "anna")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
        name = stack().name
        cfg = StackConfig.model_validate({"name": name, "regime": "waste_incineration", "timezone": "Europe/Helsinki",
                                          "pollutants": [{"name": "NOx", "tag": f"{name}.NOx", "elv": {"day": 200.0}}]})
        day, next_day = periods.parse_day("2026-03-10", cfg.timezone)
        await forward(conn, pg_dsn, cfg, day, day + 22 * 3600, value=150.0)
        job._run_once(pg_dsn, cfg, next_day + 2100, "year", None)
        old, valid, _ = day_average(conn, cfg.name, day)
        assert valid is True
        await forward(conn, pg_dsn, cfg, day + 22 * 3600, next_day, value=30.0)
        site = tmp_path / "site.toml"
        site.write_text(f'[[stacks]]\nname = "{cfg.name}"\nregime = "waste_incineration"\ntimezone = "Europe/Helsinki"'
                        f'\npollutants = [{{ name = "NOx", tag = "{cfg.name}.NOx", elv = {{ day = 200.0 }} }}]\n')
        common = ["--config", str(site), "--db", pg_dsn, "--stack", cfg.name]
        assert cli.main(["emissions", "compute", *common, "--from", "2026-03-10", "--to", "2026-03-11",
                         "--reason", "  NOx analyser's backlog of 22-24 h  "]) == 0
        new, valid, _ = day_average(conn, cfg.name, day)
        assert valid is True and new == pytest.approx((22 * 150.0 + 2 * 30.0) / 24)
        assert [(p, t, n) for p, t, _, n, *_ in revisions(conn, cfg.name)] == [
            ("day", day, pytest.approx(new))] + [("half_hour", day + 22 * 3600 + i * 1800, 30.0) for i in range(4)]
        assert cli.main(["emissions", "report", *common, "--day", "2026-03-10", "--out", str(tmp_path)]) == 0
    html = (tmp_path / f"emissions_{cfg.name}_2026-03-10.html").read_text()
    assert f"{old:.2f} mg/Nm³ (valid) -&gt; {new:.2f} mg/Nm³ (valid)" in html
    assert "4 stored half-hour NOx averages of this period changed after they closed" in html
    by = "compute by anna: NOx analyser&#x27;s backlog of 22-24 h"
    assert html.count(f": {by})") == 2  # the day's note and the half-hours' note name the run's reason
    # and the recomputation itself is a note of the report (`late.notes`: runs with a reason covering the day)
    assert "recomputed at " in html and f"({by})" in html


async def test_an_hour_changed_by_two_runs_is_one_changed_hour_in_the_report(pg_dsn, tmp_path):
    """A device's backlog of 10 March 20:00-21:00 arrives in two parts, each taken by a run: 20:00-20:45 at 100
    mg/Nm³ (the hour valid at 100), then 20:45-21:00 at 300 (the hour at 150). Two revisions of one hour, both
    stored; the day's report counted them as "2 stored hourly NOx averages" and named 20:00 twice. It counts one
    hour and gives its change from before the first run to after the last."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
        cfg = stack()
        day, next_day = periods.parse_day("2026-03-10", cfg.timezone)
        await forward(conn, pg_dsn, cfg, day, day + 20 * 3600, value=100.0)
        await forward(conn, pg_dsn, cfg, day + 21 * 3600, next_day, value=100.0)
        job.run_span(conn, cfg, day, next_day, context="day")  # the day closed without 20:00-21:00
        for lo, hi, value in ((0, 45, 100.0), (45, 60, 300.0)):
            await forward(conn, pg_dsn, cfg, day + 20 * 3600 + lo * 60, day + 20 * 3600 + hi * 60, value=value)
            job.run_span(conn, cfg, day, next_day, context="day")
        hours = [(t, o, n) for p, t, o, n, *_ in revisions(conn, cfg.name) if p == "hour"]
        assert hours == [(day + 20 * 3600, None, 100.0), (day + 20 * 3600, 100.0, 150.0)]
    html = report(pg_dsn, cfg, tmp_path, "--day", "2026-03-10")
    start = periods.iso(day + 20 * 3600, cfg.timezone)
    assert ("1 stored hourly NOx average of this period changed after it closed" in html
            and f"{start}: no value (invalid) -&gt; 150.00 mg/Nm³ (valid) (in 2 runs)" in html), html
    assert html.count(f"{start}: ") == 1
