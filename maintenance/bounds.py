"""Whether a measured value reaches a configured limit, in the precision values come in.

A limit a person writes (``high = 2.8``, an ISO 20816 boundary of 2.8 mm/s) is a decimal; the value it is compared
with often is not: a PLC's float32 2.8 arrives as 2.7999999523, and the mean of twenty readings of 2.8 comes out
2.7999999999999994. Compared exactly, a value sitting on its limit never reached it (no alert at the threshold the
plant set, a zone lower for as long as it lasted). "Reaches" allows a relative millionth (`ON_BOUNDARY`): above
float32 rounding (6e-8) and a window mean's, far below any instrument's resolution.
"""

from __future__ import annotations

ON_BOUNDARY = 1e-6


def at_or_above(value: float, limit: float) -> bool:
    """``value >= limit``, a value within a relative `ON_BOUNDARY` below the limit counting as on it."""
    return value >= limit - abs(limit) * ON_BOUNDARY


def at_or_below(value: float, limit: float) -> bool:
    """``value <= limit``, a value within a relative `ON_BOUNDARY` above the limit counting as on it."""
    return value <= limit + abs(limit) * ON_BOUNDARY
