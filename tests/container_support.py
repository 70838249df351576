"""Podman for the container tests: docker/localbuild.py (private storage, stand-in base image) and cleanup.

Containers run outside the test's process tree and would outlive a failed run, so every container a test
starts is registered here and removed at the end (``Containers.cleanup``) and, as a last resort, at exit.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("valvoja_localbuild", ROOT / "docker/localbuild.py")
localbuild = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(localbuild)

REQUIRE = os.environ.get("VALVOJA_TEST_REQUIRE_SERVERS") == "1"
GATEWAY_UID = 10001  # USER of docker/Dockerfile


def require_podman() -> None:
    """Skip (or fail where servers are required) when this machine cannot build and run images."""
    reason = localbuild.available()
    if reason:
        reason = f"container tests: {reason}"
        if REQUIRE:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return localbuild.podman(*args, check=check, timeout=timeout)


class Containers:
    """Names of the containers a test started; ``cleanup`` removes them (also registered with atexit)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        atexit.register(self.cleanup)

    def run(self, name: str, *args: str) -> str:
        self.names.append(name)
        podman("run", "-d", "--name", name, *args)
        return name

    def logs(self, name: str) -> str:
        res = podman("logs", name, check=False)
        return (res.stdout or "") + (res.stderr or "")

    def state(self, name: str) -> dict:
        import json

        return json.loads(podman("inspect", name).stdout)[0]["State"]

    def wait_healthy(self, name: str, timeout_s: float = 90) -> float:
        """Poll ``podman healthcheck run`` (no systemd here to schedule it); seconds until healthy."""
        t0 = time.monotonic()
        check = None
        while time.monotonic() - t0 < timeout_s:
            if not self.state(name).get("Running"):
                raise AssertionError(f"container {name} stopped:\n{self.logs(name)[-4000:]}")
            check = podman("healthcheck", "run", name, check=False)
            if check.returncode == 0:
                return time.monotonic() - t0
            time.sleep(0.5)
        last = f"exit {check.returncode}: {(check.stdout + check.stderr)[-2000:]}" if check else "never ran"
        raise TimeoutError(f"{name} not healthy within {timeout_s} s; last `podman healthcheck run`: {last}\n"
                           f"container log:\n{self.logs(name)[-4000:]}")

    def cleanup(self) -> None:
        for name in self.names:
            podman("rm", "-f", "-t", "5", name, check=False)
        self.names.clear()
