"""A JSON response rendered with orjson: trends carry thousands of numbers and timestamps."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse

from edge.jsontext import OPTIONS


class FastJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=OPTIONS)
