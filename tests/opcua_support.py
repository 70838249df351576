"""Helpers for the OPC UA tests: free ports, the plant simulator (child process or in-process), RSA certificates."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import asynccontextmanager
from pathlib import Path

from serverproc import free_port

ROOT = Path(__file__).resolve().parents[1]


class CutProxy:
    """A loopback TCP proxy to ``127.0.0.1:target_port`` that can cut the network: `cut` aborts every connection
    (both sides see a reset) and refuses new ones (the port stops listening) for a while, then accepts again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self._last_byte = 0.0
        self.hung = False  # `hang`: connections accepted and kept, nothing passes

    def endpoint(self, path: str = "/sim") -> str:
        return f"opc.tcp://127.0.0.1:{self.port}{path}"

    async def start(self) -> CutProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._links.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                self._last_byte = time.monotonic()
                if self.hung:
                    continue
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            dst.transport.abort()
            self._links.discard(dst)

    def hang(self, hung: bool = True) -> None:
        """Let nothing pass, keeping every connection open and accepting new ones: a server that hangs (not one
        that refuses) or a dead network path."""
        self.hung = hung

    async def cut(self, seconds: float, *, quiet_s: float = 0.0) -> None:
        """Cut every connection and refuse new ones for ``seconds``. ``quiet_s``: first wait until no byte has
        passed for that long (an OPC UA client then has a Publish request waiting at the server)."""
        while True:
            wait = quiet_s - (time.monotonic() - self._last_byte)
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        self._stop_listening()
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()
        await asyncio.sleep(seconds)
        await self.start()

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def stop(self) -> None:
        self._stop_listening()
        for writer in list(self._links):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class SimProcess:
    """``python -m collectors.simulator`` serving OPC UA on ``endpoint`` (output in ``workdir/simulator.log``)."""

    def __init__(self, endpoint: str, workdir: Path, *args: str) -> None:
        self.endpoint = endpoint
        self.port = int(endpoint.rsplit(":", 1)[1].split("/")[0])
        self.args = args
        self.log = Path(workdir) / "simulator.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "collectors.simulator", "--opcua", self.endpoint, *self.args]

    def ready(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def start(self, timeout_s: float = 30.0, env: dict[str, str] | None = None) -> SimProcess:
        with open(self.log, "ab") as logf:  # the child keeps its own handle
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulator exited: {self.log.read_text()[-2000:]}")
            if self.ready():
                return self
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


class CounterProcess(SimProcess):
    """``tests/opcua_counter.py`` on ``endpoint``: variables ``SYN.00001`` ... count, value k at source time
    ``origin + k x period``; `last` is the last k written. Started once the first value is written."""

    def __init__(self, endpoint: str, workdir: Path, *args: str) -> None:
        super().__init__(endpoint, workdir, *args)
        self.out = Path(workdir) / f"counter-{self.port}-{time.monotonic_ns()}.txt"

    def command(self) -> list[str]:
        return [sys.executable, str(ROOT / "tests" / "opcua_counter.py"), self.endpoint, str(self.out), *self.args]

    def ready(self) -> bool:
        return self.out.exists() and super().ready()

    def last(self) -> int:
        return int(self.out.read_text())


# -- in-process helpers shared by the OPC UA tests ----------------------------------------------------------


class Sink:
    """A test's own `emit`: keeps every batch (and acknowledges it, as the spool would)."""

    def __init__(self) -> None:
        self.batches: list = []
        self.readings: list = []

    async def emit(self, batch) -> None:
        self.batches.append(batch)
        self.readings.extend(batch.readings)
        if batch.ack is not None:  # stored, as the pipeline says once the spool has a batch
            batch.ack()

    def by_tag(self) -> dict[str, list]:
        out: dict[str, list] = defaultdict(list)
        for r in self.readings:
            out[r.tag].append(r)
        return out


@asynccontextmanager
async def _as_task(col, coro):
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await col.aclose()


@asynccontextmanager
async def running(col, emit):
    """``col.run(emit)`` as a task for the block; cancelled and closed afterwards."""
    async with _as_task(col, col.run(emit)) as task:
        yield task


@asynccontextmanager
async def supervised(col, emit, retry_s: float = 0.3):
    """``col.run(emit)`` in a loop as the gateway runs it (on NotConnectedError: close, retry after ``retry_s``)
    for the block; yields the errors the runs ended with."""
    from edge.errors import NotConnectedError

    errors: list[str] = []

    async def loop() -> None:
        while True:
            try:
                await col.run(emit)
            except NotConnectedError as exc:
                errors.append(str(exc))
            await col.aclose()
            await asyncio.sleep(retry_s)

    async with _as_task(col, loop()):
        yield errors


@asynccontextmanager
async def serving(tags, endpoint: str, **kw):
    """A bare simulator OPC UA server with these tags for the block."""
    from collectors.simulator.opcua_server import SimOpcUaServer

    server = SimOpcUaServer(tags, endpoint, **kw)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def plant_server(path: str, **variables) -> tuple:
    """An asyncua server at ``opc.tcp://127.0.0.1:<free port>/<path>`` with a ``Plant`` object holding one variable
    per keyword (name = initial value), not started (``async with`` it). Returns ``(server, endpoint, namespace
    index, {name: node})``: node ids are ``ns=<ns>;s=<name>``."""
    from asyncua import Server, ua

    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/{path}"
    srv = Server()
    await srv.init()
    srv.set_endpoint(endpoint)
    ns = await srv.register_namespace(f"urn:valvoja:test:{path}")
    plant = await srv.nodes.objects.add_object(ua.NodeId("Plant", ns), "Plant")
    nodes = {name: await plant.add_variable(ua.NodeId(name, ns), name, value) for name, value in variables.items()}
    return srv, endpoint, ns, nodes


async def until(predicate, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


class RsaCa:
    """An RSA certificate authority for OPC UA tests (OPC UA's policies need RSA keys)."""

    def __init__(self, directory: Path, name: str = "opcua-ca") -> None:
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import NameOID

        from collectors.opcua.security import new_key

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Valvoja test {name}")])
        now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256()))
        self.cert_path = self.directory / f"{name}.der"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.DER))


def server_certificate(directory: Path, name: str, *, ca: RsaCa | None = None, expired: bool = False,
                       uri: str = "urn:valvoja:simulator:server", dns: tuple[str, ...] | None = None,
                       ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[str, str]:
    """An OPC UA server certificate (DER) and key (PEM) in ``directory``: self-signed unless ``ca``; host names
    ``dns`` (default localhost and this machine's name) and ``ips``."""
    import datetime as dt

    from cryptography.hazmat.primitives import serialization

    from collectors.opcua.security import make_certificate, new_key, write_key

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = new_key()
    start = dt.datetime.now(dt.UTC) - (dt.timedelta(days=40) if expired else dt.timedelta(minutes=5))
    cert = make_certificate(key, uri, f"Valvoja test server {name}", client=False,
                            dns=("localhost", socket.gethostname()) if dns is None else dns, ips=ips, days=30,
                            not_before=start,
                            issuer=(ca.cert, ca.key) if ca else None)
    cert_path, key_path = directory / f"{name}.der", directory / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    write_key(key, key_path)
    return str(cert_path), str(key_path)
