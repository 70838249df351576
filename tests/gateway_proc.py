"""Run the real gateway (`valvoja run`) as a child process for fault tests: kill it, restart it, read /healthz."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from serverproc import free_port

ROOT = Path(__file__).resolve().parents[1]




class GatewayProcess:
    """``valvoja run`` on a config written to ``workdir/site.toml``; http port chosen here."""

    def __init__(self, workdir: Path, config_text: str):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = self.workdir / "site.toml"
        self.config.write_text(config_text.replace("{HTTP_PORT}", str(self.port)))
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "gateway.log"

    def start(self, timeout_s: float = 30.0, *, wait_database: bool = True) -> GatewayProcess:
        """Start and wait until /healthz answers and, with ``wait_database``, the configured database is
        connected and migrated (the gateway answers /healthz before that: it collects with the database away)."""
        logf = open(self.log, "ab")  # owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "run", "-c", str(self.config), "--log-format", "text"],
            cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        logf.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                db = self.health().get("database") or {}
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
                continue
            if not wait_database or not db.get("configured") or db.get("connected"):
                return self
            time.sleep(0.1)
        raise TimeoutError(f"gateway not healthy within {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 503 still carries the detail
            return json.loads(exc.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return r.read().decode()

    def kill(self) -> None:
        """SIGKILL: no chance to flush; what was acknowledged must survive in the spool."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def wait_for(self, predicate, timeout_s: float = 30.0, interval_s: float = 0.2):
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval_s)
        raise TimeoutError(f"condition not met within {timeout_s} s (last: {last!r}); log:\n"
                           f"{self.log.read_text()[-3000:]}")
