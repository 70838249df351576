"""Where the benchmark scripts put their figures: one JSON file each under bench/results/.

Every script prints its figures and then calls :func:`write_results`, so the files share a layout
(indent 2, trailing newline) and a missing results folder never fails a run at its very end.
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
