"""Benchmark: OPC UA notifications/s through the collector vs a bare asyncua subscription loop.

    .venv/bin/python bench/bench_opcua.py [--tags 2000] [--interval 0.1] [--seconds 10] [--rounds 2]

The plant simulator serves ``--tags`` synthetic variables, all changing every ``--interval``
seconds, from a child process (its own CPU, as a real server would be). In this process, in
alternating rounds on the same server:

- **bare**: asyncua's own loop, ``create_subscription(handler=None)`` + ``async for event in sub``
  (the library's iterator API), counting data-change events;
- **collector**: `collectors.opcua` with an ``emit`` that only counts readings (no pipeline, so
  this measures the collector's cost: conversion to `Reading`s and batching).

Reported: notifications/s of each (mean of the rounds), the ratio collector / bare (issue 3 bar
≥ 70 %), client CPU % and RSS, and the rate the server offered (tags / interval). asyncua's
server is usually the limit here (protocols.md), so both may fall short of the offered rate.
Writes bench/results/opcua.json. Not a test: numbers vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


def start_server(tags: int, interval_s: float, endpoint: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "collectors.simulator", "--tags", str(tags), "--tags-interval", str(interval_s),
         "--opcua", endpoint, "--log-level", "WARNING"], cwd=ROOT)
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

    task = asyncio.create_task(col.run(emit))
    try:
        return await meter.measure(warmup_s, seconds)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await col.aclose()


async def main_async(args) -> dict:
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    t0 = time.perf_counter()
    server = start_server(args.tags, args.interval, endpoint)
    startup_s = time.perf_counter() - t0
    nodes = [f"ns=2;s={t.name}" for t in synthetic_tags(args.tags)]
    runs: dict[str, list[dict]] = {"bare": [], "collector": []}
    try:
        for _ in range(args.rounds):
            for name, fn in (("bare", bare), ("collector", collector)):
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
        "collector_rss_mb": max(r["rss_mb"] for r in runs["collector"]), "runs": runs,
    }
    result["ratio"] = round(result["collector_per_s"] / result["bare_per_s"], 3) if result["bare_per_s"] else None
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tags", type=int, default=2000)
    p.add_argument("--interval", type=float, default=0.1, help="seconds between value changes")
    p.add_argument("--publishing-ms", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=10.0, help="measuring window per round")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "opcua.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    print(f"OPC UA: {args.tags} tags changing every {args.interval} s "
          f"(offered {args.tags / args.interval:.0f}/s), {args.rounds} rounds of {args.seconds} s", flush=True)
    result = asyncio.run(main_async(args))
    print(f"bare asyncua loop: {result['bare_per_s']:.0f}/s (cpu {result['bare_cpu_percent']} %)")
    print(f"collector:         {result['collector_per_s']:.0f}/s (cpu {result['collector_cpu_percent']} %, "
          f"rss {result['collector_rss_mb']} MB)")
    print(f"ratio collector / bare: {result['ratio']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
