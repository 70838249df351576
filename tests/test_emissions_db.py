"""Emissions against a real PostgreSQL / TimescaleDB: readings -> stored averages, idempotence, late data,
the report command, and the stored daily average against an independent calculation from the raw rows."""

from __future__ import annotations

import csv
import subprocess
import sys
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import pytest

from edge.db.migrate import migrate
from edge.records import Flag, Quality, Reading
from emissions import job, periods, synthetic
from emissions.config import StackConfig

T0 = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp())
DAYS = 3
ROOT = Path(__file__).resolve().parents[1]


def seed(conn, cfg, *, seed_no: int = 5) -> dict[str, int]:
    series = synthetic.synthetic_series(cfg, T0, DAYS * 1440, seed=seed_no)
    ids = synthetic.ensure_tags(conn, sorted(series), asset=cfg.name)
    for tag, (t, v, f) in series.items():
        q = np.zeros(len(t), dtype=np.int16)
        if tag == cfg.pollutant("SO2").tag:
            # Day 2, 06:00-09:00: a bad analyser (quality BAD), then 12:00-13:00 substituted values.
            d2 = T0 + 86400
            q[(t >= d2 + 6 * 3600) & (t < d2 + 9 * 3600)] = int(Quality.BAD)
            f = f.copy()
            f[(t >= d2 + 12 * 3600) & (t < d2 + 13 * 3600)] = int(Flag.SUBSTITUTED)
        synthetic.copy_readings(conn, ids[tag], t, v, f, q)
    return ids


def independent_daily(conn, cfg, pollutant: str, day_start: int) -> tuple[float, float, bool]:
    """Daily average, validated value and validity from the raw rows with plain Python (no emissions code)."""
    def rows(tag, lo, hi):
        with conn.cursor() as cur:
            cur.execute("SELECT extract(epoch FROM r.time)::bigint, r.value, r.quality FROM readings r "
                        "JOIN tags t ON t.id = r.tag_id WHERE t.name = %s AND r.time >= to_timestamp(%s) "
                        "AND r.time < to_timestamp(%s) ORDER BY r.time", (tag, lo, hi))
            return cur.fetchall()

    def minute_means(tag):
        acc = defaultdict(list)
        for t, v, q in rows(tag, day_start, day_start + 86400):
            if q <= 1 and v == v:
                acc[(t - day_start) // 60].append(v)
        return {m: sum(v) / len(v) for m, v in acc.items()}

    conc, o2 = minute_means(cfg.pollutant(pollutant).tag), minute_means(cfg.o2.tag)
    state_rows = rows(cfg.operating_state_tag, 0, day_start + 86400)
    ci = 0.2 * cfg.pollutant(pollutant).elv["day"] if pollutant in ("NOx", "SO2") else None
    half_hours = []
    for hh in range(48):
        n_op = n_ok = 0
        total = 0.0
        for m in range(hh * 30, hh * 30 + 30):
            t = day_start + 60 * m
            state = [v for ts, v, _ in state_rows if ts <= t + 59]
            if state and state[-1] in (0.0, 1.0, 3.0):
                continue
            n_op += 1
            if m in conc and m in o2 and o2[m] < 20:
                n_ok += 1
                total += conc[m] * (21 - 11) / (21 - o2[m])
        if n_op:
            half_hours.append((n_ok >= 2 / 3 * n_op, total / n_ok if n_ok else None))
    valid = [v for ok, v in half_hours if ok]
    n_invalid = sum(1 for ok, _ in half_hours if not ok)
    mean = sum(valid) / len(valid)
    validated = sum(max(v - ci, 0.0) for v in valid) / len(valid)
    return mean, validated, n_invalid <= 5


@pytest.mark.parametrize("dsn", ["pg_dsn", "plain_pg_dsn"])
def test_the_day_clocks_go_back_has_25_stored_hours_matching_the_raw_rows(dsn, request):
    """Europe/Helsinki, 25 October 2026 (03:00 EEST -> 02:00 EET): 25 local hours, each the mean of its one-minute
    means of the raw rows, readings on every hour boundary counted in the hour they start (time_bucket on
    TimescaleDB, date_bin on plain PostgreSQL); the day is 1500 minutes."""
    helsinki = ZoneInfo("Europe/Helsinki")
    d0, d1 = (int(datetime(2026, 10, day, tzinfo=helsinki).timestamp()) for day in (25, 26))
    cfg = StackConfig.model_validate({"name": "K", "regime": "lcp", "timezone": "Europe/Helsinki",
                                      "pollutants": [{"name": "NOx", "tag": "K.NOx", "elv": {"month": 100.0}}]})
    rng = np.random.default_rng(3)
    t = np.arange(d0, d1, 20, dtype=np.int64)
    keep = (rng.uniform(size=len(t)) > 0.5) | (t % 3600 == 0)  # random gaps, every hour boundary read
    keep &= ~((t >= d0 + 3 * 3600) & (t < d0 + 3 * 3600 + 21 * 60))  # 39 minutes of the fourth hour: invalid
    t = t[keep]
    v = rng.uniform(0, 200, len(t))
    with psycopg.connect(request.getfixturevalue(dsn), autocommit=True) as c:
        migrate(c)
        ids = synthetic.ensure_tags(c, ["K.NOx"], asset="K")
        synthetic.copy_readings(c, ids["K.NOx"], t, v, np.zeros(len(t), np.int32), np.zeros(len(t), np.int16))
        job.run_span(c, cfg, d0, d1, context="day", clock=lambda: d1 + 30 * 86400)
        with c.cursor() as cur:
            cur.execute("SELECT value, valid FROM emission_averages WHERE period = 'hour' ORDER BY period_start")
            hours = cur.fetchall()
            cur.execute("SELECT value, validated, valid, n_expected FROM emission_averages WHERE period = 'day'")
            day = cur.fetchone()
    minutes = defaultdict(list)
    for ts, x in zip(t, v, strict=True):
        minutes[(ts - d0) // 60].append(x)
    expected = []
    for h in range(25):
        means = [np.mean(minutes[m]) for m in range(60 * h, 60 * h + 60) if m in minutes]
        expected.append((float(np.mean(means)), len(means) >= 40))
    assert [valid for _, valid in hours] == [ok for _, ok in expected] and sum(ok for _, ok in expected) == 24
    assert [value for value, _ in hours] == pytest.approx([x for x, _ in expected])
    good = [x for x, ok in expected if ok]
    assert day[2] and day[3] == 1500 and day[0] == pytest.approx(np.mean(good))
    assert day[1] == pytest.approx(np.mean([max(x - 20.0, 0.0) for x in good]))  # CI 20 % of the ELV 100


def stored(conn, stack, pollutant, period, start):
    with conn.cursor() as cur:
        cur.execute("SELECT value, validated, valid, n_substituted, availability FROM emission_averages "
                    "WHERE stack = %s AND pollutant = %s AND period = %s AND period_start = to_timestamp(%s)",
                    (stack, pollutant, period, start))
        return cur.fetchone()


def count(conn, table, stack):
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table} WHERE stack = %s", (stack,))
        return cur.fetchone()[0]


def test_job_stores_averages_matching_an_independent_calculation(conn):
    cfg = synthetic.waste_stack(f"T{uuid.uuid4().hex[:8]}")
    seed(conn, cfg)
    sr = job.run_span(conn, cfg, T0, T0 + DAYS * 86400, context="day")
    assert sr.span == (T0, T0 + DAYS * 86400)
    assert sr.rows_written == count(conn, "emission_averages", cfg.name) > 0
    checked = set()
    for pol in ("NOx", "SO2"):
        for d in range(DAYS):
            day = T0 + d * 86400
            mean, validated, ok = independent_daily(conn, cfg, pol, day)
            value, val_db, valid, _, _ = stored(conn, cfg.name, pol, "day", day)
            assert valid is ok
            assert value == pytest.approx(mean, rel=1e-9), (pol, d)
            if ok:
                assert val_db == pytest.approx(validated, rel=1e-9), (pol, d)
            else:
                assert val_db is None  # an invalid day has no validated value
            checked.add(ok)
    assert checked == {True, False}  # the synthetic outages invalidate at least one day
    # Substituted readings (flag set upstream) are counted into the day; BAD readings are not valid data.
    _, _, _, n_sub, avail = stored(conn, cfg.name, "SO2", "day", T0 + 86400)
    assert n_sub == 60 and avail < 0.9


def test_recomputing_is_idempotent_and_late_data_corrects(conn):
    cfg = synthetic.waste_stack(f"T{uuid.uuid4().hex[:8]}")
    ids = seed(conn, cfg)
    job.run_span(conn, cfg, T0, T0 + DAYS * 86400, context="day")
    before = {t: count(conn, t, cfg.name) for t in ("emission_averages", "emission_events", "emission_compliance")}
    job.run_span(conn, cfg, T0, T0 + DAYS * 86400, context="day")
    assert {t: count(conn, t, cfg.name) for t in before} == before
    # Late data: a high NOx half-hour arrives for a period that had none (an analyser outage or not).
    hh = T0 + 2 * 86400 + 20 * 3600
    with conn.cursor() as cur:
        cur.execute("DELETE FROM readings WHERE tag_id = %s AND time >= to_timestamp(%s) AND time < to_timestamp(%s)",
                    (ids[cfg.pollutant("NOx").tag], hh, hh + 1800))
    synthetic.copy_readings(conn, ids[cfg.pollutant("NOx").tag], hh + 60 * np.arange(30), np.full(30, 900.0))
    job.run_span(conn, cfg, T0, T0 + DAYS * 86400, context="day")
    with conn.cursor() as cur:
        cur.execute("SELECT rule, breach, provisional FROM emission_events WHERE stack = %s AND pollutant = 'NOx' "
                    "AND period = 'half_hour' AND period_start = to_timestamp(%s)", (cfg.name, hh))
        # Over column A: judged with its alternative (97 % within column B) when the year is complete.
        assert ("wi_half_hour_a", False, True) in cur.fetchall()
    # ... and when it is corrected again, the event goes away.
    with conn.cursor() as cur:
        cur.execute("UPDATE readings SET value = 100 WHERE tag_id = %s AND time >= to_timestamp(%s) "
                    "AND time < to_timestamp(%s)", (ids[cfg.pollutant("NOx").tag], hh, hh + 1800))
    job.run_span(conn, cfg, T0, T0 + DAYS * 86400, context="day")
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM emission_events WHERE stack = %s AND period_start = to_timestamp(%s) "
                    "AND rule = 'wi_half_hour_a'", (cfg.name, hh))
        assert cur.fetchone()[0] == 0


def test_qal3_checks_are_stored(conn):
    name = f"T{uuid.uuid4().hex[:8]}"
    cfg = synthetic.waste_stack(name, qal3=[{"analyser": "NOx", "zero_tag": f"{name}.NOx.zero", "s_ams": 1.0}])
    seed(conn, cfg)
    ids = synthetic.ensure_tags(conn, [f"{name}.NOx.zero"])
    synthetic.copy_readings(conn, ids[f"{name}.NOx.zero"], T0 + 86400 * np.arange(DAYS), np.array([0.1, 0.3, 3.5]))
    sr = job.run_span(conn, cfg, T0, T0 + DAYS * 86400, context="day")
    assert "drift_action" in sr.qal3[("NOx", "zero")][-1].alarms
    with conn.cursor() as cur:
        cur.execute("SELECT alarms FROM emission_qal3_checks WHERE stack = %s ORDER BY time", (name,))
        # 3.5 s_AMS is also past EN 14181's CUSUM decision interval at once: 3.5 - 0.501 = 2.999 > 2.85.
        assert [r[0] for r in cur.fetchall()] == [[], [], ["drift_action", "cusum_up"]]


def test_a_new_span_gas_does_not_rejudge_the_checks_made_with_the_old_one(conn):
    """A span gas cylinder of 100 (analyser units) is replaced by one of 80 and ``span_reference`` follows. The checks
    made with the old cylinder were deviations from 100 (0.2, -0.1, 0.1): recomputing them against 80 made them
    +20 = 20 s_AMS (drift_action on every past check) and the first check on the new gas (80.1: +0.1) a moving range
    of ~20 s_AMS (precision: status "action") although the analyser never drifted."""
    name = f"T{uuid.uuid4().hex[:8]}"
    q3 = {"analyser": "NOx", "span_tag": f"{name}.NOx.span", "span_reference": 100.0, "s_ams": 1.0}
    cfg = synthetic.waste_stack(name, qal3=[q3])
    seed(conn, cfg)
    ids = synthetic.ensure_tags(conn, [f"{name}.NOx.span"])
    synthetic.copy_readings(conn, ids[f"{name}.NOx.span"], T0 + 86400 * np.arange(2) + 3600, np.array([100.2, 99.9]))
    job.run_span(conn, cfg, T0, T0 + 2 * 86400, context="day")
    synthetic.copy_readings(conn, ids[f"{name}.NOx.span"], np.array([T0 + 2 * 86400 + 3600]), np.array([80.1]))
    new = synthetic.waste_stack(name, qal3=[{**q3, "span_reference": 80.0}])
    sr = job.run_span(conn, new, T0 + 2 * 86400, T0 + 3 * 86400, context="day")
    checks = sr.qal3[("NOx", "span")]
    assert [c.reference for c in checks] == [100.0, 100.0, 80.0]
    assert [c.deviation for c in checks] == pytest.approx([0.2, -0.1, 0.1])
    assert [c.alarms for c in checks] == [(), (), ()]
    with conn.cursor() as cur:
        cur.execute("SELECT reference, deviation, alarms FROM emission_qal3_checks WHERE stack = %s ORDER BY time",
                    (name,))
        rows = cur.fetchall()
    assert [r[0] for r in rows] == [100.0, 100.0, 80.0] and [r[2] for r in rows] == [[], [], []]
    assert [r[1] for r in rows] == pytest.approx([0.2, -0.1, 0.1])


def test_qal3_charts_keep_their_start_when_retention_removes_the_first_check_readings(conn):
    """s_AMS estimated from the first five zero checks (steady, moving ranges ~0.1), then ten noisier ones. Retention
    (`database.retention_days`) removes the readings of the first five: the chart was computed from the readings
    alone, so it started at the sixth, estimated s_AMS from noisier checks (0.089 -> 1.17), charted the next five as
    "estimating" again and rewrote every stored check's z and alarms (the last check, 1.2 = 13.5 s_AMS, lost its
    drift_action). The checks charted before the first reading left now stay the start of the chart: the stored
    statistics do not move."""
    name = f"T{uuid.uuid4().hex[:8]}"
    tag = f"{name}.NOx.zero"
    cfg = synthetic.waste_stack(name, qal3=[{"analyser": "NOx", "zero_tag": tag, "n_initial": 5}])
    ids = synthetic.ensure_tags(conn, [tag])
    values = np.array([0.0, 0.1, 0.0, 0.1, 0.0, 0.8, -0.6, 0.7, -0.5, 0.9, -0.7, 0.6, -0.8, 0.7, 1.2])
    synthetic.copy_readings(conn, ids[tag], T0 + 3600 * np.arange(len(values)), values)

    def charted() -> list[tuple]:
        job.run_span(conn, cfg, T0, T0 + 86400, context="day")
        with conn.cursor() as cur:
            cur.execute("SELECT s_ams, z, cusum_pos, alarms FROM emission_qal3_checks WHERE stack = %s ORDER BY time",
                        (name,))
            return cur.fetchall()

    before = charted()
    assert len(before) == 15 and before[0][0] == pytest.approx(0.1 / 1.128)
    assert "drift_action" in before[-1][3]
    with conn.cursor() as cur:  # what retention does: the oldest readings go
        cur.execute("DELETE FROM readings WHERE tag_id = %s AND time < to_timestamp(%s)", (ids[tag], T0 + 5 * 3600))
        assert cur.rowcount == 5
    after = charted()
    assert len(after) == 15
    assert [r[0] for r in after] == pytest.approx([r[0] for r in before])
    assert [r[1] for r in after[5:]] == pytest.approx([r[1] for r in before[5:]])
    assert [r[2:] for r in after] == [r[2:] for r in before]


SITE = """
[[stacks]]
name = "{name}"
regime = "waste_incineration"
reference_o2_percent = 11.0
ten_min = true
operating_state_tag = "{name}.state"
excluded_states = [0, 1, 3]
o2 = {{ tag = "{name}.O2" }}
h2o = {{ value = 15.0 }}
flow = {{ tag = "{name}.flow", moisture = "dry", conditions = "standard" }}
pollutants = [
  {{ name = "NOx", tag = "{name}.NOx", elv = {{ day = 200.0, half_hour_100 = 400.0, half_hour_97 = 200.0 }} }},
  {{ name = "SO2", tag = "{name}.SO2", elv = {{ day = 50.0, half_hour_100 = 200.0, half_hour_97 = 50.0 }} }},
  {{ name = "CO", tag = "{name}.CO", elv = {{ day = 50.0, half_hour_95 = 100.0, ten_min_95 = 150.0 }} }},
  {{ name = "dust", tag = "{name}.dust", elv = {{ day = 10.0, half_hour_100 = 30.0, half_hour_97 = 10.0 }} }},
  {{ name = "TOC", tag = "{name}.TOC", elv = {{ day = 10.0, half_hour_100 = 20.0, half_hour_97 = 10.0 }} }},
  {{ name = "HCl", tag = "{name}.HCl", elv = {{ day = 10.0, half_hour_100 = 60.0, half_hour_97 = 10.0 }} }},
]
"""


def daily_report(site: Path, pg_dsn: str, name: str, day: str, out: Path) -> str:
    """`valvoja emissions report --day` of stack ``name`` into ``out``: the HTML written."""
    proc = subprocess.run([sys.executable, "-m", "emissions.cli", "report", "--config", str(site), "--db", pg_dsn,
                           "--stack", name, "--day", day, "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return (out / f"emissions_{name}_{day}.html").read_text()


def test_report_command_writes_html_and_csv_matching_the_raw_rows(conn, pg_dsn, tmp_path):
    name = f"T{uuid.uuid4().hex[:8]}"
    cfg = synthetic.waste_stack(name)
    seed(conn, cfg)
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(name=name))
    out = tmp_path / "out"
    html = daily_report(site, pg_dsn, name, "2025-03-02", out)
    assert "Emission report" in html and "Substituted periods" in html and cfg.fingerprint() in html
    with (out / f"emissions_{name}_2025-03-02.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    day = {r["pollutant"]: r for r in rows if r["period"] == "day"}
    assert set(day) == {"NOx", "SO2", "CO", "dust", "TOC", "HCl"}
    for pol in ("NOx", "SO2"):
        mean, validated, ok = independent_daily(conn, cfg, pol, T0 + 86400)
        assert float(day[pol]["value_mg_nm3"]) == pytest.approx(mean, abs=1e-4)
        assert (day[pol]["status"] == "valid") is ok
        if ok:
            assert float(day[pol]["validated_mg_nm3"]) == pytest.approx(validated, abs=1e-4)
    assert int(day["SO2"]["n_substituted"]) == 60
    assert len([r for r in rows if r["period"] == "half_hour" and r["pollutant"] == "NOx"]) == 48
    assert (out / f"emissions_{name}_2025-03-02_events.csv").exists()


def test_report_command_explains_a_bad_request(pg_dsn, tmp_path):
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(name="X1"))
    proc = subprocess.run([sys.executable, "-m", "emissions.cli", "report", "--config", str(site), "--db", pg_dsn,
                           "--stack", "nope", "--day", "2025-03-02"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "no stack 'nope'" in proc.stderr and "X1" in proc.stderr


def test_report_command_refuses_a_period_no_hour_of_which_has_ended(pg_dsn, tmp_path):
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(name="X1"))
    proc = subprocess.run([sys.executable, "-m", "emissions.cli", "report", "--config", str(site), "--db", pg_dsn,
                           "--stack", "X1", "--month", "2099-01", "--out", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 1 and "stack X1: nothing to compute from 2099-01-01" in proc.stderr


async def test_periodic_job_keeps_the_current_month_stored(conn, pg_dsn):
    import asyncio
    import time

    name = f"T{uuid.uuid4().hex[:8]}"
    cfg = synthetic.waste_stack(name, operating_state_tag=None, excluded_states=[])
    now = int(time.time()) // 60 * 60
    ids = synthetic.ensure_tags(conn, [p.tag for p in cfg.pollutants] + [cfg.o2.tag, cfg.flow.tag], asset=name)
    t = now - 60 * np.arange(1, 181)[::-1]
    for tag in ids:
        synthetic.copy_readings(conn, ids[tag], t, np.full(len(t), 9.0 if tag == cfg.o2.tag else 20.0))
    stop = asyncio.Event()
    task = asyncio.create_task(job.run_periodic(pg_dsn, [cfg], stop, interval_s=0.2, full_interval_s=3600))
    try:
        for _ in range(300):
            await asyncio.sleep(0.1)
            if count(conn, "emission_runs", name) >= 2:  # the year, then the month
                break
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    with conn.cursor() as cur:
        cur.execute("SELECT value FROM emission_averages WHERE stack = %s AND pollutant = 'NOx' AND period = 'hour'"
                    " AND period_start = to_timestamp(%s)", (name, (now - 7200) // 3600 * 3600))
        (value,) = cur.fetchone()
    assert value == pytest.approx(20.0 * 10 / 12)  # 20 at 9 % O2 -> 11 % reference


def test_report_pdf_where_chromium_is_installed(conn, pg_dsn, tmp_path):
    import shutil

    if not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no headless Chromium on this machine (apt-get install chromium): PDF is optional")
    name = f"T{uuid.uuid4().hex[:8]}"
    seed(conn, synthetic.waste_stack(name))
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(name=name))
    proc = subprocess.run([sys.executable, "-m", "emissions.cli", "report", "--config", str(site), "--db", pg_dsn,
                           "--stack", name, "--month", "2025-03", "--out", str(tmp_path), "--pdf"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    pdf = tmp_path / f"emissions_{name}_2025-03.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000


def lcp_helsinki(name: str) -> StackConfig:
    return StackConfig.model_validate({"name": name, "regime": "lcp", "timezone": "Europe/Helsinki",
                                       "pollutants": [{"name": "NOx", "tag": f"{name}.NOx", "elv": {"month": 200.0}}]})


def seed_day(conn, cfg: StackConfig, day: str, value: float) -> tuple[int, int]:
    start, end = periods.parse_day(day, cfg.timezone)
    ids = synthetic.ensure_tags(conn, [cfg.pollutant("NOx").tag], asset=cfg.name)
    t = np.arange(start, end, 60)
    synthetic.copy_readings(conn, ids[cfg.pollutant("NOx").tag], t, np.full(len(t), value))
    return start, end


def judged(conn, stack: str, rule: str) -> tuple[list, list]:
    """(period start, breach, provisional) of the rule's events; (window start, passed, provisional) of its results."""
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM period_start)::bigint, breach, provisional FROM emission_events "
                    "WHERE stack = %s AND rule = %s ORDER BY period_start", (stack, rule))
        events = cur.fetchall()
        cur.execute("SELECT extract(epoch FROM window_start)::bigint, passed, provisional FROM emission_compliance "
                    "WHERE stack = %s AND rule = %s ORDER BY window_start", (stack, rule))
        return events, cur.fetchall()


def test_a_running_day_is_stored_provisional_and_judged_when_it_ends(conn):
    """The periodic run at 03:20 covers the day up to 03:00: its three hours at 280 (validated 240, over 110 % of
    the ELV 200) make a valid day so far, stored as a provisional exceedance; the run after midnight judges it."""
    cfg = lcp_helsinki(f"T{uuid.uuid4().hex[:8]}")
    day, next_day = seed_day(conn, cfg, "2026-03-10", 280.0)
    month = periods.parse_month("2026-03", cfg.timezone)[0]
    now = day + 3 * 3600 + 1200
    sr = job.run_span(conn, cfg, now - 1, now, context="month", whole_days=False, clock=lambda: now)  # as _run_once
    assert sr.span == (month, day + 3 * 3600)
    assert judged(conn, cfg.name, "lcp_daily_110") == ([(day, False, True)], [(month, False, True)])
    assert not any(e.breach for e in sr.events)
    later = next_day + 1200
    job.run_span(conn, cfg, later - 1, later, context="month", whole_days=False, clock=lambda: later)
    assert judged(conn, cfg.name, "lcp_daily_110") == ([(day, True, False)], [(month, False, False)])


async def test_periodic_job_computes_the_last_hour_of_the_year_once(conn, pg_dsn):
    """The run at 23:50 on 31 December covers the year up to 23:00; the first runs of the new year start from
    1 January: the year just ended is computed once to its end (its last hour, last day and yearly windows)."""
    import asyncio

    cfg = lcp_helsinki(f"T{uuid.uuid4().hex[:8]}")
    day, new_year = seed_day(conn, cfg, "2025-12-31", 300.0)
    year = periods.year_of(day, cfg.timezone)[0]
    stop = asyncio.Event()
    times = iter([new_year - 600, new_year + 300, new_year + 600])

    def clock() -> float:
        t = next(times)
        if t == new_year + 600:
            stop.set()  # the third run is the last
        return t

    await job.run_periodic(pg_dsn, [cfg], stop, interval_s=0.01, full_interval_s=3600, clock=clock)
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM span_start)::bigint, extract(epoch FROM span_end)::bigint "
                    "FROM emission_runs WHERE stack = %s ORDER BY id", (cfg.name,))
        assert cur.fetchall() == [(year, new_year - 3600), (year, new_year)]  # the new year: nothing closed yet
    value = stored(conn, cfg.name, "NOx", "hour", new_year - 3600)
    assert value is not None and value[0] == pytest.approx(300.0)
    assert judged(conn, cfg.name, "lcp_daily_110")[0] == [(day, True, False)]
    assert judged(conn, cfg.name, "lcp_hourly_95_200")[1] == [(year, True, False)]


def test_after_a_restart_the_job_finishes_the_year_it_last_computed(conn, pg_dsn):
    """The gateway stopped after its 23:50 run on 31 December and starts again in January: where the previous run
    ended is read from emission_runs, and the year before is computed to its end once."""
    cfg = lcp_helsinki(f"T{uuid.uuid4().hex[:8]}")
    day, new_year = seed_day(conn, cfg, "2025-12-31", 300.0)
    job.run_span(conn, cfg, new_year - 601, new_year - 600, whole_days=False, clock=lambda: new_year - 600)
    assert stored(conn, cfg.name, "NOx", "hour", new_year - 3600) is None
    assert job._run_once(pg_dsn, cfg, new_year + 3 * 86400 + 300, "year", None) == new_year + 3 * 86400
    assert stored(conn, cfg.name, "NOx", "hour", new_year - 3600)[0] == pytest.approx(300.0)
    assert judged(conn, cfg.name, "lcp_daily_110")[0] == [(day, True, False)]


def runs_from(conn, stack: str, start: int) -> list[tuple[int, int]]:
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM span_start)::bigint, extract(epoch FROM span_end)::bigint "
                    "FROM emission_runs WHERE stack = %s AND span_start = to_timestamp(%s) ORDER BY id", (stack, start))
        return cur.fetchall()


def test_a_report_of_an_earlier_month_does_not_send_the_job_back(conn, pg_dsn):
    """The job finished 2025 (the year-end run) and went on into 2026; then `valvoja emissions report --month
    2025-06` stored the newest emission_runs row, ending on 1 July 2025. A restart must not take that for where the
    job stopped: 2025 is not computed again."""
    cfg = lcp_helsinki(f"T{uuid.uuid4().hex[:8]}")
    day, new_year = seed_day(conn, cfg, "2025-12-31", 300.0)
    year = periods.year_of(day, cfg.timezone)[0]
    job._run_once(pg_dsn, cfg, new_year - 600, "year", None)
    job._run_once(pg_dsn, cfg, new_year + 10 * 86400 + 300, "year", new_year - 3600)
    june, july = periods.parse_month("2025-06", cfg.timezone)
    job.run_span(conn, cfg, june, july, clock=lambda: new_year + 10 * 86400 + 900)  # as cmd_report
    before = runs_from(conn, cfg.name, year)
    assert before == [(year, new_year - 3600), (year, new_year), (year, july)]
    job._run_once(pg_dsn, cfg, new_year + 11 * 86400 + 300, "year", None)
    assert runs_from(conn, cfg.name, year) == before


def test_a_report_of_a_later_month_does_not_stand_for_the_year_before(conn, pg_dsn):
    """The gateway stopped after its 23:50 run on 31 December; in February, before it starts again, `valvoja
    emissions report --month 2026-01` stores a run of January. The restart must still finish 2025: its last hour
    and last day are judged (the report covered 2026 only)."""
    cfg = lcp_helsinki(f"T{uuid.uuid4().hex[:8]}")
    day, new_year = seed_day(conn, cfg, "2025-12-31", 300.0)
    job._run_once(pg_dsn, cfg, new_year - 600, "year", None)
    january, february = periods.parse_month("2026-01", cfg.timezone)
    job.run_span(conn, cfg, january, february, clock=lambda: february + 2 * 86400)  # as cmd_report
    assert stored(conn, cfg.name, "NOx", "hour", new_year - 3600) is None
    job._run_once(pg_dsn, cfg, february + 2 * 86400 + 300, "year", None)
    assert stored(conn, cfg.name, "NOx", "hour", new_year - 3600)[0] == pytest.approx(300.0)
    assert judged(conn, cfg.name, "lcp_daily_110")[0] == [(day, True, False)]


def stored_year(conn, stack: str, year: int) -> tuple:
    """What the year's own computation stored: the year average, its rule windows and its events."""
    with conn.cursor() as cur:
        cur.execute("SELECT value, validated, n_valid, sub_invalid FROM emission_averages WHERE stack = %s"
                    " AND period = 'year' AND period_start = to_timestamp(%s)", (stack, year))
        average = cur.fetchall()
        cur.execute("SELECT rule, extract(epoch FROM window_start)::bigint, n_valid, n_over, passed, provisional"
                    " FROM emission_compliance WHERE stack = %s AND window_start = to_timestamp(%s) ORDER BY 1",
                    (stack, year))
        rules = cur.fetchall()
        cur.execute("SELECT rule, kind, extract(epoch FROM period_start)::bigint, value, breach, provisional"
                    " FROM emission_events WHERE stack = %s ORDER BY 1, 2, 3", (stack,))
        return average, rules, cur.fetchall()


def test_a_report_or_compute_of_a_past_period_leaves_what_runs_on_more_data_judged(conn):
    """2025 was computed to its end: one day (10 March) at 500 mg/Nm³, its 24 hours over 200 % of the ELV, so the
    year's hourly window failed for good. A report of February or March 2025 (computed from 1 January to the end of
    that month) and a `compute` of 10 March hold only part of the year: they must not replace the year's average,
    its windows or the final judgement of the hours with figures from their part (a February report left the year
    without its average and its failed window)."""
    cfg = lcp_helsinki(f"T{uuid.uuid4().hex[:8]}")
    day, _ = seed_day(conn, cfg, "2025-03-10", 500.0)
    year, new_year = periods.year_of(day, cfg.timezone)
    later = new_year + 40 * 86400
    job.run_span(conn, cfg, year, new_year, clock=lambda: later)  # the year-end run
    before = stored_year(conn, cfg.name, year)
    assert before[0][0][0] == pytest.approx(500.0)
    assert ("lcp_hourly_95_200", year, 24, 24, False, False) in before[1]
    assert ("lcp_hourly_95_200", "exceedance", day, 460.0, False, False) in before[2]
    for month in ("2025-02", "2025-03"):
        job.run_span(conn, cfg, *periods.parse_month(month, cfg.timezone), clock=lambda: later)  # as cmd_report
        assert stored_year(conn, cfg.name, year) == before, month
    job.run_span(conn, cfg, day, day + 86400, context="day", clock=lambda: later)  # as cmd_compute
    assert stored_year(conn, cfg.name, year) == before


async def test_periodic_job_with_the_database_away_retries_every_stack(caplog):
    """Two stacks and no database: each run fails with OperationalError, is logged and retried at the next
    interval. The first failure used to become the second stack's averaging period ("failed") and end the job
    with a KeyError."""
    import asyncio

    stacks = [lcp_helsinki(f"T{uuid.uuid4().hex[:8]}") for _ in range(2)]
    stop = asyncio.Event()
    rounds = iter(range(3))

    def clock() -> float:
        if next(rounds) == 2:
            stop.set()
        return time_now()

    await asyncio.wait_for(job.run_periodic("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2", stacks, stop,
                                            interval_s=0.01, clock=clock), timeout=60)
    retries = [r for r in caplog.records if getattr(r, "event", "") == "emissions_job_retry"]
    assert [r.stack for r in retries] == [s.name for s in stacks] * 3


async def test_a_stack_that_fails_is_logged_once_counted_and_does_not_stop_the_others(conn, pg_dsn, caplog,
                                                                                       monkeypatch):
    """A stack whose run raised anything but OperationalError (a bug, data the code did not foresee) ended the whole
    job: every stack's averages went stale, with one log line. Now that stack is logged once, counted, retried at the
    next interval (and logged again when it computes), and the other stacks go on; /metrics says when each stack was
    last computed. The failure is made inside the averaging (as a bug there would be), on a real database."""
    import asyncio
    import logging
    import time

    from edge.metrics import Metrics
    from emissions import averages

    now = int(time.time()) // 60 * 60
    good, bad = (synthetic.waste_stack(f"T{uuid.uuid4().hex[:8]}", operating_state_tag=None, excluded_states=[])
                 for _ in range(2))
    for cfg in (good, bad):
        ids = synthetic.ensure_tags(conn, [p.tag for p in cfg.pollutants] + [cfg.o2.tag, cfg.flow.tag],
                                    asset=cfg.name)
        t = now - 60 * np.arange(1, 181)[::-1]
        for tag in ids:
            synthetic.copy_readings(conn, ids[tag], t, np.full(len(t), 9.0 if tag == cfg.o2.tag else 20.0))
    compute, rounds, broken = averages.compute, iter(range(4)), [True]

    def failing_compute(cfg, primary):
        if cfg.name == bad.name and broken[0]:
            raise ZeroDivisionError("float division by zero")
        return compute(cfg, primary)

    monkeypatch.setattr(averages, "compute", failing_compute)
    stop, metrics = asyncio.Event(), Metrics()

    def clock() -> float:
        r = next(rounds)
        broken[0] = r < 3  # three rounds fail, the fourth computes again
        if r == 3:
            stop.set()
        return time.time()

    caplog.set_level(logging.INFO, logger="emissions")
    await asyncio.wait_for(job.run_periodic(pg_dsn, [good, bad], stop, interval_s=0.01, metrics=metrics,
                                            clock=clock), timeout=240)
    sample = metrics.registry.get_sample_value
    assert sample("valvoja_emissions_runs_total", {"stack": good.name, "result": "ok"}) == 4
    assert sample("valvoja_emissions_runs_total", {"stack": bad.name, "result": "error"}) == 3
    assert sample("valvoja_emissions_runs_total", {"stack": bad.name, "result": "ok"}) == 1
    assert sample("valvoja_emissions_last_success_timestamp_seconds", {"stack": good.name}) >= now
    assert sample("valvoja_emissions_revisions_total", {"stack": good.name}) == 0
    errors = [r for r in caplog.records if getattr(r, "event", "") == "emissions_job_error"]
    assert [r.stack for r in errors] == [bad.name] and "ZeroDivisionError" in caplog.text
    assert [r.stack for r in caplog.records if getattr(r, "event", "") == "emissions_job_recovered"] == [bad.name]
    assert count(conn, "emission_runs", good.name) >= 4 and count(conn, "emission_runs", bad.name) >= 1


async def test_a_qal3_check_out_of_control_is_logged_and_counted_once(conn, pg_dsn, caplog):
    """A zero check at 3.5 s_AMS (drift_action, cusum_up) was stored and shown in the next report's QAL3 table, and
    nowhere else: no log line, no metric, no console view, while EN 14181 asks for the analyser to be seen to. The
    periodic job now logs it (qal3_alarm, naming the stack, analyser, check and alarms) and counts it, once: the
    runs after it find it stored."""
    import asyncio
    import logging
    import time

    from edge.metrics import Metrics

    name = f"T{uuid.uuid4().hex[:8]}"
    tag = f"{name}.NOx.zero"
    cfg = synthetic.waste_stack(name, operating_state_tag=None, excluded_states=[],
                                qal3=[{"analyser": "NOx", "zero_tag": tag, "s_ams": 1.0}])
    hour = int(time.time()) // 3600 * 3600
    ids = synthetic.ensure_tags(conn, [tag])
    synthetic.copy_readings(conn, ids[tag], np.array([hour - 3 * 3600, hour - 2 * 3600]), np.array([0.1, 3.5]))
    stop, metrics, rounds = asyncio.Event(), Metrics(), iter(range(3))

    def clock() -> float:
        if next(rounds) == 2:
            stop.set()
        return time.time()

    caplog.set_level(logging.INFO, logger="emissions")
    await asyncio.wait_for(job.run_periodic(pg_dsn, [cfg], stop, interval_s=0.01, metrics=metrics, clock=clock),
                           timeout=240)
    said = [r for r in caplog.records if getattr(r, "event", "") == "qal3_alarm"]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert (said[0].stack, said[0].analyser, said[0].kind, said[0].alarms) == (name, "NOx", "zero",
                                                                               ["drift_action", "cusum_up"])
    assert "3.5 = 3.50 s_AMS" in said[0].getMessage()
    assert metrics.registry.get_sample_value("valvoja_emissions_qal3_alarms_total", {"stack": name}) == 1
    assert metrics.registry.get_sample_value("valvoja_emissions_runs_total", {"stack": name, "result": "ok"}) == 3


def test_qal3_checks_that_cannot_be_judged_are_logged(conn, caplog):
    """Twenty zero checks of exactly 0.0 leave nothing to estimate s_AMS from: the 21st, 10 units off, was stored
    unjudged and nothing said so. The run that charts it logs qal3_not_judged (once: the next run finds it stored)."""
    import logging

    name = f"T{uuid.uuid4().hex[:8]}"
    tag = f"{name}.NOx.zero"
    cfg = synthetic.waste_stack(name, qal3=[{"analyser": "NOx", "zero_tag": tag, "n_initial": 20}])
    ids = synthetic.ensure_tags(conn, [tag])
    synthetic.copy_readings(conn, ids[tag], T0 + 3600 * np.arange(21), np.r_[np.zeros(20), 10.0])
    caplog.set_level(logging.WARNING, logger="emissions")
    for _ in range(2):
        sr = job.run_span(conn, cfg, T0, T0 + 86400, context="day")
    said = [r for r in caplog.records if getattr(r, "event", "") == "qal3_not_judged"]
    assert len(said) == 1 and "set qal3.s_ams" in said[0].getMessage() and "deviating 10" in said[0].getMessage()
    from emissions import qal3

    assert qal3.state(cfg.qal3[0], "zero", sr.qal3[("NOx", "zero")]).status == "no_spread"


def time_now() -> float:
    import time

    return time.time()


def test_report_states_the_level_of_the_pems_interval_of_the_cross_check(conn, pg_dsn, tmp_path):
    """The cross-check line said "outside the PEMS interval" without its level, and the lower / upper readings do
    not carry one: the report takes it from the PEMS predictions stored in the period (live PEMS stores each with
    its readings), and says when there is none."""
    name = f"T{uuid.uuid4().hex[:8]}"
    cfg = synthetic.waste_stack(name)
    seed(conn, cfg)
    pems_tag = f"{name}.NOx.pems"
    day2 = T0 + 86400
    with conn.cursor() as cur:  # as emissions.pems_live stores them (kind pems, details.pems_tag)
        cur.executemany(
            "INSERT INTO predictions (time, model_id, model_version, asset, kind, target, value, lower, upper, "
            "coverage, details) VALUES (to_timestamp(%s), 'pems-nox', 'abc', %s, 'pems', 'NOx', 150, 120, 180, 0.9, "
            "jsonb_build_object('pems_tag', %s::text))", [(day2 + 3600 * h, name, pems_tag) for h in range(24)])
    site = tmp_path / "site.toml"
    pems = f'pems = {{ tag = "{pems_tag}", lower_tag = "{name}.NOx.lo", upper_tag = "{name}.NOx.hi" }}'
    nox = f'name = "NOx", tag = "{name}.NOx", '
    site.write_text(SITE.format(name=name).replace(nox, nox + pems + ", "))
    out = tmp_path / "out"
    html = daily_report(site, pg_dsn, name, "2025-03-02", out)
    assert "outside the PEMS interval (90 % interval, as stored with the PEMS predictions)" in html
    import tomllib

    linked = StackConfig.model_validate(tomllib.loads(site.read_text())["stacks"][0])
    assert job.pems_levels(conn, linked, day2, day2 + 86400) == {"NOx": [0.9]}
    assert job.pems_levels(conn, linked, day2 + 86400, day2 + 2 * 86400) == {"NOx": []}, "none stored on day 3"


def test_two_gateways_storing_the_same_stack_at_once_both_succeed(conn, pg_dsn):
    """A redundant pair of gateways runs the job for the same stack. Both replace the span's averages (DELETE, then
    INSERT): the second transaction's DELETE did not see the first's uncommitted rows, so its INSERT waited on their
    key and then failed with a UniqueViolation once the first committed (that gateway's run logged as an error, every
    run that overlapped). Now the writes of one stack take turns (an advisory lock): the second replaces the first."""
    import threading

    from emissions import store

    cfg = synthetic.waste_stack(f"T{uuid.uuid4().hex[:8]}")
    seed(conn, cfg)
    sr = job.run_span(conn, cfg, T0, T0 + 86400, context="day", write=False)
    n = sum(int(((av.start >= sr.span[0]) & (av.start < sr.span[1])).sum())
            for levels in sr.result.averages.values() for av in levels.values())
    errors: list[BaseException] = []
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        with conn.transaction():  # the first gateway's write, not committed yet
            store.write_result(conn, cfg, sr.result, sr.span, sr.rules, sr.events)

            def second() -> None:
                try:
                    store.write_result(other, cfg, sr.result, sr.span, sr.rules, sr.events)
                except BaseException as exc:  # reported by the assertion below
                    errors.append(exc)

            t = threading.Thread(target=second)
            t.start()
            t.join(1.0)
            assert t.is_alive()  # waits for the first
        t.join(30)
    assert not errors, errors
    assert count(conn, "emission_averages", cfg.name) == n > 0
    assert count(conn, "emission_runs", cfg.name) == 2


def test_the_periodic_job_waits_for_the_last_readings_of_an_hour_before_closing_it(conn, pg_dsn):
    """The periodic run's phase is where the gateway started: a run at 12:00:05 took the hour 11:00-12:00 as closed
    while its last readings (11:59:50, every 10 s) were still on their way (collector batch, spool, forwarder). The
    next run found them: a revision of a closed hour recorded, logged as a warning and noted in the day's report,
    for readings that were merely in flight. The job now computes up to the last whole hour of its clock less
    `job.SETTLE_S`: the hour is closed at the first run after 12:02, with all of its readings."""
    cfg = lcp_helsinki(f"T{uuid.uuid4().hex[:8]}")
    hour = periods.parse_day("2026-03-10", cfg.timezone)[0] + 12 * 3600
    tag = cfg.pollutant("NOx").tag
    ids = synthetic.ensure_tags(conn, [tag], asset=cfg.name)
    t = np.arange(hour - 2 * 3600, hour, 10)
    synthetic.copy_readings(conn, ids[tag], t[:-1], np.full(len(t) - 1, 100.0))
    job._run_once(pg_dsn, cfg, hour + 5, "month", None)
    synthetic.copy_readings(conn, ids[tag], t[-1:], np.array([460.0]))  # in flight at 12:00:05, stored at 12:00:07
    job._run_once(pg_dsn, cfg, hour + 305, "month", None)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM emission_revisions WHERE stack = %s", (cfg.name,))
        assert cur.fetchone()[0] == 0
    assert stored(conn, cfg.name, "NOx", "hour", hour - 3600)[0] == pytest.approx(100.0 + 360.0 / 360)


def test_runs_of_one_stack_take_turns_so_the_later_ones_data_stays(conn, pg_dsn):
    """Two gateways' runs of one stack overlapping: one read the readings, the other read them and a reading more and
    stored first; the first then stored its older result over it (and a revision of each closed average the reading
    had changed, undone by the next run). A run now holds the stack's lock from before it reads until it has stored:
    the run that waited reads what the other's stored results came from, or later."""
    import threading

    from emissions import store

    cfg = lcp_helsinki(f"T{uuid.uuid4().hex[:8]}")
    day, _ = seed_day(conn, cfg, "2026-03-10", 100.0)
    hour = day + 3600
    ids = store.tag_ids(conn, [cfg.pollutant("NOx").tag])
    later = day + 86400 + 3600
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtext(%s))", ("valvoja.emissions:" + cfg.name,))  # a run going on
        t = threading.Thread(target=job.run_span, args=(conn, cfg, day, day + 86400),
                             kwargs={"context": "day", "clock": lambda: later})
        t.start()
        t.join(2.0)
        assert t.is_alive()
        with other.cursor() as cur:  # the other run's data: 11 minutes of its hour at 700 mg/Nm3
            cur.execute("UPDATE readings SET value = 700 WHERE tag_id = %s AND time >= to_timestamp(%s)"
                        " AND time < to_timestamp(%s)", (ids[cfg.pollutant("NOx").tag], hour, hour + 660))
        other.execute("SELECT pg_advisory_unlock(hashtext(%s))", ("valvoja.emissions:" + cfg.name,))
        t.join(60)
    assert stored(conn, cfg.name, "NOx", "hour", hour)[0] == pytest.approx(100.0 + 11 * 600 / 60)


def test_a_gateway_restarted_inside_a_half_hour_starts_its_live_averages_from_the_stored_readings(conn):
    """Restarted at 12:20 inside a half-hour whose first 20 minutes were at 600 mg/Nm³ (stored), the live monitor
    averaged only what came after: 100 for 12:20-12:30, a running half-hour of 100 and no alert, while the half-hour
    (433.3) is over its limit of 400. Seeded from the stored readings of the running day it averages all 30 minutes
    and alerts; the minutes it took from the database are not counted again when their readings come live."""
    from datetime import datetime as dt

    from edge.records import Alert, Reading
    from emissions.live import LiveEmissions

    name = f"T{uuid.uuid4().hex[:8]}"
    cfg = StackConfig.model_validate({"name": name, "regime": "waste_incineration", "pollutants": [
        {"name": "NOx", "tag": f"{name}.NOx", "elv": {"day": 200.0, "half_hour_100": 400.0}}]})
    tag = cfg.pollutant("NOx").tag
    noon = periods.parse_day("2026-03-10", "UTC")[0] + 12 * 3600
    ids = synthetic.ensure_tags(conn, [tag], asset=cfg.name)
    synthetic.copy_readings(conn, ids[tag], noon + 60 * np.arange(20), np.full(20, 600.0))
    alerts: list[Alert] = []
    live = LiveEmissions([cfg], alerts.append)
    live.seed(conn, noon + 20 * 60 + 3)
    at = [dt.fromtimestamp(noon + 60 * i, UTC) for i in range(19, 30)]
    live.observe([Reading(tag, t, 600.0 if i == 0 else 100.0, t) for i, t in enumerate(at)])  # 12:19 again
    live.flush()
    half = live.status()[cfg.name]["NOx"]["wi_half_hour_a"]
    assert half["running"] == pytest.approx((20 * 600 + 10 * 100) / 30)
    assert live.monitors[cfg.name].state[("NOx", "wi_half_hour_a")].count == 30
    assert any(a.severity == "critical" and not a.cleared_at for a in alerts)


async def test_a_qal3_chart_out_of_control_raises_an_alert_and_checks_in_control_clear_it(conn, pg_dsn):
    """QAL3 alarms were logged and stored, but never reached the alert board or its receivers: the analyser that
    needs seeing to was not among the alerts the plant engineers watch. The gateway's job hands the latest check of
    each chart to live analytics: a zero check at 3.5 s_AMS raises an ``emission_qal3:zero`` alert on the NOx tag
    (warning, with the check as evidence), and two later checks in control clear it."""
    import asyncio
    import time

    from analytics_support import spool_emit

    from edge.analytics import Analytics
    from edge.metrics import Metrics
    from edge.records import Reading
    from edge.settings import SiteConfig

    name = f"T{uuid.uuid4().hex[:8]}"
    tag = f"{name}.NOx.zero"
    cfg = synthetic.waste_stack(name, operating_state_tag=None, excluded_states=[],
                                qal3=[{"analyser": "NOx", "zero_tag": tag, "s_ams": 1.0}])
    batches: list = []
    an = Analytics(SiteConfig(stacks=[cfg.model_dump(mode="json")], maintenance={"alerts": {"clear_after_s": 0}}),
                   Metrics(), spool_emit(batches), None)
    hour = int(time.time()) // 3600 * 3600
    ids = synthetic.ensure_tags(conn, [tag])

    async def run_job_once() -> list[dict]:
        stop = asyncio.Event()

        def clock() -> float:
            stop.set()
            return time.time()

        await asyncio.wait_for(job.run_periodic(pg_dsn, [cfg], stop, interval_s=0.01, clock=clock,
                                                on_qal3=an.qal3_check), timeout=240)
        batches.clear()
        now = datetime.now(UTC)
        await an.process([Reading(f"{name}.unrelated", now, 0.0, now)])  # the next group of readings
        return [body for b in batches for kind, body in b.records if kind == "alert_change"]

    synthetic.copy_readings(conn, ids[tag], np.array([hour - 5 * 3600, hour - 4 * 3600]), np.array([0.1, 3.5]))
    (raised,) = await run_job_once()
    alert = raised["alert"]
    assert raised["event"] == "raised"
    assert (alert["kind"], alert["tag"], alert["severity"]) == ("emission_qal3:zero", cfg.pollutant("NOx").tag,
                                                                 "warning")
    assert alert["evidence"]["alarms"] == ["drift_action", "cusum_up"] and alert["evidence"]["value"] == 3.5
    assert "QAL3 zero check of NOx out of control" in alert["message"]
    assert await run_job_once() == []  # nothing new charted: nothing said again
    synthetic.copy_readings(conn, ids[tag], np.array([hour - 3 * 3600, hour - 2 * 3600]), np.array([0.0, 0.1]))
    (cleared,) = await run_job_once()
    assert (cleared["event"], cleared["alert"]["id"]) == ("cleared", alert["id"])


def test_a_backfill_older_than_max_age_is_valid_data_where_the_permit_takes_no_uncertain_readings(conn):
    """A NOx analyser's half-hour arrives 8 days late (a device's spool, a history backfill): the validator flags it
    STALE_TIME, UNCERTAIN only for its age (validation.max_age_s, 7 days), the measurement as good as any. With
    ``accept_uncertain = false`` the stored averages left it out as not valid data: the half-hour had no value, though
    late_data_days (31) exists to take such readings. A device's own UNCERTAIN (SOURCE_STATUS) stays out."""
    from edge.settings import Tag, Validation
    from edge.validate import Validator

    cfg = synthetic.waste_stack(f"T{uuid.uuid4().hex[:8]}", regulatory={"accept_uncertain": False})
    ids = seed(conn, cfg)
    nox = ids[cfg.pollutant("NOx").tag]
    hh = T0 + 86400 + 10 * 3600
    job.run_span(conn, cfg, T0, T0 + DAYS * 86400, context="day")
    on_time = stored(conn, cfg.name, "NOx", "half_hour", hh)
    assert on_time[0] is not None
    # The half-hour as the validator takes it 8 days after: flagged for its age only.
    with conn.cursor() as cur:
        cur.execute("SELECT time, value FROM readings WHERE tag_id = %s AND time >= to_timestamp(%s) "
                    "AND time < to_timestamp(%s) ORDER BY time", (nox, hh, hh + 1800))
        rows = cur.fetchall()
    now = rows[-1][0] + timedelta(days=8)
    late = [Reading(cfg.pollutant("NOx").tag, t, v, now) for t, v in rows]
    Validator({late[0].tag: Tag(name=late[0].tag)}, Validation()).apply_readings(late, now)
    assert {(int(r.quality), int(r.flags)) for r in late} == {(int(Quality.UNCERTAIN), int(Flag.STALE_TIME))}
    with conn.cursor() as cur:
        cur.execute("UPDATE readings SET quality = %s, flags = %s WHERE tag_id = %s AND time >= to_timestamp(%s) "
                    "AND time < to_timestamp(%s)", (int(Quality.UNCERTAIN), int(Flag.STALE_TIME), nox, hh, hh + 1800))
    job.run_span(conn, cfg, T0, T0 + DAYS * 86400, context="day")
    assert stored(conn, cfg.name, "NOx", "half_hour", hh) == on_time
    # The device's own doubt about the same readings is still not valid data.
    with conn.cursor() as cur:
        cur.execute("UPDATE readings SET flags = %s WHERE tag_id = %s AND time >= to_timestamp(%s) "
                    "AND time < to_timestamp(%s)", (int(Flag.STALE_TIME | Flag.SOURCE_STATUS), nox, hh, hh + 1800))
    job.run_span(conn, cfg, T0, T0 + DAYS * 86400, context="day")
    assert stored(conn, cfg.name, "NOx", "half_hour", hh)[0] is None
