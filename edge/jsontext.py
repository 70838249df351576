"""JSON text, one way for the whole program.

- `api_json`: the console API's rendering (orjson): times in RFC 3339 with a ``T`` and their offset
  (``2026-07-15T09:30:00+00:00``), dates, UUIDs, numpy values, NaN and infinities as ``null`` (strict JSON: a
  browser's ``JSON.parse`` and ``jq`` refuse ``NaN``), paths as text. Every command's ``--json`` output and JSON
  file uses it, so a script reading a command's output or the API gets the same text (``json.dumps(default=str)``
  wrote ``2026-07-15 09:30:00+00:00`` and ``NaN``).
- `json_safe`: the same values as Python objects (NaN/inf -> None, numpy -> Python, paths -> str), for what another
  encoder writes (psycopg's ``Jsonb``, ``json.dumps(allow_nan=False)`` where key order or indent width matter).
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

import numpy as np
import orjson

OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(obj: Any) -> Any:
    # Only types with one obvious text; anything else is a programming error and raises (no silent str()).
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def api_json(obj: Any, *, indent: bool = False) -> str:
    """``obj`` as the API's JSON (indented by two spaces with ``indent``, for people reading a terminal)."""
    return orjson.dumps(obj, default=_default, option=OPTIONS | (orjson.OPT_INDENT_2 if indent else 0)).decode()


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None (jsonb and strict JSON have no such numbers), numpy -> Python, paths -> str, recursively."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, PurePath):
        return str(obj)
    return obj
