"""Benchmark: backfill from an OPC UA server's history (collectors/opcua/history.py) vs a bare asyncua read.

    .venv/bin/python bench/bench_opcua_backfill.py [--tags 200] [--hours 1.0] [--rate 1.0] [--rounds 2]

A child process (its own CPU, as a real server would be) serves ``--tags`` variables whose history holds
``--hours`` of values at ``--rate`` per second each (asyncua's in-memory history). In this process, in alternating
rounds on the same server:

- **bare**: asyncua's own API, ``Node.read_raw_history(start, end)`` node after node (it follows continuation
  points), counting DataValues: the raw limit of reading that history with this client library;
- **collector**: `collectors.opcua` with ``history_backfill_max_s`` starting as a restarted gateway would, its spool
  saying readings were stored up to ``--hours`` ago; an ``emit`` that keeps nothing and acknowledges at once (no
  pipeline: this measures HistoryRead in windows, conversion to `Reading`s, the merge into time order and the
  batching). Timed from the start of the run to ``last_backfill`` being set.

Reported: values/s of each (mean of the rounds), their ratio, the client's CPU % (of one core) and peak RSS
(``ru_maxrss`` of this process), and how long a day of this plant's history would take. Each run must read every
value the history holds, once (``--tags`` x ``--hours`` x 3600 x ``--rate``), or the script fails.
Writes bench/results/opcua_backfill.json. Not a test: numbers vary with the
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from asyncua import Client, ua

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import write_results  # noqa: E402

from collectors.base import CollectorContext  # noqa: E402
from collectors.opcua import Config, build  # noqa: E402
from collectors.simulator.tags import synthetic_tags  # noqa: E402
from edge.metrics import Metrics  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve(endpoint: str, tags: int, hours: float, rate: float, end: datetime) -> None:
    """The child: a simulator server whose variables' history holds ``hours`` of values up to ``end``."""
    from collectors.simulator.opcua_server import SimOpcUaServer

    specs = synthetic_tags(tags)
    server = SimOpcUaServer(specs, endpoint)
    await server.start()
    storage = server.server.iserver.history_manager.storage
    n = int(hours * 3600 * rate)
    step = timedelta(seconds=1 / rate)
    start = end - n * step
    for s in specs:
        node = ua.NodeId.from_string(server.node_id(s.name))
        await storage.new_historized_node(node, None)
        values = storage._datachanges[node]  # filled directly: save_node_value per value takes minutes here
        for k in range(n):
            when = start + (k + 1) * step
            values.append(ua.DataValue(ua.Variant(float(k), ua.VariantType.Double), SourceTimestamp=when,
                                       ServerTimestamp=when))
    print("ready", flush=True)
    await asyncio.Event().wait()


async def bare(endpoint: str, node_ids: list[str], start: datetime, end: datetime) -> int:
    client = Client(endpoint, timeout=60)
    await client.connect()
    try:
        count = 0
        for nid in node_ids:
            count += len(await client.get_node(nid).read_raw_history(start, end, return_bounds=False))
        return count
    finally:
        await client.disconnect()


async def collector(endpoint: str, node_ids: list[str], tags: list[str], start: datetime) -> tuple[int, dict]:
    cfg = Config.model_validate({"endpoint": endpoint, "history_backfill_max_s": 31 * 86400, "request_timeout_s": 60,
                                 "watchdog_interval_s": 10, "connect_timeout_s": 30,
                                 "nodes": [{"node_id": n, "tag": t} for n, t in zip(node_ids, tags, strict=True)]})
    col = build(cfg, CollectorContext(name="bench", state_dir=None, metrics=Metrics()))
    # What a restarted gateway reads from its spool: readings stored up to `start` (less the overlap read again).
    col._mark = start + timedelta(seconds=10)
    count = 0

    async def emit(batch) -> None:
        nonlocal count
        count += len(batch.readings)
        batch.ack()

    task = asyncio.create_task(col.run(emit))
    try:
        while col.last_backfill is None:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await col.aclose()
    return col.backfilled, col.last_backfill


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tags", type=int, default=200)
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--rate", type=float, default=1.0, help="values per second per tag in the history")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--end", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        asyncio.run(serve(a.serve, a.tags, a.hours, a.rate, datetime.fromisoformat(a.end)))
        return
    logging.basicConfig(level=logging.WARNING)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/bench"
    t0 = time.monotonic()
    child = subprocess.Popen([sys.executable, __file__, "--serve", endpoint, "--end", end.isoformat(), "--tags",
                              str(a.tags), "--hours", str(a.hours), "--rate", str(a.rate)], stdout=subprocess.PIPE,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != b"ready":
            raise SystemExit("the server did not start")
        print(f"server ready with {a.tags} x {int(a.hours * 3600 * a.rate)} values in {time.monotonic() - t0:.1f} s")
        asyncio.run(measure(a, endpoint, end))
    finally:
        child.terminate()
        child.wait(10)


async def measure(a: argparse.Namespace, endpoint: str, end: datetime) -> None:
    start = end - timedelta(hours=a.hours)
    tags = [s.name for s in synthetic_tags(a.tags)]
    node_ids = [f"ns=2;s={t}" for t in tags]
    me = psutil.Process()
    expected = a.tags * int(a.hours * 3600 * a.rate)
    rates: dict[str, list[float]] = {"bare": [], "collector": []}
    cpu: dict[str, list[float]] = {"bare": [], "collector": []}
    counts: dict[str, int] = {}
    for r in range(a.rounds):
        for kind in ("bare", "collector"):
            c0, w0 = me.cpu_times(), time.monotonic()
            if kind == "bare":
                n = await bare(endpoint, node_ids, start - timedelta(seconds=1), end + timedelta(seconds=1))
            else:
                n, last = await collector(endpoint, node_ids, tags, start)
                if last["error"]:
                    raise SystemExit(f"backfill failed: {last['error']}")
            wall = time.monotonic() - w0
            c1 = me.cpu_times()
            rates[kind].append(n / wall)
            cpu[kind].append(100 * (c1.user + c1.system - c0.user - c0.system) / wall)
            counts[kind] = n
            if n != expected:  # a backfill that lost or repeated values must not report a rate
                raise SystemExit(f"{kind} read {n:,} values, the history holds {expected:,}")
            print(f"round {r + 1} {kind:9s}: {n:,} values in {wall:.2f} s = {n / wall:,.0f}/s, client CPU "
                  f"{cpu[kind][-1]:.0f} %")
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    # ru_maxrss: the process's true peak over both clients' rounds (the RSS at the end is not one)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    day_s = a.tags * 86400 * a.rate / mean["collector"]
    result = {
        "tags": a.tags, "hours": a.hours, "rate_per_tag_hz": a.rate, "rounds": a.rounds,
        "values": counts, "values_per_s": {k: round(v) for k, v in mean.items()},
        "ratio_collector_to_bare": round(mean["collector"] / mean["bare"], 3),
        "client_cpu_percent": {k: round(sum(v) / len(v), 1) for k, v in cpu.items()},
        "client_rss_mb": round(peak_rss / 2**20, 1),
        "a_day_of_this_history_s": round(day_s, 1),
    }
    print(f"collector {mean['collector']:,.0f} values/s, bare asyncua {mean['bare']:,.0f}/s "
          f"(ratio {result['ratio_collector_to_bare']}); client RSS {result['client_rss_mb']} MB; a day of "
          f"{a.tags} tags at {a.rate:g} Hz: {day_s:.0f} s")
    write_results(result, "opcua_backfill.json")


if __name__ == "__main__":
    main()
