"""Benchmark: bytes written to the state folder per closed RUL cycle (maintenance/rul_state.py).

``--assets`` RUL assets (24 tags each, ``history_cycles`` 2,000, the C-MAPSS sample model of tests/data) run
``--cycles`` cycles through `MaintenanceLive.process` with a state folder, one group of readings per cycle (every
asset closes a cycle in each group), and the periodic save called after every group (the worst case: cycles as
short as ``state_save_s``). Measured over the last ``--measure`` cycles, once the histories are full:

- the journal: bytes appended per group and per asset-close;
- the snapshots that folded the journal in: how many, their size, and the bytes per close they amount to;
- ``wchar`` of /proc/self/io over the same groups (every byte the process handed to write(): files, logs);
- before (each close rewrote the snapshot): the snapshot's size, written at every group.

Prints the figures and writes bench/results/bench_rul_state.json. Run:
``.venv/bin/python bench/bench_rul_state.py [--assets 4] [--cycles 3000] [--measure 1000]``.

The snapshots that fold the journal in come every few hundred groups: a measured part without one (``--measure``
too short) would count the journal alone and overstate the saving, so the script then fails (exit 1) rather than
print it. "Before" is the size of one snapshot now (what the old code wrote at every group), not a run of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from results_io import write_results

from edge.records import Reading
from maintenance import cmapss
from maintenance.config import AssetConfig, MaintenanceConfig, RulAssetConfig
from maintenance.live import MaintenanceLive

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "cmapss"
T0 = datetime(2026, 2, 1, tzinfo=UTC)


def wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", type=int, default=4)
    ap.add_argument("--cycles", type=int, default=3000)
    ap.add_argument("--measure", type=int, default=1000)
    args = ap.parse_args()
    from maintenance.rul_eval import evaluate
    from maintenance.rul_export import export

    work = Path(tempfile.mkdtemp(prefix="bench-rul-state-"))
    r = evaluate(SAMPLE, "FD001", folds=4, select=False, max_iter=50, progress=lambda s: None)
    export(r, work / "model")
    train = cmapss.load(SAMPLE / "train_FD001.txt")
    assets = tuple(AssetConfig(name=f"E{k}", rul=RulAssetConfig(
        model_dir=str(work / "model"), sensors=tuple(f"E{k}.s{j}" for j in range(1, 22)),
        settings=tuple(f"E{k}.set{i}" for i in range(1, 4)), cycle_s=60.0)) for k in range(args.assets))
    live = MaintenanceLive(MaintenanceConfig(period_s=60.0, assets=assets), state_dir=work / "state")
    rul = live.rul
    n_rows = len(train.unit)

    async def run() -> dict:
        out: dict = {}
        start = args.cycles - args.measure
        for c in range(args.cycles):
            if c == start:
                j0, s0, w0 = rul.bytes_written["journal"], rul.bytes_written["snapshot"], wchar()
                snaps0 = rul._snapshots
            t = T0 + timedelta(seconds=60 * c)
            i = c % n_rows
            batch = []
            for k in range(args.assets):
                batch += [Reading(f"E{k}.set{m + 1}", t, float(train.settings[i, m]), t) for m in range(3)]
                batch += [Reading(f"E{k}.s{m + 1}", t, float(train.sensors[i, m]), t) for m in range(21)]
            await live.process(batch)
            data = rul.snapshot(progress=False)  # the periodic save, after every group
            if data is not None:
                rul.write(data)
        w1 = wchar()  # before the size probe below writes a snapshot of its own
        closes = args.measure * args.assets
        journal = rul.bytes_written["journal"] - j0
        snap = rul.bytes_written["snapshot"] - s0
        full = rul._snapshot_size or None
        if full is None:  # never folded in the measured part: the size a snapshot has now
            blob = rul.snapshot()
            rul.write(blob)
            full = rul._snapshot_size
        out.update({
            "assets": args.assets, "history_cycles": 2000, "tags_per_asset": 24,
            "kept_cycles": len(rul.assets[0].history), "groups_measured": args.measure,
            "after": {"journal_bytes_per_group": journal / args.measure,
                      "journal_bytes_per_asset_close": journal / closes,
                      "snapshots_written": rul._snapshots - snaps0, "snapshot_bytes": full,
                      "snapshot_bytes_per_asset_close": snap / closes,
                      "total_bytes_per_asset_close": (journal + snap) / closes,
                      "wchar_bytes_per_group": (w1 - w0) / args.measure},
            "before": {"bytes_per_group": full, "bytes_per_asset_close": full / args.assets,
                       "note": "each group that closed a cycle rewrote the whole snapshot (every asset's history)"},
        })
        out["reduction"] = out["before"]["bytes_per_group"] / (out["after"]["total_bytes_per_asset_close"]
                                                               * args.assets)
        return out

    res = asyncio.run(run())
    print(json.dumps(res, indent=2))
    write_results(res, "bench_rul_state.json")
    if not res["after"]["snapshots_written"]:
        print(f"FAILED: no snapshot folded the journal in the {args.measure} measured groups: the bytes per close "
              "leave the snapshots out; raise --measure")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
