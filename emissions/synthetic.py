"""Synthetic stacks and data for tests, benchmarks and demos (not used by the monitoring itself).

`waste_stack` / `lcp_stack` build configurations with six pollutants; `synthetic_series` makes
one-minute analyser signals with a daily load cycle, noise, analyser outages, start-ups and a few
high episodes; `copy_readings` seeds the ``readings`` table with binary COPY built in numpy
(`emissions.pgcopy`), so a year of minutes loads in seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg

from edge.records import Flag
from emissions import pgcopy
from emissions.config import StackConfig

WASTE_POLLUTANTS = {  # name: (typical level, daily ELV, half-hour column A, column B)
    "NOx": (120.0, 200.0, 400.0, 200.0), "SO2": (20.0, 50.0, 200.0, 50.0), "CO": (15.0, 50.0, None, None),
    "dust": (2.0, 10.0, 30.0, 10.0), "TOC": (3.0, 10.0, 20.0, 10.0), "HCl": (4.0, 10.0, 60.0, 10.0),
}


def waste_stack(name: str = "WI1", **overrides: Any) -> StackConfig:
    """A waste incinerator line: six pollutants in mg/m³ dry at standard conditions, O2 dry, flow, state."""
    pollutants = []
    for pol, (_, day, a, b) in WASTE_POLLUTANTS.items():
        elv = {"day": day}
        if a is not None:
            elv |= {"half_hour_100": a, "half_hour_97": b}
        if pol == "CO":
            elv |= {"half_hour_95": 100.0, "ten_min_95": 150.0}
        pollutants.append({"name": pol, "tag": f"{name}.{pol}", "unit": "mg/m3", "elv": elv})
    data = {"name": name, "regime": "waste_incineration", "reference_o2_percent": 11.0, "ten_min": True,
            "operating_state_tag": f"{name}.state", "excluded_states": [0, 1, 3],
            "o2": {"tag": f"{name}.O2"}, "h2o": {"value": 15.0},
            "flow": {"tag": f"{name}.flow", "moisture": "dry", "conditions": "standard"},
            "pollutants": pollutants}
    data.update(overrides)
    return StackConfig.model_validate(data)


def lcp_stack(name: str = "K1", **overrides: Any) -> StackConfig:
    """A gas-fired boiler: NOx in ppm dry, CO ppm, SO2 and dust mg/m³, O2 wet with H2O, flow actual wet."""
    data = {"name": name, "regime": "lcp", "reference_o2_percent": 3.0,
            "o2": {"tag": f"{name}.O2", "basis": "wet"}, "h2o": {"tag": f"{name}.H2O"},
            "temperature": {"tag": f"{name}.T"}, "pressure": {"tag": f"{name}.p"},
            "flow": {"tag": f"{name}.flow"},
            "pollutants": [
                {"name": "NOx", "tag": f"{name}.NOx", "unit": "ppm", "elv": {"month": 100.0}},
                {"name": "CO", "tag": f"{name}.CO", "unit": "ppm", "elv": {"month": 100.0}},
                {"name": "SO2", "tag": f"{name}.SO2", "unit": "mg/m3", "elv": {"month": 35.0}},
                {"name": "dust", "tag": f"{name}.dust", "unit": "mg/m3", "elv": {"month": 5.0}}]}
    data.update(overrides)
    return StackConfig.model_validate(data)


def synthetic_series(cfg: StackConfig, start: int, minutes: int, seed: int = 1) -> dict[str, tuple]:
    """tag -> (times_s, values, flags) of one-minute readings for a waste stack made by `waste_stack`.

    Includes per pollutant a few analyser outages (no readings), a weekly high episode, and a start-up
    every 30 days (state 1 for two hours, then 2 = normal operation; the state tag is sent on change).
    """
    rng = np.random.default_rng(seed)
    t = start + 60 * np.arange(minutes, dtype=np.int64)
    day_phase = 2 * np.pi * ((t % 86400) / 86400.0)
    load = 1.0 + 0.15 * np.sin(day_phase)
    out: dict[str, tuple] = {}
    for pol in cfg.pollutants:
        level = WASTE_POLLUTANTS.get(pol.name, (10.0,))[0]
        v = level * load * (1 + 0.1 * rng.standard_normal(minutes))
        episodes = rng.integers(0, minutes - 120, size=max(minutes // (7 * 1440), 1))
        for e in episodes:
            v[e: e + 90] *= 2.5
        keep = np.ones(minutes, dtype=bool)
        for e in rng.integers(0, minutes - 300, size=max(minutes // (20 * 1440), 1)):
            keep[e: e + int(rng.integers(30, 300))] = False  # analyser outage
        out[pol.tag] = (t[keep], np.abs(v[keep]), np.zeros(int(keep.sum()), dtype=np.int32))
    out[cfg.o2.tag] = (t, 9.0 + 0.8 * np.sin(day_phase + 1) + 0.3 * rng.standard_normal(minutes),
                       np.zeros(minutes, np.int32))
    out[cfg.flow.tag] = (t, 9.0e4 * load, np.zeros(minutes, np.int32))
    if cfg.operating_state_tag:
        st_t, st_v = [start], [2.0]
        for d in range(30, minutes // 1440, 30):
            st_t += [start + d * 86400, start + d * 86400 + 7200]
            st_v += [1.0, 2.0]
        out[cfg.operating_state_tag] = (np.array(st_t, np.int64), np.array(st_v), np.zeros(len(st_t), np.int32))
    return out


def ensure_tags(conn: psycopg.Connection, names: list[str], asset: str = "") -> dict[str, int]:
    """Register tags (idempotent) and return their ids."""
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO tags (name, asset, configured) VALUES (%s, %s, true)"
                        " ON CONFLICT (name) DO NOTHING", [(n, asset) for n in names])
        cur.execute("SELECT name, id FROM tags WHERE name = ANY(%s)", (names,))
        return dict(cur.fetchall())


def encode_readings(tag_id: int, times_s: np.ndarray, values: np.ndarray, flags: np.ndarray | None = None,
                    quality: np.ndarray | None = None) -> bytes:
    """A binary COPY stream of ``readings`` rows for one tag (receive time = source time)."""
    ts = pgcopy.pg_us(times_s)
    rows = pgcopy.build(len(ts), [
        ("time", ">i8", ts), ("tag_id", ">i4", tag_id), ("value", ">f8", values), ("value_text", None, None),
        ("quality", ">i2", 0 if quality is None else quality), ("flags", ">i4", 0 if flags is None else flags),
        ("status", ">i8", 0), ("receive_time", ">i8", ts), ("server_time", None, None)])
    return pgcopy.HEADER + rows + pgcopy.TRAILER


def copy_readings(conn: psycopg.Connection, tag_id: int, times_s: np.ndarray, values: np.ndarray,
                  flags: np.ndarray | None = None, quality: np.ndarray | None = None) -> int:
    """Load one tag's readings with binary COPY; returns the row count."""
    buf = encode_readings(tag_id, times_s, values, flags, quality)
    with conn.cursor() as cur, cur.copy("COPY readings (time, tag_id, value, value_text, quality, flags, status,"
                                        " receive_time, server_time) FROM STDIN (FORMAT BINARY)") as copy:
        step = 8 << 20
        for i in range(0, len(buf), step):
            copy.write(buf[i: i + step])
    return len(times_s)


SUBSTITUTED = int(Flag.SUBSTITUTED)
