"""edge.forwarder.LatencyReservoir: the latest commit latencies for /healthz, in a ring allocated at the start."""

from __future__ import annotations

import numpy as np

from edge.forwarder import LatencyReservoir
from edge.gateway import _percentiles


def test_keeps_the_latest_samples_oldest_first_across_wraps():
    r = LatencyReservoir(5)
    assert len(r) == 0 and r.values().size == 0 and _percentiles(r.values()) is None
    r.add(np.array([1.0, 2.0]))
    assert r.values().tolist() == [1.0, 2.0]
    r.add(np.array([3.0, 4.0, 5.0, 6.0]))  # wraps
    assert len(r) == 5 and r.values().tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    r.add(np.arange(10.0, 22.0))  # more than the ring holds at once
    assert r.values().tolist() == [17.0, 18.0, 19.0, 20.0, 21.0]
    r.add(np.array([]))
    assert r.values().tolist() == [17.0, 18.0, 19.0, 20.0, 21.0]
    assert _percentiles(r.values()) == {"p50": 19.0, "p99": 20.96, "max": 21.0, "n": 5}


def test_its_memory_is_taken_at_the_start_not_as_samples_come():
    r = LatencyReservoir(200_000)
    before = r._ring.nbytes
    for _ in range(30):
        r.add(np.full(10_000, 0.1))
    assert r._ring.nbytes == before == 1_600_000 and len(r) == 200_000
