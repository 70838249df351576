"""The one back-off helper: exponential with full jitter, capped (used by every reconnect loop)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    # Class-level defaults that tests may patch (style notes: psycopg).
    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    attempt: int = 0
    _rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        """Delay before the next attempt: uniform in [initial/2, min(max, initial*factor^n)]."""
        cap = min(self.max_s, self.initial_s * self.factor ** self.attempt)
        self.attempt += 1
        return self._rng.uniform(min(cap, self.initial_s) / 2, cap)

    def reset(self) -> None:
        self.attempt = 0
