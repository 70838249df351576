"""`valvoja demo`, the README's first command: the simulated plant collected end to end on its own servers.

The demo is what a plant engineer runs first; it must start on a fresh database without an error in its log,
store what the simulator sends, and stop cleanly with nothing left in the spool.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"),
                    reason="mosquitto is not installed (the demo starts its own broker)")
def test_the_demo_runs_on_its_own_servers_and_logs_no_error():
    env = {k: v for k, v in os.environ.items() if k != "VALVOJA_DB_URL"}  # the embedded database, as in README
    # Run as root, the embedded PostgreSQL drops to its own user, which cannot enter pytest's private tmp_path.
    state = Path(tempfile.mkdtemp(prefix="valvoja-demo-"))
    state.chmod(0o755)
    try:
        proc = subprocess.run([sys.executable, "-m", "edge.cli", "demo", "--duration", "25", "--state-dir",
                               str(state)], env=env, capture_output=True, text=True, timeout=240)
        log = (state / "demo.log").read_text()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    stopped = re.search(r"stopped: (\d+) readings stored, (\d+) left in the spool", proc.stdout)
    assert stopped, proc.stdout
    # 47 simulator tags at 1 Hz for 25 s, minus start-up; the spool was drained at the stop.
    assert int(stopped[1]) > 400 and int(stopped[2]) == 0, proc.stdout
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
