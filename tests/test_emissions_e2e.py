"""End to end: the simulator's boiler stack K1 (OPC UA, a process) -> `valvoja run` (a process) -> TimescaleDB
-> `valvoja emissions report`; the report's hourly and daily averages must match an independent calculation
from the raw rows (plain Python, no emissions code)."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

pytest.importorskip("collectors.opcua", reason="the OPC UA collector is not in this build")
from gateway_proc import GatewayProcess
from opcua_support import SimProcess, free_port
from ops_support import db_url, wait_for

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "emissions" / "sample.toml"
DAY = (datetime.now(UTC) - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
# 0.2 s real per step at 300x: one simulated minute per step, five per real second.
SIM_ARGS = ("--interval", "0.2", "--speed", "300", "--timestamps", "sim", "--start", DAY.isoformat(), "--seed", "5")
TAGS = ["K1.NOx", "K1.CO", "K1.SO2", "K1.dust", "K1.O2", "K1.CO2", "K1.H2O", "K1.flow", "K1.T", "K1.p", "K1.state",
        "K1.fuel", "K1.NOx.zero", "K1.NOx.span"]

GATEWAY = """\
[site]
name = "emissions-e2e"
gateway_id = "gw-emis"
state_dir = "var"

[database]
url = "@DB_URL@"
flush_interval_s = 0.2

[http]
listen = "127.0.0.1:{HTTP_PORT}"

[logging]
format = "text"

[[collectors]]
kind = "opcua"
name = "sim"
endpoint = "@ENDPOINT@"
publishing_interval_ms = 100.0
nodes = [@NODES@]

"""


def stack_section() -> str:
    """The sample's stack K1 (the simulator's boiler), judged in UTC days."""
    k1 = SAMPLE.read_text().split("# A waste incinerator line")[0]
    return k1.replace('timezone = "Europe/Helsinki"', 'timezone = "UTC"', 1)


def raw(dsn: str, tag: str) -> list[tuple[int, float, int]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT extract(epoch FROM r.time)::float8, r.value, r.quality FROM readings r "
                            "JOIN tags t ON t.id = r.tag_id WHERE t.name = %s ORDER BY r.time", (tag,)).fetchall()


def independent_hours(dsn: str) -> dict[int, tuple[float | None, bool | None]]:
    """Hour start -> (mean NOx at 3 % O2 of the valid minutes, valid?) from the raw rows, for operating hours."""
    def minutes(tag):
        acc = defaultdict(list)
        for t, v, q in raw(dsn, tag):
            if q <= 1 and v is not None and v == v:
                acc[int(t) // 60 * 60].append(v)
        return {m: sum(v) / len(v) for m, v in acc.items()}

    nox, o2 = minutes("K1.NOx"), minutes("K1.O2")
    states = [(int(t), v) for t, v, q in raw(dsn, "K1.state") if q <= 1]
    day0 = int(DAY.timestamp())
    out = {}
    for h in range(24):
        n_op = n_ok = 0
        total = 0.0
        for m in range(day0 + 3600 * h, day0 + 3600 * (h + 1), 60):
            in_minute = [v for t, v in states if m <= t < m + 60]
            before = [v for t, v in states if t < m]
            if in_minute:
                excluded = all(v in (0, 1, 3) for v in in_minute)
            elif before:
                excluded = before[-1] in (0, 1, 3)
            else:
                continue  # no state known yet: not operating
            if excluded:
                continue
            n_op += 1
            if m in nox and m in o2 and 0 <= o2[m] < 20:
                n_ok += 1
                total += nox[m] * (21 - 3) / (21 - o2[m])
        if n_op:
            out[day0 + 3600 * h] = (total / n_ok if n_ok else None, n_ok >= 2 / 3 * n_op)
    return out


def test_simulated_stack_through_the_gateway_to_the_daily_report(tmp_path, pg_dsn):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/valvoja/sim"
    nodes = ", ".join(f'{{ node_id = "ns=2;s={t}", tag = "{t}" }}' for t in TAGS)
    site = (GATEWAY.replace("@DB_URL@", db_url(pg_dsn)).replace("@ENDPOINT@", endpoint).replace("@NODES@", nodes)
            + stack_section())
    sim = SimProcess(endpoint, tmp_path, *SIM_ARGS).start()
    gw = GatewayProcess(tmp_path / "gw", site).start()
    try:
        def covered_s() -> float:
            rows = raw(pg_dsn, "K1.NOx")
            return rows[-1][0] - rows[0][0] if rows else 0.0

        wait_for(lambda: covered_s() >= 3 * 3600, timeout_s=120, interval_s=1, what="three simulated hours stored")
        assert gw.terminate() == 0
    finally:
        gw.kill()
        sim.stop()

    out = tmp_path / "report"
    day = DAY.date().isoformat()
    proc = subprocess.run([sys.executable, "-m", "emissions.cli", "report", "--config", str(gw.config), "--stack",
                           "K1", "--day", day, "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    with (out / f"emissions_K1_{day}.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["pollutant"] == "NOx"]
    hours = {int(datetime.fromisoformat(r["period_start"]).timestamp()): r for r in rows if r["period"] == "hour"}
    expected = independent_hours(pg_dsn)
    assert sum(1 for _, ok in expected.values() if ok) >= 2
    for start, (mean, ok) in expected.items():
        r = hours[start]
        assert (r["status"] == "valid") is ok, (start, r)
        if mean is not None:
            assert float(r["value_mg_nm3"]) == pytest.approx(mean, abs=1e-3), start
    valid_means = [m for m, ok in expected.values() if ok]
    daily = next(r for r in rows if r["period"] == "day")
    assert float(daily["value_mg_nm3"]) == pytest.approx(sum(valid_means) / len(valid_means), abs=1e-3)
    assert daily["status"] == "invalid"  # the rest of the day has no data: more than three invalid hours
    html = (out / f"emissions_K1_{day}.html").read_text()
    assert "QAL3" in html and "K1" in html
