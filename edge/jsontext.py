"""JSON text as the console's API renders it (orjson): times in RFC 3339 with a ``T`` and their offset
(``2026-07-15T09:30:00+00:00``), dates, UUIDs and numpy values as such. The commands whose ``--json`` prints an
API document (``maintenance trace``, ``maintenance window``) use it, so a script reading either gets the same
text; ``json.dumps(default=str)`` wrote ``2026-07-15 09:30:00+00:00``."""

from __future__ import annotations

from typing import Any

import orjson

OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def api_json(obj: Any, *, indent: bool = False) -> str:
    """``obj`` as the API's JSON (indented by two spaces with ``indent``, for people reading a terminal)."""
    return orjson.dumps(obj, option=OPTIONS | (orjson.OPT_INDENT_2 if indent else 0)).decode()
