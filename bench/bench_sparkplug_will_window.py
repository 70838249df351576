"""Benchmark: what a Sparkplug Primary Host's clean session gives up when the host dies (collectors/mqtt/README.md,
"Sparkplug Primary Host Application").

    .venv/bin/python bench/bench_sparkplug_will_window.py [--trials 20]

A private mosquitto (tests/servers.py). Per trial: a host process registers the STATE will ({"online": false},
QoS 1, retained, collectors/mqtt/primary_host.py) and publishes its birth; an edge node publishes QoS 0 messages as
fast as it can and stops when the will reaches it (it would hold from then on); an observer stays connected to both
topics. The host is SIGKILLed. The observer's data messages after the will are what a persistent session of the host
would have queued (the broker had noticed the host's death) and a clean session loses. Prints the counts and their
duration at the node's rate; writes bench/results/sparkplug_will_window.json.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from results_io import write_results  # noqa: E402
from servers import MosquittoServer  # noqa: E402

# The host: its will and birth as the collector registers and publishes them, then it waits to be killed.
HOST = """
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from collectors.mqtt.primary_host import PrimaryHost
host = PrimaryHost("bench", sys.argv[2])
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-host", clean_session=True)
c.will_set(*host.will(), qos=1, retain=True)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
c.publish(host.topic, host.birth(), qos=1, retain=True).wait_for_publish(5)
print("up", flush=True)
time.sleep(3600)
"""


def client(port: int, on_message) -> tuple[mqtt.Client, threading.Event]:
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.on_message = on_message
    subscribed = threading.Event()
    c.on_subscribe = lambda *_: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, subscribed


def trial(port: int, k: int) -> tuple[int, float]:
    """(data messages the observer got after the will, the node's publish rate)."""
    host_id = f"bench{k}"
    state, data = f"spBv1.0/STATE/{host_id}", f"bench/{k}/data"
    seen: list[int] = []
    will_at: queue.Queue = queue.Queue()

    def on_observer(c, u, m):
        if m.topic == state and not m.retain and json.loads(m.payload)["online"] is False:
            will_at.put(len(seen))
        elif m.topic == data:
            seen.append(int(m.payload))

    stop = threading.Event()
    observer, sub_o = client(port, on_observer)
    observer.subscribe([(state, 1), (data, 0)])
    node, sub_n = client(port, lambda c, u, m: stop.set() if not json.loads(m.payload)["online"] else None)
    node.subscribe(state, 1)
    assert sub_o.wait(5) and sub_n.wait(5)
    host = subprocess.Popen([sys.executable, "-c", HOST, str(port), host_id], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert host.stdout.readline().strip() == b"up"
        threading.Timer(0.3, host.send_signal, (signal.SIGKILL,)).start()
        sent, t0 = 0, time.monotonic()
        while not stop.is_set():
            if time.monotonic() - t0 > 10:
                raise TimeoutError("the node never saw the will")
            node.publish(data, str(sent), qos=0)
            sent += 1
            time.sleep(0.0002)
        rate = sent / (time.monotonic() - t0)
        time.sleep(0.5)  # the last messages reach the observer
        after = len(seen) - will_at.get(timeout=5)
    finally:
        host.kill()
        host.wait()
        for c in (node, observer):
            c.disconnect()
            c.loop_stop()
    return after, rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    with MosquittoServer(tls=False, password=False) as broker:
        results = [trial(broker.port, k) for k in range(args.trials)]
    after = [a for a, _ in results]
    rate = statistics.median(r for _, r in results)
    out = {"trials": args.trials, "node_rate_per_s": round(rate), "after_will_median": statistics.median(after),
           "after_will_max": max(after), "after_will_min": min(after),
           "window_ms_median": round(statistics.median(after) / rate * 1000, 2),
           "window_ms_max": round(max(after) / rate * 1000, 2)}
    print(f"node at ~{out['node_rate_per_s']}/s; messages after the will (a persistent session keeps them, a clean "
          f"one loses them): median {out['after_will_median']} ({out['window_ms_median']} ms), max "
          f"{out['after_will_max']} ({out['window_ms_max']} ms), min {out['after_will_min']}, {args.trials} trials")
    write_results(out, "sparkplug_will_window.json")


if __name__ == "__main__":
    main()
