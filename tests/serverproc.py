"""Child-process handling shared by the test servers in servers.py: temp dir, process group, user, log, waits.

Each server lives in a temp dir of its own and is stopped and removed by ``close()`` (the fixtures in
conftest.py do that even when a test fails; an atexit hook and the kernel's parent-death signal catch the rest,
so a crashed test run leaves no server behind). Set ``VALVOJA_TEST_KEEP=1`` to keep the temp dirs for a look.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path

KEEP = os.environ.get("VALVOJA_TEST_KEEP") == "1"
_live: weakref.WeakSet[ServerProcess] = weakref.WeakSet()


OWNER_FILE = ".valvoja-owner"  # pid of the test process that made a temp dir; see sweep_stale()


def make_temp_dir(prefix: str, owner: pwd.struct_passwd | None = None, *, scratch: bool = False) -> Path:
    """A temp dir marked with this process's pid, chowned to ``owner`` if given.

    ``scratch`` dirs (templates, helper trees) are removed at exit; server dirs are removed by ``close()``.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    (path / OWNER_FILE).write_text(str(os.getpid()))
    if owner:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    if scratch:
        atexit.register(shutil.rmtree, path, True)
    return path


def sweep_stale() -> list[Path]:
    """Remove temp dirs left by test runs that were killed before they could clean up (their servers died
    with them through the parent-death signal). Only dirs whose owner process is gone; kept dirs have no mark."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob("valvoja-*-*"):
        try:
            pid = int((path / OWNER_FILE).read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except (OSError, ValueError):
            continue  # not ours, not readable, or its owner is alive
    return removed


class ServerError(RuntimeError):
    """A test server did not start or stop as it should; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` (127.0.0.1, or ::1) that nothing listens on right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_loopback_missing() -> str | None:
    """Why IPv6 loopback (::1) cannot be used here, for a skip, or None when it can."""
    if not socket.has_ipv6:
        return "Python built without IPv6"
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"no IPv6 loopback on this machine ({exc.strerror})"
    return None


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_until(ready: Callable[[], bool], timeout: float, what: str, alive: Callable[[], None] | None = None) -> None:
    """Poll ``ready`` every 50 ms until true; ``alive`` raises when the server died; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if alive:
            alive()
        if ready():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout} s")
        time.sleep(0.05)


class ServerProcess:
    """One server process in its own temp dir and process group, optionally run as another system user.

    Subclasses give ``name``, ``_command()`` and ``_ready()``; ``start()`` waits for ``_ready()``.
    """

    name = "server"

    def __init__(self, run_as: str | None = None):
        self._user = pwd.getpwnam(run_as) if run_as and os.geteuid() == 0 else None
        self.dir = make_temp_dir(f"valvoja-{self.name}-", self._user)
        self.log_path = self.dir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        _live.add(self)

    # -- to be provided by the subclasses
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _shutdown_signal(self) -> int:
        return signal.SIGTERM

    # -- process handling
    def _wrap(self, argv: list[str]) -> list[str]:
        """Run ``argv`` as the server user and have the kernel kill it if the test process dies first."""
        if not shutil.which("setpriv"):
            return argv
        ids = [f"--reuid={self._user.pw_uid}", f"--regid={self._user.pw_gid}", "--clear-groups"] if self._user else []
        return ["setpriv", *ids, "--pdeathsig", "KILL", "--", *argv]

    def run_as_user(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        """Run a helper command (initdb, ...) as the server user; raise ServerError with its output on failure."""
        res = subprocess.run(self._wrap(argv), capture_output=True, text=True, cwd=self.dir, **kw)
        if res.returncode:
            raise ServerError(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        return res

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(f"{self.name} exited with {self.proc.returncode}; {self.log_path}:\n{self.log_tail()}")

    def start(self, timeout: float = 60.0):
        """Start the server (same ports, same data as before) and wait until it accepts clients."""
        if self.running:
            return self
        with open(self.log_path, "ab") as log:
            # A session of its own: the server and its children form one process group to signal and wait for.
            self.proc = subprocess.Popen(self._wrap(self._command()), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True)
        try:
            wait_until(self._ready, timeout, f"{self.name} ({self.log_path})", self._check_alive)
        except TimeoutError as exc:
            self.kill()
            raise ServerError(f"{exc}:\n{self.log_tail()}") from None
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Orderly shutdown (the server writes what it must); SIGKILL if it takes longer than ``timeout``."""
        if not self.running:
            return
        self.proc.send_signal(self._shutdown_signal())
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self._wait_group_gone(5.0)

    def kill(self) -> None:
        """SIGKILL the server's main process, as a crash would; then wait until its children are gone too."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._wait_group_gone(10.0)

    def _wait_group_gone(self, timeout: float) -> None:
        """Children notice their parent's death by themselves (PostgreSQL's do); force them after ``timeout``."""
        pgid = self.proc.pid

        def gone() -> bool:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False

        try:
            wait_until(gone, timeout, f"{self.name} process group {pgid}")
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)

    def restart(self, timeout: float = 60.0):
        """Orderly stop, then start again on the same ports with the same data."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop the server and remove its temp dir (kept, and said so, with VALVOJA_TEST_KEEP=1)."""
        try:
            self.stop()
        finally:
            _live.discard(self)
            if KEEP:
                (self.dir / OWNER_FILE).unlink(missing_ok=True)  # kept on purpose: no sweep_stale() either
                print(f"[valvoja tests] kept {self.name} dir {self.dir}", file=sys.stderr)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.close()
