"""A run computes its context period (a month, a day) only: windows and periods that started before it (the year
of the yearly rules and of the invalid-day count, the month of a day run) are judged by the runs that cover them
whole, and a shorter run leaves their stored judgement alone (real PostgreSQL)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest

from emissions import cli as emissions_cli
from emissions import job, periods, report, synthetic
from emissions.config import StackConfig

TZ = "Europe/Helsinki"


def lcp(name: str, **regulatory) -> StackConfig:
    """No operating-state tag: always operating, so a day without data is an invalid day."""
    return StackConfig.model_validate({"name": name, "regime": "lcp", "timezone": TZ, "regulatory": regulatory,
                                       "pollutants": [{"name": "NOx", "tag": f"{name}.NOx", "elv": {"month": 200.0}}]})


def seed(conn, cfg: StackConfig, first: str, last: str, value: float, skip: tuple[str, ...] = ()) -> None:
    """One reading a minute at ``value`` from local day ``first`` to the end of ``last`` (``skip``: days without)."""
    seed_between(conn, cfg, periods.parse_day(first, TZ)[0], periods.parse_day(last, TZ)[1], value, skip)


def seed_between(conn, cfg: StackConfig, start: int, end: int, value: float, skip: tuple[str, ...] = ()) -> None:
    """One reading a minute at ``value`` in [start, end) (``skip``: local days without)."""
    t = np.arange(start, end, 60)
    for d in skip:
        lo, hi = periods.parse_day(d, TZ)
        t = t[(t < lo) | (t >= hi)]
    tag = cfg.pollutant("NOx").tag
    ids = synthetic.ensure_tags(conn, [tag], asset=cfg.name)
    synthetic.copy_readings(conn, ids[tag], t, np.full(len(t), value))


def stored(conn, stack: str, start: int) -> dict:
    """Events and rule results of the windows and periods starting at ``start``, by rule."""
    out = {}
    for key, table, columns, at in (
            ("events", "emission_events", "kind, round(value::numeric, 3)::float8, breach", "period_start"),
            ("rules", "emission_compliance", "n_valid, n_over, passed", "window_start")):
        with conn.cursor() as cur:
            cur.execute(f"SELECT rule, {columns}, provisional FROM {table} WHERE stack = %s"
                        f" AND {at} = to_timestamp(%s) ORDER BY 1, 2", (stack, start))
            out[key] = cur.fetchall()
    return out


def test_a_month_run_leaves_the_year_windows_judged_by_the_year_run(conn, pg_dsn):
    """1 January - 10 March 2026 03:00: five days without data (three in January, 1-2 March), 3-4 March at 500
    (validated 460, over 200 % of the ELV: 48 hours). Year to date 48 of 1515 valid hours over (96.8 % within
    95 %: passed so far) and five invalid days (over the one allowed); March alone would be 72 % within and two
    invalid days. The periodic month run five minutes after the year run must not replace the year's judgement."""
    cfg = lcp(f"T{uuid.uuid4().hex[:8]}", max_invalid_days_per_year=1)
    seed(conn, cfg, "2026-01-01", "2026-03-10", 150.0, skip=("2026-01-05", "2026-01-06", "2026-01-07",
                                                             "2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"))
    seed(conn, cfg, "2026-03-03", "2026-03-04", 500.0)
    year = periods.year_of(periods.parse_day("2026-03-10", TZ)[0], TZ)[0]
    now = periods.parse_day("2026-03-10", TZ)[0] + 3 * 3600 + 1200  # 03:20

    job._run_once(pg_dsn, cfg, now, "year", None)
    by_year = stored(conn, cfg.name, year)
    assert by_year["events"] == [("invalid_days", "invalid_days", 5.0, False, True)]
    rules = {r[0]: r[1:] for r in by_year["rules"]}
    assert rules["invalid_days"] == (69, 5, False, True) and rules["lcp_hourly_95_200"] == (1515, 48, True, True)

    job._run_once(pg_dsn, cfg, now + 300, "month", None)
    assert stored(conn, cfg.name, year) == by_year
    # The month's own judgement is stored: its two days over 110 % are final breaches.
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM emission_events WHERE stack = %s AND rule = 'lcp_daily_110' AND breach",
                    (cfg.name,))
        assert cur.fetchone()[0] == 2
    # The next hourly year run judges the year to date again, from the whole of it (one more hour).
    job._run_once(pg_dsn, cfg, now + 3600, "year", None)
    after = stored(conn, cfg.name, year)
    assert after["events"] == by_year["events"]
    assert {r[0]: r[1:] for r in after["rules"]}["lcp_hourly_95_200"] == (1516, 48, True, True)


def test_a_day_run_leaves_a_judged_month_alone(conn):
    """February 2026 at 300 (validated 260 over the ELV 200): the month run judges the monthly average a breach.
    Recomputing one day of it afterwards (`valvoja emissions compute`, context day) must not turn that final
    breach into a provisional exceedance of the day's value, nor add a year window event from one day."""
    cfg = lcp(f"T{uuid.uuid4().hex[:8]}")
    seed(conn, cfg, "2026-02-01", "2026-02-28", 300.0)
    month, month_end = periods.parse_month("2026-02", TZ)
    job.run_span(conn, cfg, month, month_end, context="month")
    by_month = stored(conn, cfg.name, month)
    assert ("lcp_monthly", "exceedance", 260.0, True, False) in by_month["events"]
    year = periods.year_of(month, TZ)[0]
    by_year = stored(conn, cfg.name, year)

    day = periods.parse_day("2026-02-10", TZ)
    sr = job.run_span(conn, cfg, *day, context="day")
    assert stored(conn, cfg.name, month) == by_month
    assert stored(conn, cfg.name, year) == by_year
    assert all(e.start >= day[0] for e in sr.events) and all(r.start >= day[0] for r in sr.rules)


# -- a computation never reaches past the last whole hour: a running period is judged provisional --

def run_end(conn, stack: str) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM span_end)::bigint FROM emission_runs WHERE stack = %s ORDER BY id DESC"
                    " LIMIT 1", (stack,))
        return cur.fetchone()[0]


def test_a_report_of_the_running_month_is_provisional_and_stored_to_the_last_hour(conn):
    """`valvoja emissions report --month 2026-01` at 11 January 12:20: 1-10 January at 250 (validated 210, over the
    ELV 200), 11 January at 300 (260, over 110 %) up to now. The span must end at 12:00, not on 1 February: the
    month and the day so far are provisional exceedances, the report says so, the stored run ends at 12:00."""
    cfg = lcp(f"T{uuid.uuid4().hex[:8]}")
    month, month_end = periods.parse_month("2026-01", TZ)
    day = periods.parse_day("2026-01-11", TZ)[0]
    now = day + 12 * 3600 + 1200
    seed(conn, cfg, "2026-01-01", "2026-01-10", 250.0)
    seed_between(conn, cfg, day, now, 300.0)
    sr = job.run_span(conn, cfg, month, month_end, clock=lambda: now)  # as cmd_report: context year, whole days
    assert sr.span == (month, day + 12 * 3600)
    # the month so far: 240 hours at 210 and 12 at 260
    assert stored(conn, cfg.name, month)["events"] == [("lcp_monthly", "exceedance", 212.381, False, True)]
    assert stored(conn, cfg.name, day)["events"] == [("lcp_daily_110", "exceedance", 260.0, False, True)]
    assert not any(e.breach for e in sr.events) and run_end(conn, cfg.name) == day + 12 * 3600
    rep = report.build(sr, "month", month, month_end)
    assert [r.provisional for r in rep.rules if r.rule == "lcp_monthly"] == [True]
    assert rep.notes and rep.notes[0].startswith("The period is not complete")

    # `valvoja emissions compute --from 2026-01-11 --to 2026-01-13` (a day still to come) at the same time
    sr = job.run_span(conn, cfg, day, day + 2 * 86400, context="day", clock=lambda: now)
    assert sr.span == (day, day + 12 * 3600) and run_end(conn, cfg.name) == day + 12 * 3600
    assert stored(conn, cfg.name, day)["events"] == [("lcp_daily_110", "exceedance", 260.0, False, True)]


def test_after_a_report_of_the_running_month_a_restart_finishes_it(conn, pg_dsn):
    """A December report at 15 December 12:20 (1-15 December 12:00 at 250, validated 210 over the ELV 200), the
    rest of the month at 150 (110) arriving later, the gateway started again on 3 January: the periodic job
    must compute December to its end from where the report stopped (the month within its ELV, no breach)."""
    cfg = lcp(f"T{uuid.uuid4().hex[:8]}")
    month, new_year = periods.parse_month("2025-12", TZ)
    now = periods.parse_day("2025-12-15", TZ)[0] + 12 * 3600 + 1200
    seed_between(conn, cfg, month, now - 1200, 250.0)
    job.run_span(conn, cfg, month, new_year, clock=lambda: now)
    assert stored(conn, cfg.name, month)["events"] == [("lcp_monthly", "exceedance", 210.0, False, True)]
    seed_between(conn, cfg, now - 1200, new_year, 150.0)
    job._run_once(pg_dsn, cfg, new_year + 2 * 86400 + 1200, "year", None)
    assert stored(conn, cfg.name, month)["events"] == []  # the provisional month-to-date exceedance replaced


def test_a_span_of_which_no_hour_has_ended_is_refused(conn):
    cfg = lcp(f"T{uuid.uuid4().hex[:8]}")
    now = periods.parse_day("2026-12-06", TZ)[0]
    with pytest.raises(job.NothingClosed, match="no hour of it has ended yet"):
        job.run_span(conn, cfg, *periods.parse_month("2027-02", TZ), clock=lambda: now)


# -- emissions/README.md "Upgrading": events that a run before this rule overwrote, found and put right --

README = Path(__file__).resolve().parents[1] / "emissions" / "README.md"


def readme_sql() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("```sql\n", 1)[1].split("```", 1)[0]


def left_over(pg_dsn: str, stack: str) -> list[tuple]:
    with psycopg.connect(pg_dsn, autocommit=True) as c, c.cursor() as cur:
        cur.execute(readme_sql())  # one SET and one SELECT, as an operator pastes them into psql
        assert cur.nextset()
        return [r for r in cur.fetchall() if r[0] == stack]


def test_the_readme_finds_an_event_an_old_month_run_overwrote_and_its_compute_puts_it_right(conn, pg_dsn, tmp_path):
    """2025 judged whole (`compute` of the year: three days without data in January, then readings up to 10 January
    only, so 358 invalid days). A month run of the old code then stored the year's invalid-day event from March
    alone (the UPDATE below does what it did, in its own transaction with its run row). The README's query lists
    that year, and the command it gives restores the year's own judgement."""
    cfg = lcp(f"T{uuid.uuid4().hex[:8]}", max_invalid_days_per_year=1)
    seed(conn, cfg, "2025-01-01", "2025-01-10", 150.0, skip=("2025-01-05", "2025-01-06", "2025-01-07"))
    year, year_end = periods.year_of(periods.parse_day("2025-06-01", TZ)[0], TZ)
    site = tmp_path / "site.toml"
    site.write_text(f'[[stacks]]\nname = "{cfg.name}"\nregime = "lcp"\ntimezone = "{TZ}"\n'
                    f'regulatory = {{ max_invalid_days_per_year = 1 }}\n'
                    f'pollutants = [{{ name = "NOx", tag = "{cfg.name}.NOx", elv = {{ month = 200.0 }} }}]\n')
    compute = ["compute", "--config", str(site), "--db", pg_dsn, "--stack", cfg.name, "--from", "2025-01-01",
               "--to", "2026-01-01"]
    assert emissions_cli.main(compute) == 0
    judged = stored(conn, cfg.name, year)
    assert judged["events"] == [("invalid_days", "invalid_days", 358.0, True, False)]
    assert left_over(pg_dsn, cfg.name) == []

    march, april = periods.parse_month("2025-03", TZ)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("INSERT INTO emission_runs (stack, span_start, span_end, config, config_sha256, averages, events,"
                    " seconds) VALUES (%s, to_timestamp(%s), to_timestamp(%s), '{}', 'old', 0, 1, 0)",
                    (cfg.name, march, april))
        cur.execute("UPDATE emission_events SET value = 31, breach = false, provisional = true, computed_at = now()"
                    " WHERE stack = %s AND period_start = to_timestamp(%s)", (cfg.name, year))
    found = left_over(pg_dsn, cfg.name)
    assert [(r[1], int(r[2].timestamp()), int(r[3].timestamp())) for r in found] == [("year", year, year_end)]
    assert found[0][2].isoformat().startswith("2025-01-01T00:00:00+02")  # local dates, as the README says

    assert emissions_cli.main(compute) == 0
    assert stored(conn, cfg.name, year) == judged
    assert left_over(pg_dsn, cfg.name) == []
