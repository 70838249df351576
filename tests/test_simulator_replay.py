"""CSV replay and the simulator clock: rows in file order, at the requested simulated rate and timestamps."""

from __future__ import annotations

import itertools
import math
import shutil
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collectors.simulator import SimOptions, Simulator
from collectors.simulator.replay import CsvReplay, ReplaySpec, parse_mapping

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "simulator_replay.csv"
GT_2011 = ROOT.parent / "shared" / "data" / "gas-turbine" / "gt_2011.csv"


def test_columns_delimiter_bom_and_whitespace_are_handled():
    r = CsvReplay(ReplaySpec(SAMPLE, prefix="GT1"))
    assert r.delimiter == ";" and r.tags == ["GT1.NOX", "GT1.CO", "GT1.TAT"]  # text columns left out
    rows = r.advance(0.0)
    assert rows == [(0.0, [("GT1.NOX", 81.5, 0), ("GT1.CO", 2.1, 0), ("GT1.TAT", 545.2, 0)])]


def test_rows_come_in_order_one_per_row_seconds():
    r = CsvReplay(ReplaySpec(SAMPLE, mapping=parse_mapping(["NOX=K1.NOx,CO=K1.CO"]), row_seconds=3600.0))
    assert r.tags == ["K1.NOx", "K1.CO"]
    got = r.advance(0.0)  # row 0 is due at once
    got += r.advance(1800.0)  # nothing new in half an hour
    assert len(got) == 1
    got += r.advance(1800.0)
    got += r.advance(3 * 3600.0)  # three rows due in one step, each with its own time
    assert [t for t, _ in got] == [0.0, 3600.0, 7200.0, 10800.0, 14400.0]
    nox = [dict((s.tag, s.value) for s in row).get("K1.NOx") for _, row in got]
    co = [dict((s.tag, s.value) for s in row).get("K1.CO") for _, row in got]
    assert nox == [81.5, 79.0, None, 84.25, 88.0]  # an empty cell is left out of its row
    assert co == [2.1, 2.4, 2.9, None, 3.3]  # so is a cell that is not a number
    assert r.advance(10 * 3600.0) == [] and r.finished and r.rows_done == 5


def test_loop_starts_again():
    r = CsvReplay(ReplaySpec(SAMPLE, mapping={"TAT": "K1.T"}, row_seconds=1.0, loop=True))
    values = [row[0].value for _, row in r.advance(11.0)]
    assert values == [545.2, 546.0, 547.1, 544.9, 543.0] * 2 + [545.2, 546.0]
    r.close()


def test_mistakes_are_named():
    with pytest.raises(ValueError, match="no column NOx; columns are datetime, NOX, CO, TAT, status"):
        CsvReplay(ReplaySpec(SAMPLE, mapping={"NOx": "K1.NOx"}))
    with pytest.raises(ValueError, match="expected COLUMN=TAG"):
        parse_mapping(["NOX"])
    with pytest.raises(ValueError, match="No such file"):
        CsvReplay(ReplaySpec(SAMPLE.with_name("missing.csv")))


SKAB_LIKE = """datetime;Accelerometer1RMS;Current;anomaly
2020-03-09 10:14:33;0.0265;1.33;0.0
2020-03-09 10:14:34;0.0261;1.35;0.0
2020-03-09 10:14:36;0.0270;1.36;0.0
2020-03-09 10:15:52;0.0300;1.52;1.0
not a time;0.0310;1.50;1.0
2020-03-09 10:15:53;0.0290;1.49;1.0
"""


def test_a_time_column_sets_when_each_row_comes(tmp_path):
    """SKAB's rows are "1 s" apart but 6 % are 2 s and one valve1 file has a 76 s gap: at --row-seconds 1 those
    gaps vanished and every later row came early (valve1/2.csv: 76 s by its end)."""
    path = tmp_path / "skab.csv"
    path.write_text(SKAB_LIKE)
    r = CsvReplay(ReplaySpec(path, row_seconds=1.0, time_column="datetime", loop=True))
    assert r.tags == ["replay.Accelerometer1RMS", "replay.Current", "replay.anomaly"]
    assert r.first_time == datetime(2020, 3, 9, 10, 14, 33, tzinfo=UTC)
    got = r.advance(0.0) + r.advance(2.0)
    assert [t for t, _ in got] == [0.0, 1.0]  # the row at 3 s is not due yet
    got += r.advance(200.0)
    assert [t for t, _ in got][:5] == [0.0, 1.0, 3.0, 79.0, 80.0]  # the row without a time left out
    assert [t for t, _ in got][5:8] == [81.0, 82.0, 84.0]  # the loop: row_seconds after the last row
    assert r.rows_skipped >= 1
    with pytest.raises(ValueError, match="no time column time; columns are datetime, Accelerometer1RMS"):
        CsvReplay(ReplaySpec(path, time_column="time"))


async def test_with_a_time_column_and_sim_stamps_the_stamps_are_the_files(tmp_path):
    path = tmp_path / "skab.csv"
    path.write_text(SKAB_LIKE)
    sim = Simulator(SimOptions(opcua_endpoint=None, interval_s=1.0, speed=40.0, timestamps="sim", replay=ReplaySpec(
        path, mapping={"Current": "PUMP.current"}, row_seconds=1.0, time_column="datetime")))
    out = await collect(sim)
    await sim.start()
    for _ in range(3):
        await sim.tick()
    await sim.stop()
    first = datetime(2020, 3, 9, 10, 14, 33, tzinfo=UTC)
    assert [(ts, v) for ts, tag, v in out if tag == "PUMP.current"] == [
        (first, 1.33), (first + timedelta(seconds=1), 1.35), (first + timedelta(seconds=3), 1.36),
        (first + timedelta(seconds=79), 1.52), (first + timedelta(seconds=80), 1.49)]


async def collect(sim: Simulator) -> list[tuple[datetime, str, object]]:
    out: list[tuple[datetime, str, object]] = []
    sim.on_samples = lambda ts, samples: out.extend((ts, s.tag, s.value) for s in samples)
    return out


async def test_replay_through_the_simulator_replaces_model_tags_with_spaced_timestamps():
    # interval 0.1 s x speed 36000 = one simulated hour per tick = one CSV row per tick.
    sim = Simulator(SimOptions(opcua_endpoint=None, interval_s=0.1, speed=36000.0, replay=ReplaySpec(
        SAMPLE, mapping={"NOX": "K1.NOx", "TAT": "K1.T"}, row_seconds=3600.0)))
    out = await collect(sim)
    await sim.start()
    for _ in range(4):
        await sim.tick()
    await sim.stop()
    nox = [(ts, v) for ts, tag, v in out if tag == "K1.NOx"]
    assert [v for _, v in nox] == [81.5, 79.0, 84.25, 88.0]  # row 2 has no NOX; nothing from the model
    stamps = [ts for ts, tag, _ in out if tag == "K1.T"]
    assert [b - a for a, b in itertools.pairwise(stamps)] == [timedelta(seconds=0.1)] * 4  # wall: hour / speed
    assert len([1 for _, tag, _ in out if tag == "K1.CO"]) == 5  # not replayed: still the model's


async def test_sim_timestamps_follow_simulated_time():
    start = datetime(2011, 1, 1, tzinfo=UTC)
    sim = Simulator(SimOptions(opcua_endpoint=None, interval_s=1.0, speed=3600.0, timestamps="sim", start=start,
                               replay=ReplaySpec(SAMPLE, mapping={"TAT": "GT.TAT"})))
    out = await collect(sim)
    await sim.start()
    await sim.tick()
    await sim.tick()
    await sim.stop()
    assert [ts for ts, tag, _ in out if tag == "GT.TAT"] == [start, start + timedelta(hours=1),
                                                              start + timedelta(hours=2)]
    assert [ts for ts, tag, _ in out if tag == "P-101.flow"] == [start, start + timedelta(hours=1),
                                                                  start + timedelta(hours=2)]


async def test_the_plants_day_follows_the_stamped_time_of_day():
    """--start 14:00 stamped the boiler's night-time load (50 %) and a -1.5 degC afternoon: the plant's day began at
    midnight whatever the stamps said."""
    first = {}
    for hour in (2, 14):
        sim = Simulator(SimOptions(opcua_endpoint=None, seed=4, timestamps="sim",
                                   start=datetime(2026, 6, 1, hour, tzinfo=UTC)))
        out = await collect(sim)
        await sim.start()
        await sim.stop()
        first[hour] = {tag: v for ts, tag, v in out}
    # Same seed, same noise: only the daily terms differ (load 72 +/- 15 %, ambient 2 +/- 4 degC).
    assert first[14]["K1.load"] - first[2]["K1.load"] == pytest.approx(30.0, abs=3.0)
    assert first[14]["SITE.ambient_temp"] - first[2]["SITE.ambient_temp"] == pytest.approx(7.7, abs=0.5)


async def test_the_clock_runs_rows_in_order():
    sim = Simulator(SimOptions(opcua_endpoint=None, interval_s=0.05, speed=72000.0, duration_s=0.6,
                               replay=ReplaySpec(SAMPLE, mapping={"TAT": "K1.T"}, loop=True)))
    out = await collect(sim)
    await sim.start()
    await sim.run()
    await sim.stop()
    values = [v for _, tag, v in out if tag == "K1.T"]
    cycle = [545.2, 546.0, 547.1, 544.9, 543.0]
    assert len(values) >= 6 and values == (cycle * 10)[:len(values)]
    stamps = [ts for ts, tag, _ in out if tag == "K1.T"]
    assert stamps == sorted(stamps)


@pytest.mark.skipif(not GT_2011.exists(), reason=f"{GT_2011} not present (../shared/data is optional)")
def test_gas_turbine_file_as_stack_data():
    r = CsvReplay(ReplaySpec(GT_2011, mapping=parse_mapping(["NOX=K1.NOx,CO=K1.CO,TAT=K1.T"])))
    first = dict((s.tag, s.value) for s in r.advance(0.0)[0][1])
    assert first == {"K1.NOx": 81.952, "K1.CO": 0.32663, "K1.T": 549.83}
    rows = r.advance(7410 * 3600.0)
    assert r.rows_done == 7411 and len(rows) == 7410 and all(not math.isnan(s.value) for _, row in rows for s in row)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collectors.simulator", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_command_line():
    out = run_cli("--help")
    assert out.returncode == 0 and "--replay-map" in out.stdout and "fault form" in out.stdout
    out = run_cli("--list-tags")
    assert out.returncode == 0 and "ns=2;s=P-101.vib_de" in out.stdout and "K1.NOx.span" in out.stdout
    out = run_cli("--fault", "P-101:explode")
    assert out.returncode == 2 and "unknown fault kind 'explode'" in out.stderr
    out = run_cli("--no-opcua", "--duration", "0.5", "--interval", "0.1", "--replay", str(SAMPLE),
                  "--replay-map", "NOX=K1.NOx", "--fault", "P-101:bearing")
    assert out.returncode == 0, out.stderr
    assert "stopped after" in out.stderr


def test_a_file_it_cannot_read_or_a_taken_port_is_a_message_not_silence_or_a_traceback(tmp_path):
    # C-MAPSS's form (space-separated, no header): every row one text cell, so nothing was replayed and the
    # simulator ran on, exit 0, as if the file had been read.
    spaced = tmp_path / "train_FD001.txt"
    spaced.write_text("1 1 -0.0007 -0.0004 100.0 518.67\n1 2 0.0019 -0.0003 100.0 518.67\n")
    out = run_cli("--no-opcua", "--duration", "0.5", "--replay", str(spaced))
    assert out.returncode == 2 and "no column with a number in its first row" in out.stderr, out.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_cli("--duration", "0.5", "--opcua", f"opc.tcp://127.0.0.1:{port}/valvoja/sim")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"simulate: OPC UA endpoint opc.tcp://127.0.0.1:{port}/valvoja/sim: cannot listen on 127.0.0.1 port {port}" \
        in out.stderr


async def test_synthetic_updates_between_plant_steps_have_their_own_sim_stamps():
    # --tags-interval 0.05 under --interval 1 with --timestamps sim: every update carried the plant's last step time,
    # so ~12 values of each SYN tag shared one source time (a store keeps one of them).
    sim = Simulator(SimOptions(opcua_endpoint=None, synthetic_tags=2, synthetic_interval_s=0.05, interval_s=1.0,
                               timestamps="sim", start=datetime(2026, 1, 1, tzinfo=UTC), duration_s=0.6))
    out = await collect(sim)
    await sim.start()
    await sim.run()
    await sim.stop()
    stamps = [ts for ts, tag, _ in out if tag == "SYN.00001"]
    assert len(stamps) >= 6 and len(set(stamps)) == len(stamps) and stamps == sorted(stamps)


def test_a_secure_policy_without_a_certificate_is_refused():
    # asyncua offered no endpoint at all then, while the simulator said it served: clients failed without a word.
    out = run_cli("--duration", "0.5", "--opcua", "opc.tcp://127.0.0.1:4999/valvoja/sim",
                  "--opcua-policy", "Basic256Sha256_SignAndEncrypt")
    assert out.returncode == 2, out.stderr
    assert "simulate: OPC UA policy Basic256Sha256_SignAndEncrypt needs the server's certificate and private key " \
        "(--opcua-cert, --opcua-key)" in out.stderr


@pytest.mark.parametrize("args", [("--interval", "0"), ("--speed", "-1"), ("--duration", "0"),
                                  ("--row-seconds", "0"), ("--tags-interval", "nan")])
def test_a_period_or_speed_of_zero_or_less_is_a_usage_error(args):
    out = run_cli("--no-opcua", *args)
    assert out.returncode == 2 and f"argument {args[0]}: '{args[1]}': must be a number above 0" in out.stderr, \
        out.stderr


def test_the_demo_refuses_a_speed_of_zero_before_starting_anything():
    # It started PostgreSQL and mosquitto, then ended in a ValueError traceback from the simulator.
    state = Path(tempfile.mkdtemp(prefix="valvoja-demo-"))
    try:
        out = subprocess.run([sys.executable, "-m", "edge.cli", "demo", "--speed", "0", "--no-console", "--duration",
                              "5", "--state-dir", str(state)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert out.returncode == 2 and "argument --speed: '0': must be a number above 0" in out.stderr, out.stderr
