"""Helpers for the OPC UA tests: free ports and the plant simulator as a child process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimProcess:
    """``python -m collectors.simulator`` serving OPC UA on ``endpoint`` (output in ``workdir/simulator.log``)."""

    def __init__(self, endpoint: str, workdir: Path, *args: str) -> None:
        self.endpoint = endpoint
        self.port = int(endpoint.rsplit(":", 1)[1].split("/")[0])
        self.args = args
        self.log = Path(workdir) / "simulator.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> SimProcess:
        with open(self.log, "ab") as logf:  # the child keeps its own handle
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collectors.simulator", "--opcua", self.endpoint, *self.args],
                cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulator exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"simulator not listening on {self.port} after {timeout_s} s")

    def freeze(self) -> None:
        """SIGSTOP: the socket stays open and nothing answers (a hung server or a dead network path)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
