"""Benchmark: OPC UA notifications/s through the collector vs a bare asyncua subscription loop.

    .venv/bin/python bench/bench_opcua.py [--tags 2000] [--interval 0.1] [--seconds 10] [--rounds 2]

The plant simulator serves ``--tags`` synthetic variables, all changing every ``--interval``
seconds, from a child process (its own CPU, as a real server would be). In this process, in
alternating rounds on the same server:

- **bare**: asyncua's own loop, ``create_subscription(handler=None)`` + ``async for event in sub``
  (the library's iterator API), counting data-change events;
- **collector**: `collectors.opcua` with an ``emit`` that only counts readings (no pipeline, so
  this measures the collector's cost: conversion to `Reading`s and batching);
- **gateway**: the whole gateway (`edge.gateway.Gateway`, spool-only: no database) with this
  collector, counting readings made durable in the SQLite spool: end to end into the spool.

Reported: notifications/s of each (mean of the rounds), the ratio collector / bare (issue 3 bar
≥ 70 %), client CPU % (of one core: this process's CPU time / wall time) and RSS at the end of the window (all
three run in this one process, so a later mode's RSS includes what an earlier one left), and the rate the server
offered (tags / interval). asyncua's
server is usually the limit here (protocols.md), so both may fall short of the offered rate.
Writes bench/results/opcua.json. Not a test: numbers vary with the machine.

    .venv/bin/python bench/bench_opcua.py --reconnect 10 [--outage 3] [--secure]

Reconnect timing instead: the server (100 tags) is stopped for ``--outage`` seconds and started
again ``--reconnect`` times under the collector and a reconnect loop like the gateway's (back-off
with jitter capped at ``reconnect_max_delay_s``); reported is the time from the server listening
again to the first new reading, p50 and max. ``--secure``: Basic256Sha256 SignAndEncrypt, the
server's certificate in the trust list. Writes bench/results/opcua_reconnect.json.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
from asyncua import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import write_results  # noqa: E402

from collectors.base import CollectorContext  # noqa: E402
from collectors.opcua import Config, build  # noqa: E402
from collectors.simulator.tags import synthetic_tags  # noqa: E402
from edge.metrics import Metrics  # noqa: E402

# Both clients probe the server this often; a busy server (thousands of writes per interval) answers
# slowly, and a shorter probe timeout would end the connection mid-measurement.
WATCHDOG_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tags: int, interval_s: float, endpoint: str, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "collectors.simulator", "--tags", str(tags), "--tags-interval", str(interval_s),
         "--opcua", endpoint, "--log-level", "WARNING", *extra], cwd=ROOT)
    port = int(endpoint.rsplit(":", 1)[1].split("/")[0])
    deadline = time.monotonic() + 300  # 10,000 variables take tens of seconds to build
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("simulator did not start")


class Meter:
    """Counts over a measuring window, after a warm-up; also CPU time and RSS of this process."""

    def __init__(self) -> None:
        self.count = 0
        self.proc = psutil.Process()

    async def measure(self, warmup_s: float, seconds: float) -> dict:
        # Subscribing thousands of items on a busy server takes a while: the clock starts at the first value.
        deadline = time.monotonic() + 300
        while self.count == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("no notification within 300 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(warmup_s)
        n0, c0, t0 = self.count, self.proc.cpu_times(), time.perf_counter()
        await asyncio.sleep(seconds)
        n1, c1, t1 = self.count, self.proc.cpu_times(), time.perf_counter()
        cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0)
        return {"per_s": round((n1 - n0) / (t1 - t0)), "cpu_percent": round(100 * cpu, 1),
                "rss_mb": round(self.proc.memory_info().rss / 2**20, 1)}


async def bare(endpoint: str, nodes: list[str], publishing_ms: float, warmup_s: float, seconds: float) -> dict:
    meter = Meter()
    client = Client(endpoint, timeout=30, watchdog_intervall=WATCHDOG_S)
    await client.connect()
    try:
        sub = await client.create_subscription(publishing_ms, None, queue_maxsize=1_000_000)
        for i in range(0, len(nodes), 500):
            await sub.subscribe_data_change([client.get_node(n) for n in nodes[i:i + 500]], queuesize=100,
                                            sampling_interval=0)

        async def consume() -> None:
            async for _ in sub:
                meter.count += 1

        task = asyncio.create_task(consume())
        result = await meter.measure(warmup_s, seconds)
        task.cancel()
        return result
    finally:
        await client.disconnect()


async def collector(endpoint: str, nodes: list[str], publishing_ms: float, warmup_s: float, seconds: float) -> dict:
    meter = Meter()
    cfg = Config(endpoint=endpoint, publishing_interval_ms=publishing_ms, sampling_interval_ms=0, queue_size=100,
                 connect_timeout_s=60, request_timeout_s=30, watchdog_interval_s=WATCHDOG_S,
                 nodes=[{"node_id": n, "tag": n.split("s=", 1)[1]} for n in nodes])
    col = build(cfg, CollectorContext(name="bench", state_dir=None, metrics=Metrics()))

    async def emit(batch) -> None:
        meter.count += len(batch.readings)
        if batch.ack is not None:
            batch.ack()

    task = asyncio.create_task(col.run(emit))
    try:
        return await meter.measure(warmup_s, seconds)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await col.aclose()


async def gateway(endpoint: str, nodes: list[str], publishing_ms: float, warmup_s: float, seconds: float) -> dict:
    """The whole gateway in this process, spool-only: readings/s made durable in the SQLite spool."""
    import tempfile

    from edge import settings
    from edge.gateway import Gateway

    work = Path(tempfile.mkdtemp(prefix="bench-opcua-gw-"))
    lines = ["[site]", 'name = "bench"', 'gateway_id = "bench"', f'state_dir = "{work / "var"}"', "",
             "[http]", "enabled = false", "", "[logging]", 'level = "WARNING"', "",
             "[[collectors]]", 'kind = "opcua"', 'name = "bench"', f'endpoint = "{endpoint}"',
             f"publishing_interval_ms = {publishing_ms}", "sampling_interval_ms = 0.0", "queue_size = 100",
             "connect_timeout_s = 60.0", "request_timeout_s = 30.0", f"watchdog_interval_s = {WATCHDOG_S}", ""]
    for n in nodes:
        lines += ["[[collectors.nodes]]", f'node_id = "{n}"', f'tag = "{n.split("s=", 1)[1]}"', ""]
    site = work / "site.toml"
    site.write_text("\n".join(lines))
    gw = Gateway(settings.load(site))
    meter = Meter()
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))

    async def follow() -> None:
        while True:
            meter.count = gw.ingest.accepted
            await asyncio.sleep(0.02)

    follower = asyncio.create_task(follow())
    try:
        return await meter.measure(warmup_s, seconds)
    finally:
        follower.cancel()
        stop.set()
        await asyncio.wait_for(task, 120)


async def main_async(args) -> dict:
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    t0 = time.perf_counter()
    server = start_server(args.tags, args.interval, endpoint)
    startup_s = time.perf_counter() - t0
    nodes = [f"ns=2;s={t.name}" for t in synthetic_tags(args.tags)]
    runs: dict[str, list[dict]] = {"bare": [], "collector": [], "gateway": []}
    try:
        for _ in range(args.rounds):
            for name, fn in (("bare", bare), ("collector", collector), ("gateway", gateway)):
                r = await fn(endpoint, nodes, args.publishing_ms, args.warmup, args.seconds)
                runs[name].append(r)
                print(f"  {name:9} {r['per_s']:>8} notifications/s  cpu {r['cpu_percent']:5.1f} %  "
                      f"rss {r['rss_mb']} MB", flush=True)
    finally:
        server.terminate()
        server.wait(30)

    def mean(name: str, key: str) -> float:
        return round(sum(r[key] for r in runs[name]) / len(runs[name]), 1)

    result = {
        "tags": args.tags, "update_interval_s": args.interval, "publishing_interval_ms": args.publishing_ms,
        "offered_per_s": round(args.tags / args.interval), "seconds_per_round": args.seconds, "rounds": args.rounds,
        "server_startup_s": round(startup_s, 1), "cpus": os.cpu_count(),
        "bare_per_s": mean("bare", "per_s"), "collector_per_s": mean("collector", "per_s"),
        "bare_cpu_percent": mean("bare", "cpu_percent"), "collector_cpu_percent": mean("collector", "cpu_percent"),
        "collector_rss_mb": max(r["rss_mb"] for r in runs["collector"]),
        "gateway_per_s": mean("gateway", "per_s"), "gateway_cpu_percent": mean("gateway", "cpu_percent"),
        "gateway_rss_mb": max(r["rss_mb"] for r in runs["gateway"]), "runs": runs,
    }
    result["ratio"] = round(result["collector_per_s"] / result["bare_per_s"], 3) if result["bare_per_s"] else None
    result["gateway_ratio"] = (round(result["gateway_per_s"] / result["bare_per_s"], 3)
                               if result["bare_per_s"] else None)
    return result


async def reconnect_async(args) -> dict:
    """Restart the server ``args.reconnect`` times; time from its return to the collector's first new reading."""
    import random
    import shutil
    import statistics
    import tempfile

    from edge.backoff import Backoff
    from edge.errors import NotConnectedError

    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    work = Path(tempfile.mkdtemp(prefix="bench-opcua-"))
    extra: tuple[str, ...] = ()
    security = {}
    if args.secure:
        sys.path.insert(0, str(ROOT / "tests"))
        from opcua_support import server_certificate

        cert, key = server_certificate(work / "server", "bench")
        (work / "pki" / "trusted").mkdir(parents=True)
        shutil.copy(cert, work / "pki" / "trusted")
        extra = ("--opcua-cert", cert, "--opcua-key", key, "--opcua-policy", "Basic256Sha256_SignAndEncrypt")
        security = {"security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
                    "pki_dir": str(work / "pki")}
    tags = [f"ns=2;s={t.name}" for t in synthetic_tags(100)]
    cfg = Config(endpoint=endpoint, publishing_interval_ms=100, sampling_interval_ms=0, connect_timeout_s=3,
                 watchdog_interval_s=0.5, nodes=[{"node_id": n, "tag": n.split("s=", 1)[1]} for n in tags],
                 **security)
    col = build(cfg, CollectorContext(name="bench", state_dir=work, metrics=Metrics()))
    first_after: dict[str, float | None] = {"t": None}
    got = asyncio.Event()

    async def emit(batch) -> None:
        if batch.ack is not None:
            batch.ack()
        if first_after["t"] is None:
            first_after["t"] = time.monotonic()
            got.set()

    async def supervise() -> None:  # the gateway's loop (edge/gateway.py _supervise), without the pipeline
        backoff = Backoff(max_s=col.reconnect_max_delay_s, _rng=random.Random(7))
        while True:
            t0 = time.monotonic()
            try:
                await col.run(emit)
            except NotConnectedError:
                pass
            if time.monotonic() - t0 > 30:
                backoff.reset()
            await col.aclose()
            await asyncio.sleep(backoff.next_delay())

    server = start_server(100, 0.1, endpoint, *extra)
    task = asyncio.create_task(supervise())
    times: list[float] = []
    try:
        await asyncio.wait_for(got.wait(), 60)
        for k in range(args.reconnect):
            server.terminate()
            server.wait(30)
            await asyncio.sleep(args.outage)
            first_after["t"] = None
            got.clear()
            server = start_server(100, 0.1, endpoint, *extra)
            back = time.monotonic()
            await asyncio.wait_for(got.wait(), 60)
            times.append(first_after["t"] - back)
            print(f"  restart {k + 1}: first new reading {times[-1]:.2f} s after the server was back", flush=True)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await col.aclose()
        server.terminate()
        server.wait(30)
    return {"restarts": len(times), "outage_s": args.outage, "secure": bool(args.secure),
            "reconnect_max_delay_s": cfg.reconnect_max_delay_s, "p50_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3), "times_s": [round(t, 3) for t in times]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tags", type=int, default=2000)
    p.add_argument("--interval", type=float, default=0.1, help="seconds between value changes")
    p.add_argument("--publishing-ms", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=10.0, help="measuring window per round")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reconnect", type=int, default=0, metavar="N", help="measure N server restarts instead")
    p.add_argument("--outage", type=float, default=3.0, help="seconds the server is down per restart")
    p.add_argument("--secure", action="store_true", help="reconnect over Basic256Sha256 SignAndEncrypt")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    logging.getLogger("collectors").setLevel(logging.ERROR)
    if args.reconnect:
        print(f"OPC UA reconnect: {args.reconnect} restarts, {args.outage} s down each"
              f"{', Basic256Sha256 SignAndEncrypt' if args.secure else ''}", flush=True)
        result = asyncio.run(reconnect_async(args))
        print(f"first reading after the server's return: p50 {result['p50_s']} s, max {result['max_s']} s")
        write_results(result, args.out or "opcua_reconnect.json")
        return
    args.out = args.out or ROOT / "bench" / "results" / "opcua.json"
    print(f"OPC UA: {args.tags} tags changing every {args.interval} s "
          f"(offered {args.tags / args.interval:.0f}/s), {args.rounds} rounds of {args.seconds} s", flush=True)
    result = asyncio.run(main_async(args))
    print(f"bare asyncua loop: {result['bare_per_s']:.0f}/s (cpu {result['bare_cpu_percent']} %)")
    print(f"collector:         {result['collector_per_s']:.0f}/s (cpu {result['collector_cpu_percent']} %, "
          f"rss {result['collector_rss_mb']} MB)")
    print(f"gateway into spool: {result['gateway_per_s']:.0f}/s (cpu {result['gateway_cpu_percent']} %, "
          f"rss {result['gateway_rss_mb']} MB)")
    print(f"ratio collector / bare: {result['ratio']}; gateway (end to end into the spool) / bare: "
          f"{result['gateway_ratio']}")
    write_results(result, args.out)


if __name__ == "__main__":
    main()
