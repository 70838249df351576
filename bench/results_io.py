"""Where the benchmark scripts put their figures: one JSON file each under bench/results/.

Every script prints its figures and then calls :func:`write_results`, so the files share a layout
(indent 2, trailing newline) and a missing results folder never fails a run at its very end. Also the
peak memory of another process (:func:`peak_rss_kb`, :func:`reset_peak_rss`), which sampling misses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(data: dict[str, Any], target: str | Path) -> Path:
    """Write ``data`` as JSON; ``target`` is a bare file name under bench/results/ or a path.

    Prints where it went and returns the path.
    """
    path = RESULTS / target if isinstance(target, str) else target
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def peak_rss_kb(pid: int) -> int:
    """The kernel's high-water mark of a live process's RSS (VmHWM, KiB): its true peak, unlike sampling."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


def reset_peak_rss(pid: int) -> bool:
    """Start a new peak for :func:`peak_rss_kb` at the current RSS (Linux: ``5`` to /proc/PID/clear_refs).

    False where the kernel or the permissions do not allow it (the peak then covers the process's whole life).
    """
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False
