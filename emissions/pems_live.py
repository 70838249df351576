"""Live PEMS: the registry's champion of a pollutant's PEMS model on the live process tags.

A pollutant's ``pems`` link names a model id (``model_id``) in a `models.registry.Registry` (``registry``
directory; its index in the site database when one is given) and the tag feeding each model input
(``inputs``). `LivePems` serves that model id's champion through `models.runtime.ModelServer`:

- each primary interval, the means of the input tags give a `edge.records.Prediction` (``kind="pems"``) with
  its 90 % interval, the model id, the ONNX sha256 and the registry version (``details``); the point, lower and
  upper values also become readings of the ``pems`` tags, flagged ``Flag.SUBSTITUTED`` (a value produced by a
  model), so the emissions job substitutes them while the analyser is invalid and cross-checks the analyser
  against them;
- when the analyser's valid value for an interval is known (`observe`, or ``analyser=`` of `push`), the
  adaptive conformal interval (`models.conformal.AdaptiveConformal`, seeded from the card's calibration
  scores) is updated: it widens when recent errors grow;
- every ``refresh_s`` seconds (>= 0) the registry is asked for the champion, by `maybe_refresh` only: the caller
  runs it off the event loop (the gateway: `emissions.live.LiveEmissions.pems_due` / ``refresh_pems`` in a worker
  thread between two groups of readings). `predict` never reads the registry (files, the database). A newly
  promoted (or rolled back) version is loaded and swapped in between two predictions, so no interval goes
  without a prediction. A champion whose inputs the link does not map is not swapped in (logged; the old
  version keeps serving). A registry that cannot be read (its database down, also at start) is logged once and
  asked again at every refresh; there is no PEMS output until a champion can be read.

The adaptive state starts afresh from the new version's calibration scores on a swap; truth for a
prediction of the previous version is ignored (its errors say nothing about the new model).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from edge.records import Flag, Prediction, Quality, Reading
from emissions.config import PemsLink
from emissions.pems import interval_level
from models.schema import InputError, unit_key

log = logging.getLogger(__name__)

PENDING_MAX = 4096  # predictions kept for the analyser's value to arrive (primary intervals)


@dataclass
class PemsStep:
    """One primary interval's PEMS output: the prediction record and the readings of the ``pems`` tags."""

    prediction: Prediction
    readings: list[Reading]


def training_envelope(card: dict) -> dict[str, tuple[float, float]]:
    """Feature -> (min, max) of the rows a version was fitted on, from its card's drift reference (order statistics
    that keep the first and the last value); empty for a card without one."""
    ref = card.get("drift_reference") or {}
    return {name: (float(s[0]), float(s[-1])) for name, s in zip(ref.get("features", []), ref.get("ref_sample", []),
                                                                  strict=False) if len(s)}


class LivePems:
    """One pollutant's PEMS: the champion of ``link.model_id``, one primary interval at a time."""

    def __init__(self, link: PemsLink, *, asset: str = "", target: str = "", registry=None, dsn: str | None = None,
                 clock: Callable[[], float] = time.monotonic, tag_units: Mapping[str, str] | None = None,
                 step_s: float | None = None, truth_tag: str | None = None, target_unit: str | None = None):
        """``step_s``: the primary interval's length, so each prediction states the span of its inputs (the
        interval's means: ``input_start`` .. ``input_start + step_s``). ``truth_tag``: the analyser's tag, the
        measured value the model predicts, stored as each prediction's ``target`` (the pollutant goes to
        ``details.pollutant``) so that the console's uncertainty report finds the truth of every interval.
        ``target_unit``: the pollutant's unit (its analyser's), which the predictions are stored and substituted in."""
        if link.model_id is None:
            raise ValueError(f"pems link {link.tag}: no model_id configured")
        self.link = link
        self.tag_units = dict(tag_units or {})  # the site's tag registry: tag -> unit ([[tags]] unit)
        self.asset = asset
        self.target = target
        self.step_s = step_s
        self.truth_tag = truth_tag
        self.target_unit = target_unit
        self.dsn = dsn
        self.registry = registry  # built on first use when None (its database may be down at start)
        self.clock = clock
        self.server = None  # models.runtime.ModelServer once the model id has a champion
        self.pending: OrderedDict[int, Prediction] = OrderedDict()
        self.swaps = 0
        self._next_refresh = clock() + link.refresh_s
        self._error: str | None = None
        self._named: int | None = None  # the version whose other target was logged
        self._gone = False  # the registry named no champion while one was served (logged once)
        self.refused_rows = 0  # intervals the runtime refused (an input beyond float32, a non-finite output)
        self.outside_training_rows = 0  # predictions made from an input outside the served version's training range
        self.missing_input_rows = 0  # intervals without a prediction because an input had no valid value
        self._missing: str | None = None  # the missing inputs last logged (once until a prediction is made again)
        self._outside: str | None = None  # the inputs outside it, as last logged (once until back inside)
        self._envelopes: dict[str, dict[str, tuple[float, float]]] = {}  # ONNX sha256 -> feature -> (min, max)
        self._refusal: str | None = None  # the last refusal logged (once until a prediction is made again)
        try:
            mv = self._registry().champion(link.model_id)
        except Exception as exc:  # the registry's database is down: no PEMS output until it can be read
            self._error = str(exc)
            log.error("pems %s: model registry not readable at start, retried every %g s: %s", link.tag,
                      link.refresh_s, exc)
            return
        if mv is not None:
            self._check_inputs(mv)  # a configuration error at start-up is raised, not logged
        from models.runtime import IntegrityError

        try:
            self.refresh()
        except (OSError, IntegrityError) as exc:
            # The champion's files changed or missing: raised, it stopped this PEMS for good (the stack logs "not
            # started" and never asks again). Waited for like a champion not yet promoted: retried every refresh_s.
            self._error = str(exc)
            log.error("pems %s: champion not served at start, retried every %g s: %s", link.tag, link.refresh_s, exc)

    def _registry(self):
        if self.registry is None:
            from models.registry import Registry

            self.registry = Registry(self.link.registry, self.dsn)
        return self.registry

    # -- the served version ---------------------------------------------------------------------
    def _check_inputs(self, mv) -> None:
        if mv.kind != "regression":
            # An anomaly scorer's output is a score with a p-value, no interval: served, its score was stored as the
            # pollutant's substitute (its card names no target, so the target check below had nothing to say).
            raise ValueError(f"pems link {self.link.tag}: {mv.model_id} v{mv.version} is an {mv.kind} model; a PEMS "
                             "serves a regressor of the pollutant")
        names = [f["name"] for f in mv.card.get("input_schema", {}).get("features", [])]
        missing = [n for n in names if n not in self.link.inputs]
        if missing:
            raise ValueError(f"pems link {self.link.tag}: {mv.model_id} v{mv.version} takes input(s) "
                             f"{', '.join(missing)} that pems.inputs maps to no tag")
        # A version trained on another unit of an input (°F where the tag is in °C, kPa where it is in mbar) gives
        # numbers, and wrong ones: where both the card and the site's tag registry declare the unit, they must agree.
        wrong = []
        for f in mv.card.get("input_schema", {}).get("features", []):
            tag = self.link.inputs[f["name"]]
            trained, site = f.get("unit") or "", self.tag_units.get(tag, "")
            if unit_key(trained) and unit_key(site) and unit_key(trained) != unit_key(site):
                wrong.append(f"{f['name']} in {trained!r} but tag {tag} is in {site!r}")
        if wrong:
            raise ValueError(f"pems link {self.link.tag}: {mv.model_id} v{mv.version} takes {'; '.join(wrong)}: "
                             "train it on the tags' units, or correct the units in [[tags]]")
        # Its output is stored as the analyser's value and substituted in the analyser's unit: a model of NOx in mg/m³
        # serving an analyser in ppm substituted values 2.05 times too small (and learnt its interval from ppm).
        from emissions.config import concentration_unit

        trained = str(mv.card.get("target_unit") or "")
        if self.target_unit and concentration_unit(trained) and concentration_unit(self.target_unit) and (
                concentration_unit(trained) != concentration_unit(self.target_unit)):
            raise ValueError(f"pems link {self.link.tag}: {mv.model_id} v{mv.version} predicts {trained!r} but "
                             f"{self.target or 'the pollutant'} is in {self.target_unit!r} (its unit): its output "
                             "would be stored and substituted as such; train it on the analyser's unit")
        predicts = str(mv.card.get("target") or "")
        if predicts and self.target and predicts.lower() != self.target.lower() and self._named != mv.version:
            self._named = mv.version  # once per version (start-up checks it, then serves it)
            # Its output is stored as this pollutant's substitute: a model_id naming the CO model under NOx served
            # CO values as NOx. Said, not refused: a site may name the pollutant otherwise than the training column.
            log.warning("pems %s: %s v%s was trained to predict %r, and its output is stored as %s; check the link's "
                        "model_id", self.link.tag, mv.model_id, mv.version, predicts, self.target,
                        extra={"event": "pems_target_mismatch", "stack": self.asset, "pollutant": self.target})

    def refresh(self) -> bool:
        """Serve the registry's current champion; True when the served version changed."""
        from models.runtime import ModelServer

        mv = self._registry().champion(self.link.model_id)
        if mv is None:
            if self.server is None:
                log.warning("pems %s: model %s has no champion yet; no predictions until one is promoted",
                            self.link.tag, self.link.model_id)
            elif not self._gone:
                # Only an index restored from an older backup (or edited) loses its champion: promotions and
                # rollbacks always leave one. The served version goes on, but it is no longer the promoted one.
                self._gone = True
                log.warning("pems %s: the registry names no champion of %s any more (an index restored from an older "
                            "backup?); v%s goes on being served until one is promoted", self.link.tag,
                            self.link.model_id, self.server.version,
                            extra={"event": "model_champion_gone", "stack": self.asset, "pollutant": self.target})
            return False
        self._gone = False
        # The sha256 too: an index restored from an older backup numbers a new registration as an old version.
        if self.server is not None and mv.version == self.server.version and mv.sha256 == self.server.model.sha256:
            return False
        self._check_inputs(mv)
        if self.server is None:
            self.server = ModelServer(self.registry, self.link.model_id, window=self.link.adaptive_window,
                                      gamma=self.link.adaptive_gamma, accept=self._check_inputs)
            log.info("pems %s: serving %s v%s", self.link.tag, self.link.model_id, self.server.version)
            return True
        before = self.server.version
        changed = self.server.refresh()
        if changed:
            self.swaps += 1
            log.info("pems %s: %s v%s -> v%s", self.link.tag, self.link.model_id, before, self.server.version)
        return changed

    def due(self) -> bool:
        """Whether the registry is due to be asked for the champion."""
        return self.clock() >= self._next_refresh

    def maybe_refresh(self) -> None:
        """`refresh` when due (every ``refresh_s``); a failure is logged and the served version goes on.
        Blocking registry I/O: call it off the event loop (`predict` does not)."""
        now = self.clock()
        if now < self._next_refresh:
            return
        self._next_refresh = now + self.link.refresh_s
        try:
            self.refresh()
            self._error = None
        except Exception as exc:  # a registry hiccup or a bad new version must not stop the served one
            if self._error != str(exc):  # once per distinct failure, not every refresh_s of an outage
                self._error = str(exc)
                log.error("pems %s: registry refresh failed, keeping the served version: %s", self.link.tag, exc)

    @property
    def version(self) -> int | None:
        """Registry version being served (None before a champion exists)."""
        return None if self.server is None else self.server.version

    def status(self) -> dict:
        """For the console: the served version, swaps, predictions awaiting the analyser and, where the runtime
        tracks it, performance drift of the served version from the analyser values observed so far."""
        out = {"model_id": self.link.model_id, "pems_tag": self.link.tag, "version": self.version, "swaps": self.swaps,
               "awaiting_analyser": len(self.pending), "refused_rows": self.refused_rows,
               "outside_training_rows": self.outside_training_rows, "missing_input_rows": self.missing_input_rows}
        if self.server is not None:
            out["sha256"] = self.server.model.sha256
            if hasattr(self.server, "performance"):
                out["performance"] = self.server.performance()
        return out

    # -- predictions ----------------------------------------------------------------------------
    def predict(self, t: int, inputs: dict[str, float]) -> Prediction | None:
        """The prediction for the primary interval starting at Unix time ``t`` from the input tags' values
        (tag -> value); None when a model input is missing or not finite, or there is no champion. No registry
        I/O: a new champion comes through `maybe_refresh`."""
        if self.server is None:
            return None
        names = self.server.model.schema.names
        row = {}
        missing = []
        for n in names:
            v = inputs.get(self.link.inputs.get(n, ""))
            if v is None or not math.isfinite(v):
                missing.append(n)
            else:
                row[n] = [float(v)]
        if missing:
            # No prediction, so no substitute should the analyser fail too: an input tag that went silent (or one sent
            # less often than the primary interval) stopped the PEMS with nothing said, found only at the next outage.
            self.missing_input_rows += 1
            said = ", ".join(f"{n} (tag {self.link.inputs.get(n)})" for n in missing)
            if self._missing != said:
                self._missing = said
                log.warning("pems %s: no prediction from %s while input(s) %s have no valid value in the primary "
                            "interval (said once until a prediction is made again)", self.link.tag,
                            self.link.model_id, said,
                            extra={"event": "pems_input_missing", "stack": self.asset, "pollutant": self.target})
            return None
        self._missing = None
        ts = datetime.fromtimestamp(t, UTC)
        try:
            p = self.server.predict_records(row, asset=self.asset, times=[ts], target=self.target)[0]
        except InputError as exc:
            # A device's 1e39 "no value" (finite, beyond the float32 the graph takes) or an output the graph made
            # infinite: no prediction for the interval, as for a missing input. Raised, it was logged with a full
            # traceback every primary interval for as long as the device sent it, and counted nowhere.
            self.refused_rows += 1
            if self._refusal != str(exc):
                self._refusal = str(exc)
                log.warning("pems %s: no prediction from %s v%s while the runtime refuses its inputs (said once until "
                            "a prediction is made again): %s", self.link.tag, self.link.model_id, self.version, exc,
                            extra={"event": "pems_input_refused", "stack": self.asset, "pollutant": self.target})
            return None
        self._refusal = None
        # The inputs are the means of the primary interval starting at ts: its end closes the span (DESIGN.md §2);
        # it was left NULL, so a stored PEMS value did not say which readings produced it.
        end = datetime.fromtimestamp(t + self.step_s, UTC) if self.step_s else None
        # The target is the predicted tag (as for every prediction): it was the pollutant's name ("NOx"), no tag,
        # so the console's empirical coverage (the target tag's readings against the interval) was never computed.
        details = {**p.details, "model_id": p.model_id, "pems_tag": self.link.tag, "pollutant": self.target}
        outside = self._outside_training(p, {n: row[n][0] for n in names})
        if outside:
            details["outside_training"] = outside
        p = dataclasses.replace(p, kind="pems", input_start=ts, input_end=end, target=self.truth_tag or p.target,
                                details=details)
        self.pending[t] = p
        while len(self.pending) > PENDING_MAX:
            self.pending.popitem(last=False)
        return p

    def readings(self, p: Prediction) -> list[Reading]:
        """The ``pems`` tags' readings of a prediction, flagged substituted, naming the model version; the lower
        and upper readings also name the interval's nominal level ("pems:pems-nox v3 lower, 90 % interval"): a
        bound without its level says nothing about how often the analyser may lie outside it."""
        status = f"pems:{p.model_id} v{p.details.get('registry_version')}"
        outside = p.details.get("outside_training")
        # Inputs outside what the version was trained on: the model extrapolates (trees hold their edge value) and its
        # interval, calibrated inside that range, does not say so. UNCERTAIN, as a device marks a value it vouches for
        # less: the stored averages substitute it only where the permit takes uncertain data (accept_uncertain).
        quality = Quality.UNCERTAIN if outside else Quality.GOOD
        suffix = f", outside training: {', '.join(outside)}" if outside else ""
        out = [(self.link.tag, p.value, status + suffix)]
        if self.link.lower_tag and self.link.upper_tag and p.lower is not None:
            level = interval_level(p.coverage)
            out += [(self.link.lower_tag, p.lower, f"{status} lower, {level}{suffix}"),
                    (self.link.upper_tag, p.upper, f"{status} upper, {level}{suffix}")]
        return [Reading(tag, p.time, float(v), p.time, quality, int(Flag.SUBSTITUTED), status_name=name)
                for tag, v, name in out]

    def _outside_training(self, p: Prediction, row: dict[str, float]) -> dict[str, list[float]]:
        """The model inputs of ``row`` outside the training range of the version that made ``p`` (feature ->
        [value, training min, training max]); counted in ``outside_training_rows`` and logged once until every input
        is back inside."""
        if p.model_version not in self._envelopes:  # the full card (the registry's index leaves the reference out)
            model = self.server.model
            self._envelopes[model.sha256] = training_envelope(model.card)
        envelope = self._envelopes.get(p.model_version) or {}
        outside = {n: [v, *envelope[n]] for n, v in row.items()
                   if n in envelope and not envelope[n][0] <= v <= envelope[n][1]}
        said = ", ".join(sorted(outside)) or None
        if outside:
            self.outside_training_rows += 1
            if said != self._outside:
                log.warning("pems %s: %s v%s predicts from input(s) outside its training range (%s); its values are "
                            "stored with quality UNCERTAIN (said once until the inputs change or are back inside)",
                            self.link.tag, self.link.model_id, p.details.get("registry_version"),
                            "; ".join(f"{n} {v:g} not in [{lo:g}, {hi:g}]" for n, (v, lo, hi) in outside.items()),
                            extra={"event": "pems_outside_training", "stack": self.asset, "pollutant": self.target})
        elif self._outside is not None:
            log.info("pems %s: the inputs of %s are back inside its training range", self.link.tag,
                     self.link.model_id, extra={"event": "pems_inside_training", "stack": self.asset,
                                                "pollutant": self.target})
        self._outside = said
        return outside

    def observe(self, t: int, analyser: float | None) -> bool:
        """The analyser's valid value for interval ``t`` is known: update the adaptive interval. False when
        there was no prediction for ``t``, the value is not finite, or the prediction was of an older version."""
        p = self.pending.pop(t, None)
        if p is None or self.server is None or analyser is None or not math.isfinite(analyser):
            return False
        return self.server.observe([float(analyser)], [p]) == 1

    def push(self, t: int, inputs: dict[str, float], analyser: float | None = None) -> PemsStep | None:
        """Predict interval ``t`` and, when the analyser's value of the same interval is given, learn from it
        (after the prediction: the interval never sees its own truth)."""
        p = self.predict(t, inputs)
        if p is None:
            return None
        if analyser is not None:
            self.observe(t, analyser)
        return PemsStep(p, self.readings(p))
