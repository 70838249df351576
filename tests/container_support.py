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


_built: dict[str, str] = {}  # "id": the image docker/Dockerfile gave in this test session


def project_image(tag: str) -> str:
    """The image of docker/Dockerfile under ``tag``, built once per test session: a second name (the compose file's
    ``localhost/valvoja:0.1.0`` beside the image tests' tag) is a `podman tag` of it, not another build, which
    cost 10-40 s each time. The container tests share one pytest-xdist worker (xdist_group "podman")."""
    require_podman()
    if "id" not in _built:
        timings = localbuild.build(tag, log=lambda msg: print(f"[localbuild] {msg}"))
        print(f"[localbuild] timings {timings}")
        _built["id"] = podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    else:
        podman("tag", _built["id"], tag)
    return tag


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
            # -v: the image's VOLUME makes an anonymous volume per container, which `rm` alone leaves behind.
            podman("rm", "-f", "-v", "-t", "5", name, check=False)
        self.names.clear()


# Where podman looks for CNI plugins (containers.conf's default cni_plugin_dirs).
CNI_PLUGIN_DIRS = ("/usr/local/libexec/cni", "/usr/libexec/cni", "/usr/local/lib/cni", "/usr/lib/cni", "/opt/cni/bin")


def podman_compose() -> str:
    """The podman-compose command (a dev dependency in the venv); skip (or fail where servers are required)
    when it or service-name DNS between containers is missing."""
    import shutil
    import sys

    require_podman()
    exe = Path(sys.executable).with_name("podman-compose")
    found = str(exe) if exe.exists() else shutil.which("podman-compose")
    reason = None
    if not found:
        reason = "podman-compose not installed (pip install -e '.[dev]')"
    elif podman("info", "--format", "{{.Host.NetworkBackend}}").stdout.strip() == "cni" and not any(
            Path(d, "dnsname").exists() for d in CNI_PLUGIN_DIRS):
        reason = ("podman's CNI network backend without the dnsname plugin: containers cannot find each other by "
                  "service name (apt-get install golang-github-containernetworking-plugin-dnsname)")
    if reason:
        if REQUIRE:
            pytest.fail(f"compose stack test: {reason}", pytrace=False)
        pytest.skip(f"compose stack test: {reason}")
    return found


class ComposeProject:
    """A compose project run with podman-compose under a project name of its own; ``down`` removes its
    containers, volumes (also the anonymous ones podman-compose leaves) and network (also registered with atexit).
    """

    def __init__(self, exe: str, project: str, workdir: Path, files: list[Path], profiles: list[str]) -> None:
        self.exe, self.project, self.workdir = exe, project, workdir
        self.args = ["-p", project, *(a for f in files for a in ("-f", str(f))),
                     *(a for p in profiles for a in ("--profile", p))]
        atexit.register(self.down)

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        res = subprocess.run([self.exe, *self.args, *args], cwd=self.workdir, env=localbuild.env(), text=True,
                             capture_output=True, timeout=timeout)
        if check and res.returncode:
            raise AssertionError(f"podman-compose {' '.join(args)} failed ({res.returncode}):\n"
                                 f"{(res.stdout + res.stderr)[-4000:]}")
        return res

    def containers(self) -> dict[str, str]:
        """Service name -> container name of the project's containers."""
        import json

        out = podman("ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}",
                     "--format", "json").stdout
        return {c["Labels"]["io.podman.compose.service"]: c["Names"][0] for c in json.loads(out or "[]")}

    def down(self) -> None:
        import json

        names = list(self.containers().values())
        anonymous = []
        if names:
            for info in json.loads(podman("inspect", *names, check=False).stdout or "[]"):
                anonymous += [m["Name"] for m in info.get("Mounts", []) if m.get("Type") == "volume"]
        self.run("down", "-v", check=False)
        for name in self.containers().values():
            podman("rm", "-f", "-v", "-t", "5", name, check=False)
        for volume in podman("volume", "ls", "-q", "--filter", f"label=io.podman.compose.project={self.project}",
                             check=False).stdout.split() + anonymous:
            podman("volume", "rm", "-f", volume, check=False)
        podman("network", "rm", "-f", f"{self.project}_default", check=False)
        podman("pod", "rm", "-f", f"pod_{self.project}", check=False)
