"""`valvoja emissions report` against a real PostgreSQL / TimescaleDB, read as an authority's auditor reads it: what
the report states must be what the stored data says, with nothing unknown shown as a number.

Readings go in by binary COPY (`emissions.synthetic.copy_readings`); the report runs through the command line."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import numpy as np
import pytest

from edge import cli
from emissions import periods, synthetic
from emissions.config import StackConfig

DAY = "2026-03-10"


def lcp(extra: str = "") -> tuple[StackConfig, str]:
    """A large combustion plant stack in Europe/Helsinki (NOx, monthly ELV 200) and its site file text; ``extra``:
    more keys of the stack (TOML lines)."""
    name = f"T{uuid.uuid4().hex[:8]}"
    text = (f'[[stacks]]\nname = "{name}"\nregime = "lcp"\ntimezone = "Europe/Helsinki"\n{extra}'
            f'pollutants = [{{ name = "NOx", tag = "{name}.NOx", elv = {{ month = 200.0 }} }}]\n')
    import tomllib

    return StackConfig.model_validate(tomllib.loads(text)["stacks"][0]), text


def write(conn, tag: str, start: int, end: int, value: float, asset: str) -> None:
    """A reading of ``value`` every minute of [start, end)."""
    tid = synthetic.ensure_tags(conn, [tag], asset=asset)[tag]
    t = np.arange(start, end, 60)
    synthetic.copy_readings(conn, tid, t, np.full(len(t), value))


def report(dsn: str, site_text: str, name: str, out: Path, *period: str) -> tuple[str, list[dict]]:
    """The HTML and the averages CSV rows of ``valvoja emissions report`` (``--day D`` / ``--month M``)."""
    out.mkdir(parents=True, exist_ok=True)
    site = out / "site.toml"
    site.write_text(site_text)
    assert cli.main(["emissions", "report", "--config", str(site), "--db", dsn, "--stack", name, *period, "--out",
                     str(out)]) == 0
    base = out / f"emissions_{name}_{period[1]}"
    with base.with_suffix(".csv").open() as fh:
        return base.with_suffix(".html").read_text(), list(csv.DictReader(fh))


def summary_cells(html: str, pollutant: str) -> list[str]:
    """The cells of the pollutant's row of the report's Summary table."""
    table = html.split("<h2>Summary</h2>", 1)[1].split("</table>", 1)[0]
    row = next(r for r in table.split("<tr>") if r.startswith(f'<td class="l">{pollutant}</td>'))
    return [c.split(">", 1)[1] for c in row.split("</td>")[:-1]]


def test_a_stack_without_a_flow_meter_reports_no_mass_rather_than_zero_tonnes(conn, pg_dsn, tmp_path):
    """No flue-gas flow configured: the mass is not measured. The report said 0.000 t of NOx for the day (summary),
    0.0 kg per hour and 0.000 in the CSV, figures an authority would take as measured; it now shows none (–, an
    empty CSV cell) and says why."""
    cfg, text = lcp()
    day, next_day = periods.parse_day(DAY, cfg.timezone)
    write(conn, cfg.pollutant("NOx").tag, day, next_day, 150.0, cfg.name)
    html, rows = report(pg_dsn, text, cfg.name, tmp_path, "--day", DAY)
    cells = summary_cells(html, "NOx")
    assert cells[1] == "150.00" and cells[7] == "–", cells  # day average measured, mass t unknown
    assert "No flue-gas flow configured" in html
    assert {r["mass_kg"] for r in rows if r["pollutant"] == "NOx"} == {""}
    assert len([r for r in rows if r["period"] == "hour"]) == 24


def test_hours_without_a_flow_reading_have_no_mass_and_the_day_counts_them_as_gap(conn, pg_dsn, tmp_path):
    """A dry standard flow of 1,000 m³/h for the first 12 hours of the day, none after (the flow meter failed):
    each of those hours emitted 150 mg/m³ × 1,000 m³/h = 0.15 kg, the others an unknown mass (they said 0.0 kg),
    the day 1.8 kg over 12 known hours with 12 hours of gap."""
    cfg, text = lcp('flow = { tag = "FLOW", moisture = "dry", conditions = "standard" }\n')
    text = text.replace('"FLOW"', '"' + cfg.name + '.flow"')
    day, next_day = periods.parse_day(DAY, cfg.timezone)
    write(conn, cfg.pollutant("NOx").tag, day, next_day, 150.0, cfg.name)
    write(conn, f"{cfg.name}.flow", day, day + 12 * 3600, 1000.0, cfg.name)
    html, rows = report(pg_dsn, text, cfg.name, tmp_path, "--day", DAY)
    hours = [r["mass_kg"] for r in rows if r["period"] == "hour"]
    assert [float(h) for h in hours[:12]] == pytest.approx([0.15] * 12) and hours[12:] == [""] * 12
    (daily,) = [r for r in rows if r["period"] == "day"]
    assert float(daily["mass_kg"]) == pytest.approx(1.8)
    mass = html.split("<h2>Mass emissions</h2>", 1)[1].split("</table>", 1)[0]
    assert "<td>0.002</td><td>0.15</td><td>24.0</td><td>12.0</td>" in mass.replace(' class=""', "")
    assert "No flue-gas flow configured" not in html


def test_a_rule_failing_only_so_far_is_not_summed_up_as_a_failure(conn, pg_dsn, tmp_path):
    """1 January 2026, the first day of the running year: 5 of its 24 hours at 450 mg/Nm³ (validated 410, over 200 %
    of the ELV, 400), the others at 150. The year's rule that 95 % of the hours be within 400 fails so far (19 of 24,
    79 %) but the year has 8,735 hours to go: the compliance table says "FAIL (provisional)", the summary said "FAIL"
    beside nothing else. The day itself (validated 172.5) is within its 220."""
    cfg, text = lcp()
    day, next_day = periods.parse_day("2026-01-01", cfg.timezone)
    write(conn, cfg.pollutant("NOx").tag, day, day + 5 * 3600, 450.0, cfg.name)
    write(conn, cfg.pollutant("NOx").tag, day + 5 * 3600, next_day, 150.0, cfg.name)
    html, rows = report(pg_dsn, text, cfg.name, tmp_path, "--day", "2026-01-01")
    (daily,) = [r for r in rows if r["period"] == "day"]
    assert float(daily["validated_mg_nm3"]) == pytest.approx(172.5)
    verdict = summary_cells(html, "NOx")[8]
    assert "FAIL" not in verdict and "failing so far (provisional): lcp_hourly_95_200" in verdict, verdict
    assert "<td>79.2 %</td><td>95 %</td><td>FAIL <span class='muted'>(provisional)</span>" in html.replace(
        ' class=""', "").replace('<span class=\'bad\'>FAIL</span>', "FAIL")


async def test_a_report_names_the_run_it_stored_and_the_readings_it_rests_on(conn, pg_dsn, tmp_path):
    """Revision notes say "changed ... (run 7)", but a report did not say which run it was: an auditor holding two
    reports of one day could not tell which stored data each showed. It names its run (``emission_runs.id``) and the
    readings of the span as the rollups counted them (what late-data detection compares); with ``--no-store`` it says
    it stored nothing. Its CSV files stay the same byte for byte over the same data (no run number in them)."""
    from test_emissions_late import forward

    cfg, text = lcp()
    day, next_day = periods.parse_day(DAY, cfg.timezone)
    await forward(conn, pg_dsn, cfg, day, next_day, value=150.0)  # as the forwarder writes them: with rollups
    html, _ = report(pg_dsn, text, cfg.name, tmp_path, "--day", DAY)
    (run_id,) = conn.execute("SELECT max(id) FROM emission_runs WHERE stack = %s", (cfg.name,)).fetchone()
    (seen,) = conn.execute("SELECT rollup_readings FROM emission_runs WHERE id = %s", (run_id,)).fetchone()
    assert seen == 1440
    assert f"<th class='l'>Stored as</th><td>run {run_id} (emission_runs.id;" in html
    assert "<th class='l'>Readings</th><td>1 440 of the stack's tags in the computed span" in html
    html, _ = report(pg_dsn, text, cfg.name, tmp_path / "again", "--day", DAY)
    assert f"<th class='l'>Stored as</th><td>run {run_id + 1} (emission_runs.id;" in html
    for suffix in (".csv", "_events.csv", "_notes.csv"):
        name = f"emissions_{cfg.name}_{DAY}{suffix}"
        assert (tmp_path / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    html, _ = report(pg_dsn, text, cfg.name, tmp_path / "unstored", "--day", DAY, "--no-store")
    assert "<th class='l'>Stored as</th><td>not stored (--no-store)" in html
    assert conn.execute("SELECT max(id) FROM emission_runs WHERE stack = %s", (cfg.name,)).fetchone() == (run_id + 1,)


def test_a_report_names_the_pems_model_versions_of_the_period(conn, pg_dsn, tmp_path):
    """Substituted values and the cross-check's interval come from PEMS predictions, and the pems tags' readings do not
    name the model: the report named none. It lists the versions of the predictions stored in the period (model id,
    registry version, ONNX sha256, how many, first and last): here v2 until 06:00, then v3 (a new champion). And how
    many of them came from inputs outside the version's training range (their values extrapolated): 4 of v3's."""
    cfg, text = lcp()
    pems = (f'pems = {{ tag = "{cfg.name}.NOx.pems", lower_tag = "{cfg.name}.NOx.lo", '
            f'upper_tag = "{cfg.name}.NOx.hi" }}, ')
    text = text.replace('tag = "' + cfg.name + '.NOx", ', 'tag = "' + cfg.name + '.NOx", ' + pems)
    day, next_day = periods.parse_day(DAY, cfg.timezone)
    write(conn, cfg.pollutant("NOx").tag, day, next_day, 150.0, cfg.name)
    with conn.cursor() as cur:  # as emissions.pems_live stores them: one per primary interval, here one per hour
        cur.executemany(
            "INSERT INTO predictions (time, model_id, model_version, asset, kind, target, value, lower, upper, "
            "coverage, details) VALUES (to_timestamp(%s), 'pems-nox', %s, %s, 'pems', 'NOx', 150, 120, 180, 0.9, "
            "jsonb_build_object('pems_tag', %s::text, 'registry_version', %s::int) || %s::jsonb)",
            [(day + 3600 * h, "a" * 64 if h < 6 else "b" * 64, cfg.name, f"{cfg.name}.NOx.pems", 2 if h < 6 else 3,
              '{"outside_training": {"TEY": [190.0, 100.2, 174.6]}}' if h >= 20 else "{}") for h in range(24)])
    html, _ = report(pg_dsn, text, cfg.name, tmp_path, "--day", DAY)
    table = html.split("<h3>PEMS model versions of the period</h3>", 1)[1].split("</table>", 1)[0]
    cells = [[c.split(">", 1)[1] for c in r.split("</td>")[:-1]] for r in table.split("<tr>")[2:]]
    assert cells == [
        ["NOx", "pems-nox", "2", f"<code>{'a' * 64}</code>", "6", "2026-03-10 00:00+02:00", "2026-03-10 05:00+02:00",
         "0"],
        ["NOx", "pems-nox", "3", f"<code>{'b' * 64}</code>", "18", "2026-03-10 06:00+02:00", "2026-03-10 23:00+02:00",
         "4"]]
    html, _ = report(pg_dsn, text, cfg.name, tmp_path / "next", "--day", "2026-03-11")
    assert "no PEMS prediction stored in the period: no model version to name" in html


def test_events_and_limits_that_are_no_concentrations_carry_their_unit(conn, pg_dsn, tmp_path):
    """15 January 2026 after 14 days without data: 14 invalid days (10 allowed), and 5 of the day's 24 hours over 200 %
    of the ELV (the year's 95 % window: 79.17 % within so far). The report printed the invalid-day count's limit as
    "10.00" under "limit mg/Nm³", and the events' values bare (14.00 against 10.00, 79.17 against 95.00) where only
    an exceedance's value is a concentration."""
    cfg, text = lcp()
    day, next_day = periods.parse_day("2026-01-15", cfg.timezone)
    write(conn, cfg.pollutant("NOx").tag, day, day + 5 * 3600, 450.0, cfg.name)
    write(conn, cfg.pollutant("NOx").tag, day + 5 * 3600, next_day, 150.0, cfg.name)
    html, _ = report(pg_dsn, text, cfg.name, tmp_path, "--day", "2026-01-15")
    html = html.replace(' class=""', "").replace(' class="l"', "")
    compliance = html.split("<h2>Compliance</h2>", 1)[1].split("</table>", 1)[0]
    assert "<td>invalid_days</td><td>NOx</td>" in compliance and "<td>15</td><td>14</td><td>10 days</td>" in compliance
    assert "<td>400.00 mg/Nm³</td>" in compliance  # the hourly rule's 200 % of 200
    exceed = html.split("<h2>Exceedances", 1)[1].split("</table>", 1)[0]
    assert "<td>14 days</td><td>10 days</td>" in exceed
    assert "<td>79.17 %</td><td>95.00 %</td>" in exceed
    assert exceed.count("<td>410.00 mg/Nm³</td><td>400.00 mg/Nm³</td>") == 5


def test_the_raw_values_name_the_analysers_unit(conn, pg_dsn, tmp_path):
    """An analyser in ppm: the day's hours are 100 ppm raw and 205.27 mg/Nm³ (NO2, 46.01 g/mol / 22.414 L/mol). The
    table's column said only "raw", the CSV's too: 100 beside 205.27 with no unit to tell them apart."""
    cfg, text = lcp()
    text = text.replace('elv = {', 'unit = "ppm", elv = {')
    day, next_day = periods.parse_day(DAY, cfg.timezone)
    write(conn, cfg.pollutant("NOx").tag, day, next_day, 100.0, cfg.name)
    html, rows = report(pg_dsn, text, cfg.name, tmp_path, "--day", DAY)
    (daily,) = [r for r in rows if r["period"] == "day"]
    assert (float(daily["raw"]), daily["raw_unit"]) == (pytest.approx(100.0), "ppm")
    assert float(daily["value_mg_nm3"]) == pytest.approx(100.0 * 46.01 / 22.414, rel=1e-3)
    assert "<th>raw ppm</th>" in html.replace(' class=""', "")


def test_an_invalid_day_is_not_summed_up_as_passing_its_daily_limit(conn, pg_dsn, tmp_path):
    """The year measured at 150 mg/Nm³ up to 10 March; that day only 20 of its 24 hours, at 300 (validated 260, over
    the daily limit of 220). Its 4 invalid hours, more than 3, make the day invalid, so the daily rule has no average
    to judge. The summary said "pass" (the year's rules pass so far); it says the daily rule was not judged."""
    cfg, text = lcp()
    day = periods.parse_day(DAY, cfg.timezone)[0]
    year = periods.year_of(day, cfg.timezone)[0]
    write(conn, cfg.pollutant("NOx").tag, year, day, 150.0, cfg.name)
    write(conn, cfg.pollutant("NOx").tag, day, day + 20 * 3600, 300.0, cfg.name)
    html, rows = report(pg_dsn, text, cfg.name, tmp_path, "--day", DAY)
    (daily,) = [r for r in rows if r["period"] == "day"]
    assert (daily["status"], daily["sub_invalid"]) == ("invalid", "4")
    assert summary_cells(html, "NOx")[8] == ("<span class='ok'>pass</span><br><span class='warn'>not judged (no valid "
                                             "day average): lcp_daily_110</span>")
