"""Live PEMS: the exported ONNX model on the live process tags, writing the PEMS tags of a pollutant.

Each primary interval, the model inputs (means of their tags' readings) give a prediction with an adaptive
90 % interval (`models.conformal.AdaptiveConformal`, started from the calibration scores in the model's
card); the point, lower and upper values become readings of the ``pems`` tags, flagged
``Flag.SUBSTITUTED`` (a value produced by a model). They go through the gateway like any reading, so the
emissions job substitutes them while the analyser is invalid and cross-checks the analyser against them.
When the analyser's value for the interval is known, the interval adapts to it.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge.records import Flag, Quality, Reading
from emissions.config import PemsLink


class LivePems:
    """One pollutant's PEMS model, predicting one primary interval at a time."""

    def __init__(self, link: PemsLink, *, alpha: float = 0.1, window: int = 168, gamma: float = 0.005):
        from models.conformal import AdaptiveConformal
        from models.export import INPUT_NAME, session

        if link.model is None:
            raise ValueError(f"pems link {link.tag}: no model configured")
        path = Path(link.model)
        card = json.loads(path.with_suffix(".json").read_text())
        self.features: list[str] = card["features"]
        missing = [f for f in self.features if f not in link.inputs]
        if missing:
            raise ValueError(f"pems link {link.tag}: inputs has no tag for model feature(s) {missing}")
        self.link = link
        self.version = card["onnx_sha256"]
        self._input = INPUT_NAME
        self._session = session(path.read_bytes())
        self.conformal = AdaptiveConformal(alpha=alpha, window=window, gamma=gamma).start(card["calibration_scores"])

    def push(self, t: int, inputs: dict[str, float], analyser: float | None = None) -> list[Reading]:
        """Readings of the PEMS tags for the interval starting at Unix time ``t`` (none if an input is missing);
        ``analyser``: the measured value of the same interval, if valid, for the adaptive interval."""
        row = [inputs.get(self.link.inputs[f]) for f in self.features]
        if any(v is None or not math.isfinite(v) for v in row):
            return []
        x = np.asarray([row], dtype=np.float32)
        yhat = np.asarray(self._session.run(None, {self._input: x})[0], dtype=np.float64).reshape(1, -1)[:, 0]
        lo, hi = self.conformal.interval(yhat)[0]
        if analyser is not None and math.isfinite(analyser):
            self.conformal.update(analyser, yhat, interval=np.array([[lo, hi]]))
        ts = datetime.fromtimestamp(t, UTC)
        out = [(self.link.tag, float(yhat[0]))]
        if self.link.lower_tag and self.link.upper_tag:
            out += [(self.link.lower_tag, float(lo)), (self.link.upper_tag, float(hi))]
        return [Reading(tag, ts, v, ts, Quality.GOOD, int(Flag.SUBSTITUTED), status_name=f"pems:{self.version[:12]}")
                for tag, v in out]
