"""Benchmark of the console on a big site: the asset list (search, pages) and an asset page's indicators.

    .venv/bin/python bench/bench_console_scale.py --db postgresql://...   (or $VALVOJA_DB_URL; else embedded PostgreSQL)

In a fresh database on that server: 20,000 assets over 40 areas, 3 tags each and 2 condition indicators per
tag (180,000 tags), and on asset ``A-00042`` one indicator (``A-00042.t0.rms``) with a good reading followed by
200,000 newer BAD ones (a fault value a second apart, 2.3 days) and their rollups. The console runs as its own
process (``valvoja console serve``); requests come from this process over loopback HTTP, one at a time.

Measured: API latency p50/p99 of the asset list's first page (200), a deep page (by cursor, half-way), a search
for one asset (``a-12345``), a search for an area (``area-07``, 500 assets), a search that matches nothing, the
whole list paged through (1,000 a page), and the asset page of ``A-00042`` (``/api/assets/A-00042``: its tags and
the newest good value of each indicator). Each answer is checked against the seed (page sizes, the one asset
found, 20,000 assets in the whole list, the indicator's good time); a wrong one fails the run (exit 1).
Writes bench/results/console_scale.json. The database is dropped
afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from bench_console import ROOT, bench_database, console_process, time_requests

sys.path.insert(0, str(ROOT / "tests"))

from console_support import PASSWORD, bad_run_after_good, seed_many_assets, seed_users
from results_io import write_results

N_ASSETS = 20_000
N_BAD = 200_000
ASSET = "A-00042"
INDICATOR = f"{ASSET}.t0.rms"


def bench_api(base: str, n: int) -> dict:
    res = {}
    with httpx.Client(base_url=base, timeout=120) as c:
        c.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD}).raise_for_status()
        items = lambda b: {"items": len(b["items"]), "more": b["next_cursor"] is not None}  # noqa: E731
        res["assets_first_page"] = time_requests(c, "/api/assets", {}, n, items)
        body = {"next_cursor": None}
        for _ in range(N_ASSETS // 2 // 1000):  # to the middle of the list, 1,000 a page
            body = c.get("/api/assets", params={"limit": 1000, "cursor": body["next_cursor"]}).json()
        half = body["next_cursor"]
        res["assets_deep_page"] = time_requests(c, "/api/assets", {"cursor": half}, n, items)
        res["assets_search_one"] = time_requests(c, "/api/assets", {"q": "a-12345"}, n, items)
        res["assets_search_area"] = time_requests(c, "/api/assets", {"q": "area-07"}, n, items)
        res["assets_search_none"] = time_requests(c, "/api/assets", {"q": "no such asset"}, n, items)
        walk, seen, cursor = [], set(), None
        t0 = time.perf_counter()
        while True:
            t1 = time.perf_counter()
            body = c.get("/api/assets", params={"limit": 1000, "cursor": cursor}).json()
            walk.append(time.perf_counter() - t1)
            seen.update(a["name"] for a in body["items"])
            cursor = body["next_cursor"]
            if not cursor:
                break
        res["assets_whole_list"] = {"pages": len(walk), "assets": len(seen), "total_ms": round(
            (time.perf_counter() - t0) * 1000, 1), "slowest_page_ms": round(max(walk) * 1000, 1)}

        def asset(b: dict) -> dict:
            d = next(x for x in b["derived"] if x["name"] == INDICATOR)
            return {"indicator_value": d["latest_value"], "indicator_time": d["latest_time"],
                    "source": d.get("latest_source"), "bad_time": d["bad_time"], "derived": len(b["derived"])}
        res["asset_page"] = time_requests(c, f"/api/assets/{ASSET}", {}, max(n // 4, 10), asset)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", help="postgresql:// URL of a server where a database may be created")
    ap.add_argument("--requests", type=int, default=100)
    args = ap.parse_args()
    with bench_database(args.db, "bench_console_scale") as dsn:
        seed_users(dsn)
        t0 = time.perf_counter()
        seed_many_assets(dsn, N_ASSETS)
        good_time = bad_run_after_good(dsn, INDICATOR, N_BAD)
        setup = {"assets": N_ASSETS, "tags": N_ASSETS * 9, "bad_readings_after_good": N_BAD,
                 "good_time": good_time.isoformat(), "seed_s": round(time.perf_counter() - t0, 1)}
        print(f"seeded: {setup}")
        with tempfile.TemporaryDirectory() as tmp, console_process(dsn, Path(tmp)) as base:
            api = bench_api(base, args.requests)
    for k, v in api.items():
        if "p50_ms" in v:
            print(f"{k:22} p50 {v['p50_ms']:8.2f} ms  p99 {v['p99_ms']:8.2f} ms  "
                  f"({', '.join(f'{a}={b}' for a, b in v.items() if not a.endswith('_ms') and a != 'n')})")
        else:
            print(f"{k:22} {v}")
    write_results({"time": datetime.now(UTC).isoformat(), "machine": {"cpus": os.cpu_count()}, "setup": setup,
                   "api": api}, "console_scale.json")
    # Fast wrong answers must not pass for fast answers: each request's last body is what the seed makes it.
    want = {("assets_first_page", "items"): 200, ("assets_deep_page", "items"): 200,
            ("assets_search_one", "items"): 1, ("assets_search_area", "items"): 200,
            ("assets_search_none", "items"): 0, ("assets_whole_list", "assets"): N_ASSETS,
            ("asset_page", "indicator_time"): good_time.isoformat()}
    wrong = [f"{k}.{f} = {api[k][f]!r}, expected {v!r}" for (k, f), v in want.items() if api[k][f] != v]
    for w in wrong:
        print(f"WRONG ANSWER: {w}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
