"""edge.jsontext: the one JSON rendering of the API and every command's --json (strict JSON, RFC 3339 times)."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from edge.jsontext import api_json, json_safe


def strict_loads(text: str):
    """json.loads that refuses NaN / Infinity, as a browser's JSON.parse and jq do."""
    def refuse(name: str):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_api_json_is_strict_json_with_rfc3339_times():
    helsinki = timezone(timedelta(hours=2))
    doc = {"t": datetime(2026, 7, 15, 9, 30, tzinfo=UTC), "local": datetime(2026, 1, 2, 3, 4, 5, tzinfo=helsinki),
           "d": date(2026, 7, 15), "id": uuid.UUID(int=1), "nan": float("nan"), "inf": math.inf,
           "np": np.float64("-inf"), "arr": np.array([1.5, np.nan]), "i": np.int64(7), "b": np.bool_(True),
           "path": Path("/var/lib/valvoja/x.json"), 3: "int key", "tuple": (1, 2)}
    for indent in (False, True):
        back = strict_loads(api_json(doc, indent=indent))
        assert back == {"t": "2026-07-15T09:30:00+00:00", "local": "2026-01-02T03:04:05+02:00", "d": "2026-07-15",
                        "id": "00000000-0000-0000-0000-000000000001", "nan": None, "inf": None, "np": None,
                        "arr": [1.5, None], "i": 7, "b": True, "path": "/var/lib/valvoja/x.json", "3": "int key",
                        "tuple": [1, 2]}
    assert api_json({"a": 1}, indent=True) == '{\n  "a": 1\n}'


def test_api_json_refuses_a_type_without_one_obvious_text():
    class Thing:
        pass
    with pytest.raises(TypeError, match="Thing"):
        api_json({"x": Thing()})


def test_json_safe_gives_python_values_for_other_encoders():
    out = json_safe({"a": [np.float32(1.5), float("nan"), np.inf], "b": np.array([[1, 2]]), 4: np.bool_(False),
                     "p": Path("x/y"), "t": (np.int16(3),), "s": "text"})
    assert out == {"a": [1.5, None, None], "b": [[1, 2]], "4": False, "p": "x/y", "t": [3], "s": "text"}
    assert type(out["a"][0]) is float and type(out["4"]) is bool and type(out["t"][0]) is int
    strict_loads(json.dumps(out, allow_nan=False))
