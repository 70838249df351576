"""Benchmark: MQTT payload decoding rate (readings/s), no broker — the collector's share of the hot path.

    .venv/bin/python bench/bench_mqtt_decode.py [--messages 2000] [--samples 100] [--repeat 5]

Cases, each with ``--samples`` readings per message (1,000 tags in the message stream):
- ``json_batch``: ``{"samples": [{"tag": ..., "t": <epoch ms>, "v": <float>}, ...]}`` (multi-tag batches);
- ``json_iso``: the same with ISO-8601 timestamps;
- ``json_array_one_tag``: ``[{"t": ..., "v": ...}, ...]`` on a per-tag topic (tag from the topic);
- ``sparkplug_ddata``: DDATA with metrics by alias and per-metric timestamps;
- ``sparkplug_templates``: NDATA of 100 Template (UDT) instances by alias x 10 Double members with their own
  timestamps, each member a reading (``--messages`` / 10 messages of 1,000 readings; before the templates were
  flattened, no reading);
- ``plain``: one number per message (readings/s = messages/s).
Best of ``--repeat`` runs (the least disturbed by the rest of the machine); each case must decode every sample it
was given, or the script fails. Prints a table and writes bench/results/mqtt_decode.json.

With ``--broker HOST:PORT`` it also runs the whole collector against that broker: a paho publisher sends
``--messages`` JSON batches at QoS 1 (published beforehand into the collector's persistent session, so the
publisher's speed does not limit the figure), and an ``emit`` that acknowledges at once receives them —
the collector's rate without the gateway's spool.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import write_results  # noqa: E402

from collectors.mqtt.config import Subscription  # noqa: E402
from collectors.mqtt.decode import make_decoder  # noqa: E402
from collectors.mqtt.sparkplug_encode import EdgeNode, Metric, Template  # noqa: E402

TAGS = [f"P-{i // 10:03d}.s{i % 10}" for i in range(1000)]
T0_MS = 1_714_564_800_000


def json_batches(n: int, k: int, iso: bool) -> list[tuple[bytes, str]]:
    rnd = random.Random(1)
    out = []
    for m in range(n):
        samples = []
        for j in range(k):
            ms = T0_MS + m * k + j
            t = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).isoformat() if iso else ms
            samples.append({"tag": TAGS[(m * k + j) % len(TAGS)], "t": t, "v": rnd.random() * 100})
        out.append((orjson.dumps({"samples": samples}), "bench/line1"))
    return out


def json_arrays(n: int, k: int) -> list[tuple[bytes, str]]:
    rnd = random.Random(2)
    return [(orjson.dumps([{"t": T0_MS + m * k + j, "v": rnd.random()} for j in range(k)]),
             f"single/{TAGS[m % len(TAGS)]}") for m in range(n)]


def sparkplug(n: int, k: int) -> tuple[list[tuple[bytes, str]], tuple[bytes, str]]:
    rnd = random.Random(3)
    node = EdgeNode("Bench", "node1")
    topic, birth = node.device_birth("dev1", {t: 0.0 for t in TAGS})
    out = []
    for m in range(n):
        samples = [(TAGS[(m * k + j) % len(TAGS)], rnd.random(), T0_MS + m * k + j) for j in range(k)]
        t, p = node.data(samples, device="dev1")
        out.append((p, t))
    return out, (birth, topic)


def sparkplug_templates(n: int, instances: int = 100, members: int = 10
                        ) -> tuple[list[tuple[bytes, str]], tuple[bytes, str]]:
    rnd = random.Random(5)
    node = EdgeNode("Bench", "udt1")
    names = [f"m{j}" for j in range(members)]
    udt = Template([Metric(m, 0.0) for m in names], definition=True)
    topic, birth = node.birth({f"Line/Motor{i}": Template([Metric(m, 0.0) for m in names], ref="Motor")
                               for i in range(instances)}, definitions={"Motor": udt})
    out = []
    for m in range(n):
        ts = T0_MS + m
        t, p = node.data([(f"Line/Motor{i}", Template([Metric(x, rnd.random(), timestamp_ms=ts) for x in names]), ts)
                          for i in range(instances)])
        out.append((p, t))
    return out, (birth, topic)


def plain(n: int) -> list[tuple[bytes, str]]:
    rnd = random.Random(4)
    return [(repr(rnd.random() * 100).encode(), f"plain/{TAGS[m % len(TAGS)]}") for m in range(n)]


def measure(decoder, messages, repeat: int) -> tuple[float, float, int]:
    """Best (readings/s, messages/s) over ``repeat`` passes."""
    best = float("inf")
    readings = 0
    now = datetime.now(UTC)
    for _ in range(repeat):
        t0 = time.perf_counter()
        readings = 0
        for payload, topic in messages:
            readings += len(decoder(payload, topic, now))
        best = min(best, time.perf_counter() - t0)
    return readings / best, len(messages) / best, readings


def through_broker(host: str, port: int, messages: list[tuple[bytes, str]], sub: Subscription) -> tuple[float, float]:
    """(readings/s, messages/s) of the collector draining ``messages`` queued for it on a real broker."""
    import tempfile

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from collectors.base import CollectorContext
    from collectors.mqtt import Config, build
    from edge.metrics import Metrics

    cfg = Config(host=host, port=port, client_id=f"bench-{time.time_ns()}", subscriptions=[sub], max_inflight=2000)

    async def run() -> tuple[float, float]:
        got = {"n": 0, "readings": 0, "first": 0.0, "last": 0.0}
        done = asyncio.Event()

        async def emit(batch) -> None:
            now = time.perf_counter()
            got["first"] = got["first"] or now
            got["n"] += 1
            got["readings"] += len(batch.readings)
            got["last"] = now
            batch.ack()
            if got["n"] == len(messages):
                done.set()

        with tempfile.TemporaryDirectory() as state:
            collector = build(cfg, CollectorContext(name="bench", state_dir=state, metrics=Metrics()))
            task = asyncio.create_task(collector.run(emit))
            while not collector.connected:  # noqa: ASYNC110 - set by paho's thread, no event to await
                await asyncio.sleep(0.01)
            await collector.aclose()  # the session (and subscription) stays with the broker
            task.cancel()
            await asyncio.to_thread(publish_all, host, port, messages)
            task = asyncio.create_task(collector.run(emit))
            await asyncio.wait_for(done.wait(), 300)
            task.cancel()
            await collector.aclose()
        span = got["last"] - got["first"]
        return got["readings"] / span, got["n"] / span

    def publish_all(h: str, p: int, msgs) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.connect(h, p)
        client.loop_start()
        pending = []
        for payload, topic in msgs:
            pending.append(client.publish(topic, payload, qos=1))
            if len(pending) >= 1000:  # paho refuses more than 65,535 unacknowledged
                pending.pop(0).wait_for_publish(30)
        for info in pending:
            info.wait_for_publish(30)
        client.disconnect()
        client.loop_stop()

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--broker", metavar="HOST:PORT", help="also measure the collector through this broker")
    args = ap.parse_args()
    n, k = args.messages, args.samples

    results = {}
    batch_sub = Subscription.model_validate({"topic": "bench/+line", "json": {
        "samples": "samples", "tag": "tag", "time": "t", "value": "v", "time_format": "epoch_ms"}})
    results["json_batch"] = measure(make_decoder(batch_sub), json_batches(n, k, iso=False), args.repeat)
    iso_sub = batch_sub.model_copy(update={"json_": batch_sub.json_.model_copy(update={"time_format": "iso8601"})})
    results["json_iso"] = measure(make_decoder(iso_sub), json_batches(n, k, iso=True), args.repeat)
    arr_sub = Subscription.model_validate({"topic": "single/+tag", "tag": "{tag}",
                                           "json": {"time": "t", "value": "v", "time_format": "epoch_ms"}})
    results["json_array_one_tag"] = measure(make_decoder(arr_sub), json_arrays(n, k), args.repeat)
    sp_dec = make_decoder(Subscription.model_validate({"topic": "spBv1.0/#", "format": "sparkplug"}))
    sp_msgs, (birth, birth_topic) = sparkplug(n, k)
    sp_dec(birth, birth_topic, datetime.now(UTC))
    results["sparkplug_ddata"] = measure(sp_dec, sp_msgs, args.repeat)
    udt_msgs, (birth, birth_topic) = sparkplug_templates(max(1, n // 10))
    sp_dec(birth, birth_topic, datetime.now(UTC))
    results["sparkplug_templates"] = measure(sp_dec, udt_msgs, args.repeat)
    plain_dec = make_decoder(Subscription.model_validate({"topic": "plain/#", "format": "plain", "tag": "{#}"}))
    results["plain"] = measure(plain_dec, plain(n * 10), args.repeat)

    for name, (_, _, got) in results.items():
        want = n * 10 if name == "plain" else max(1, n // 10) * 1000 if name == "sparkplug_templates" else n * k
        if got != want:  # a decoder that drops samples must not be timed as if it did the work
            raise SystemExit(f"{name}: decoded {got:,} readings of {want:,}")

    if args.broker:
        host, _, port = args.broker.rpartition(":")
        results["collector_via_broker"] = (*through_broker(host, int(port), json_batches(n, k, iso=False), batch_sub),
                                           n * k)

    print(f"MQTT decode, {k} samples per message ({n} messages; plain: {n * 10} messages), best of {args.repeat}")
    print(f"{'case':<22}{'readings/s':>14}{'messages/s':>14}")
    for name, (rps, mps, _) in results.items():
        print(f"{name:<22}{rps:>14,.0f}{mps:>14,.0f}")
    out = {
        "benchmark": "mqtt_decode",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "samples_per_message": k,
        "messages": n,
        "results": {name: {"readings_per_s": round(rps), "messages_per_s": round(mps), "readings": r}
                    for name, (rps, mps, r) in results.items()},
        "bar": {"json_batch_readings_per_s": 300_000},
    }
    write_results(out, "mqtt_decode.json")


if __name__ == "__main__":
    main()
