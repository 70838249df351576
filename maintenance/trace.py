"""Traceability of an alert (DESIGN.md §2): the chain from an alert back to its tags, the calibration in force,
the model version and the input window, assembled from what the database keeps.

One code path for the console (``GET /api/alerts/{id}/trace``) and the command line
(``valvoja maintenance trace ALERT_ID``). Nothing here fails for a missing piece: an alert raised before the
history kept evidence (m0201), a tag no longer registered, a calibration not yet recorded, a prediction or
readings removed by retention, a model not in the registry: each is said in a ``*_unknown`` field ("unknown
because ...") next to the value it replaces.

The evidence is read as maintenance stores it (maintenance/README.md, "Database tables"): the ``raised`` event
of ``alert_events`` holds the evidence that raised the alert, ``updated`` / ``reopened`` events that of a rise of
severity or a return, and the ``alerts`` row the latest. Each distinct one is a *moment* of the trace.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from edge.sink.housekeeping import evidence_time
from models.export import sha256

EVIDENCE_EVENTS = ("raised", "updated", "reopened")
COUNT_BOUND = 100_000  # raw readings counted in a window; beyond it "at least"
# Levels of derived tags followed down to the measured one: maintenance makes two (an ISO 20816 zone of a
# waveform block's RMS, `<tag>.rms.iso_zone`, or of a series' mean, `<tag>.mean.iso_zone`); more is a naming accident.
DERIVED_DEPTH = 4
# Evidence keys that say what condition held (the rest: readings and prediction, traced on their own).
CONDITION_KEYS = ("rule", "detail", "zone", "boundaries_mm_s", "problem", "window", "no_data_after_s", "top_signals",
                  "stack", "pollutant", "period", "period_start", "period_end", "projected", "limit", "threshold",
                  "config_sha256", "data_quality")
_REGISTRY_COLUMNS = ("version, status, kind, sha256, path, parent_version, created_at, promoted_at, retired_at, "
                     "training_fingerprint, training_start, training_end, training_span, gate_metric, "
                     "gate_direction, metrics, parity_passed, input_schema")


def _time(value) -> datetime | None:
    """An instant from evidence (ISO-8601 text in jsonb, parsed as retention parses it); None for anything else."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else None
    return evidence_time(value)


def _list(value) -> list:
    """A list from evidence, or empty: evidence is written by several packages and versions, not checked."""
    return value if isinstance(value, list) else []


async def _rows(conn: psycopg.AsyncConnection, sql: str, params=()) -> list[dict]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def _row(conn: psycopg.AsyncConnection, sql: str, params=()) -> dict | None:
    rows = await _rows(conn, sql, params)
    return rows[0] if rows else None


async def _has_table(conn: psycopg.AsyncConnection, name: str) -> bool:
    return (await _row(conn, "SELECT to_regclass(%s) IS NOT NULL AS ok", (name,)))["ok"]


async def trace_alert(conn: psycopg.AsyncConnection, alert_id: str, *, registry_dir: Path | None = None) -> dict | None:
    """The traceability chain of one alert, or None when there is no such alert. ``registry_dir``: the model
    registry's directory (console ``[models] registry``, ``--registry``), to check the ONNX file of the version."""
    alert = await _row(conn, "SELECT * FROM alerts WHERE id::text = %s", (alert_id,))
    if alert is None:
        return None
    tables = {t: await _has_table(conn, t) for t in ("alert_events", "predictions", "model_registry",
                                                    "anomaly_detector_versions")}
    moments, notes = await _moments(conn, alert, tables["alert_events"])
    out = {"alert": {k: alert.get(k) for k in ("id", "asset", "tag", "kind", "severity", "state", "raised_at",
                                               "cleared_at", "last_seen", "message", "source", "model_id",
                                               "model_version")},
           "moments": [], "notes": notes}
    for label, at, evidence in moments:
        out["moments"].append(await _moment(conn, alert, label, at, evidence, tables, registry_dir))
    return out


async def _moments(conn, alert: dict, has_events: bool) -> tuple[list[tuple[str, datetime, dict]], list[str]]:
    """(label, time, evidence) of the raise, of the latest return or rise of severity, and of the row, each once."""
    notes: list[str] = []
    events = await _rows(conn, "SELECT event, time, detail -> 'evidence' AS evidence FROM alert_events "
                               "WHERE alert_id = %s AND event = ANY(%s) AND detail ? 'evidence' ORDER BY time, id",
                         (str(alert["id"]), list(EVIDENCE_EVENTS))) if has_events else []
    moments: list[tuple[str, datetime, dict]] = []
    raised = next((e for e in events if e["event"] == "raised"), None)
    if raised is not None:
        moments.append(("raised", raised["time"], raised["evidence"]))
    else:
        notes.append("the evidence at the raise is unknown because the alert's history keeps none (raised before "
                     "the history kept evidence, migration m0201, or by a writer that stores none); the latest "
                     "evidence is traced")
    later = [e for e in events if e is not raised]
    if later and (not moments or later[-1]["evidence"] != moments[-1][2]):
        moments.append((later[-1]["event"], later[-1]["time"], later[-1]["evidence"]))
    row = alert.get("evidence")
    if not moments or (row and row != moments[-1][2]):
        moments.append(("latest", alert.get("last_seen") or alert["raised_at"], row))
    return moments, notes


def _window(ev: dict, pred: dict | None, readings: list[dict]) -> tuple[datetime, datetime, str] | None:
    """The input window of the evidence: the prediction's inputs, a sensor alert's window, an emission period, or
    the span of the evidence readings."""
    if pred:
        a, b = _time(pred.get("input_start")), _time(pred.get("input_end"))
        if a and b:
            return a, b, "the prediction's inputs"
    w = ev.get("window")
    if isinstance(w, list) and len(w) == 2 and _time(w[0]) and _time(w[1]):
        return _time(w[0]), _time(w[1]), "the window the sensor was judged on"
    a, b = _time(ev.get("period_start")), _time(ev.get("period_end"))
    if a and b:
        return a, b, "the emission averaging period"
    times = [t for t in (_time(r.get("time")) for r in readings) if t]
    if times:
        return min(times), max(times), "the evidence readings"
    return None


async def _moment(conn, alert: dict, label: str, at: datetime, evidence, tables: dict,
                  registry_dir: Path | None) -> dict:
    ev = evidence if isinstance(evidence, dict) else {}
    pred_ev = ev.get("prediction") if isinstance(ev.get("prediction"), dict) else None
    readings = [r for r in _list(ev.get("readings")) if isinstance(r, dict) and isinstance(r.get("tag"), str)]
    when = _time((pred_ev or {}).get("time")) or max((t for r in readings if (t := _time(r.get("time")))),
                                                    default=None)
    out: dict = {"moment": label, "time": at, "evidence_time": when or at,
                 "condition": {k: ev[k] for k in CONDITION_KEYS if k in ev}}
    if not ev:
        out["evidence_unknown"] = "this moment stored no evidence"
    win = _window(ev, pred_ev, readings)
    out["window"] = {"start": win[0], "end": win[1], "of": win[2]} if win else None
    if win is None:
        out["window_unknown"] = "the evidence names no prediction, readings or period to take a window from"
    stored_pred = None
    if pred_ev is not None:
        out["prediction"], stored_pred = await _prediction(conn, alert, pred_ev, tables, registry_dir)
    else:
        out["prediction"] = None
        out["prediction_unknown"] = f"no prediction behind it: {alert['kind']} alerts are raised from readings" \
            if alert.get("model_id") is None else "the evidence names no prediction though the alert names model " \
            f"{alert['model_id']}"
    names = [r["tag"] for r in readings]
    if alert.get("tag"):
        names.append(alert["tag"])
    details = (stored_pred or {}).get("details")
    details = details if isinstance(details, dict) else {}
    # A model's input tags: an anomaly detector's signals, a RUL model's (rul_live: the configured settings and
    # sensors the version reads, and the cycle counter whose value is the age), from the stored prediction, else
    # from the evidence (the prediction row may be gone or still in the gateway's spool).
    signals = _list(details.get("signals")) or _list((pred_ev or {}).get("signals")) or \
        [s.get("signal") for s in _list(ev.get("top_signals")) if isinstance(s, dict)]
    names += [s for s in signals if isinstance(s, str)]
    counter = details.get("cycle_tag") or (pred_ev or {}).get("cycle_tag")
    if isinstance(counter, str):
        names.append(counter)
    inputs = ((out["prediction"] or {}).get("registry") or {}).get("inputs") or []
    if inputs:  # a registered model's input features that are tags of the registry (a model on raw tags)
        names += [r["name"] for r in await _rows(conn, "SELECT name FROM tags WHERE name = ANY(%s) ORDER BY name",
                                                 (inputs,))]
    out["tags"] = []
    for name in dict.fromkeys(names):
        mine = [r for r in readings if r["tag"] == name]
        t_at = max((t for r in mine if (t := _time(r.get("time")))), default=None) or out["evidence_time"]
        out["tags"].append(await _tag(conn, name, t_at, win, mine))
    if not out["tags"]:
        out["tags_unknown"] = (
            "the RUL prediction names no input tags: it was made before the gateway recorded them "
            "(details.signals); the site configuration's [maintenance.assets.rul] settings and sensors name them"
            if alert.get("kind") == "rul" else
            "the evidence names no tag (an asset-level alert whose model's signals are not stored)")
    return out


def _source_name(name: str) -> str | None:
    """The tag a maintenance indicator ``<tag>.<stat>`` (``<tag>.iso_zone``) is computed from; None without a dot."""
    return name.rsplit(".", 1)[0] if "." in name else None


async def _tag(conn, name: str, at: datetime, win, readings: list[dict], chain: tuple[str, ...] = ()) -> dict:
    """A tag's registry entry, the calibration in force at ``at``, and whether its readings are still stored; an
    uncalibrated derived tag also its source (``derived_from``), level by level down to the measured tag.
    ``chain``: the derived tags followed to reach this one (the depth bound and the cycle guard)."""
    out: dict = {"tag": name, "at": at}
    tag = await _row(conn, "SELECT id, asset, unit, range_min, range_max, sampling_ms, configured FROM tags "
                           "WHERE name = %s", (name,))
    if tag is None:
        out["registry"] = None
        out["registry_unknown"] = "the tag is not in the tag registry (tags table)"
        return out
    tag_id = tag.pop("id")
    out["registry"] = tag
    cal = await _row(conn, "SELECT valid_from, certificate, calibrated_on, uncertainty, uncertainty_unit "
                           "FROM tag_calibrations WHERE tag_id = %s AND valid_from <= %s "
                           "ORDER BY valid_from DESC LIMIT 1", (tag_id, at))
    out["calibration"] = cal
    if cal is None:
        first = (await _row(conn, "SELECT min(valid_from) AS t FROM tag_calibrations WHERE tag_id = %s",
                            (tag_id,)))["t"]
        out["calibration_unknown"] = ("no calibration record in force at that time: the tag has none" if first is None
                                      else f"no calibration record in force at that time: the first is valid from "
                                           f"{first.isoformat()}")
        # maintenance's indicators are tags of their own (`<tag>.<stat>`, `<tag>.iso_zone`), uncalibrated, and may
        # be computed from another indicator: the calibration that matters is that of the measured tag below.
        parent = _source_name(name)
        if parent and parent in (*chain, name):
            out["derived_from_unknown"] = (f"the chain of derived tags comes back to {parent} "
                                           f"({' -> '.join((*chain, name, parent))}): not followed")
        elif parent and len(chain) >= DERIVED_DEPTH:
            out["derived_from_unknown"] = (f"derived tags are followed {DERIVED_DEPTH} level(s) deep: {parent} is "
                                           "not followed")
        elif parent:
            src = await _tag(conn, parent, at, None, [], (*chain, name))
            if src.get("registry") is not None:
                out["derived_from"] = src
    if win is not None or readings:
        out["readings"] = await _readings(conn, tag_id, win, readings)
    return out


async def _readings(conn, tag_id: int, win, readings: list[dict]) -> dict:
    """Whether the evidence readings and the window's raw readings are still stored (retention may have removed
    them; their 1-minute rollups may remain)."""
    out: dict = {}
    if readings:
        times = [t for r in readings if (t := _time(r.get("time")))]
        kept = {r["time"]: r["value"] for r in await _rows(
            conn, "SELECT time, value FROM readings WHERE tag_id = %s AND time = ANY(%s)", (tag_id, times))}
        out["evidence"] = [{"time": _time(r.get("time")), "value": r.get("value"),
                            "stored": _time(r.get("time")) in kept,
                            "stored_value": kept.get(_time(r.get("time")))} for r in readings]
    if win is not None:
        start, end = win[0], win[1]
        # Counted up to a bound: a RUL model's inputs span the machine's run, an emission period a month.
        n = (await _row(conn, "SELECT count(*) AS n FROM (SELECT 1 FROM readings WHERE tag_id = %s AND time >= %s "
                              "AND time <= %s LIMIT %s) s", (tag_id, start, end, COUNT_BOUND + 1)))["n"]
        out["window_raw"] = min(n, COUNT_BOUND)
        if n > COUNT_BOUND:
            out["window_raw_at_least"] = True
        if n == 0:
            oldest = (await _row(conn, "SELECT time FROM readings WHERE tag_id = %s ORDER BY time LIMIT 1",
                                 (tag_id,)) or {}).get("time")
            r1m = await _row(conn, "SELECT count(*) AS buckets, coalesce(sum(count), 0) AS readings FROM readings_1m "
                                   "WHERE tag_id = %s AND bucket > %s AND bucket <= %s",
                             (tag_id, start - timedelta(minutes=1), end))
            out["window_1m"] = r1m
            if oldest is not None and oldest > end:
                why = (f"removed by retention: the oldest raw reading of the tag still stored is at "
                       f"{oldest.isoformat()}")
            elif oldest is None:
                why = "no raw reading of the tag is stored at all (removed by retention, or never stored)"
            else:
                why = "no raw reading of the tag is stored in the window (none arrived, or removed)"
            if r1m["buckets"]:
                why += f"; {r1m['buckets']} one-minute rollup(s) of {r1m['readings']} readings remain"
            out["window_unknown"] = why
    return out


async def _prediction(conn, alert: dict, ev: dict, tables: dict, registry_dir: Path | None) -> tuple[dict, dict | None]:
    """The prediction the evidence names: as the evidence has it, the stored row, and its model's registry entry."""
    out = {k: ev.get(k) for k in ("model_id", "model_version", "time", "value", "p_value", "alpha", "lower", "upper",
                                  "coverage", "input_start", "input_end")}
    out["time"], out["input_start"], out["input_end"] = (_time(ev.get("time")), _time(ev.get("input_start")),
                                                         _time(ev.get("input_end")))
    stored = None
    if tables["predictions"]:
        cols = "id, time, kind, target, value, lower, upper, coverage, p_value, input_start, input_end, details"
        if isinstance(ev.get("id"), int):
            stored = await _row(conn, f"SELECT {cols} FROM predictions WHERE id = %s", (ev["id"],))
        elif isinstance(ev.get("model_id"), str) and out["time"] is not None:
            # as the gateway writes evidence (it cannot know the id of a prediction still in its spool)
            stored = await _row(conn, f"SELECT {cols} FROM predictions WHERE model_id = %s AND asset = %s "
                                      "AND time = %s ORDER BY id LIMIT 1",
                                (ev["model_id"], alert["asset"], out["time"]))
    out["stored"] = stored
    if stored is None:
        out["stored_unknown"] = "the prediction row is not stored (removed by prediction retention, or still in the " \
                                "gateway's spool)" if tables["predictions"] else "there is no predictions table"
    out["registry"], why = await _registry(conn, ev, stored, tables["model_registry"], registry_dir)
    if why:
        out["registry_unknown"] = why
    model_id = ev.get("model_id")
    if isinstance(model_id, str) and model_id.startswith("anomaly:"):
        out["detector"], why = await _detector(conn, model_id, ev.get("model_version"),
                                               tables["anomaly_detector_versions"])
        if why:
            out["detector_unknown"] = why
        elif out["detector"]["training_start"] is None:
            out["detector"]["training_unknown"] = (
                "the version was restored from a state file written before the gateway kept what a detector was "
                "trained on: its training window and samples are not known")
    return out, stored


async def _detector(conn, model_id: str, version, has_table: bool) -> tuple[dict | None, str | None]:
    """The gateway's record of a live anomaly detector version (m0204): how it came into service, its training
    window and samples, signals, alpha, calibration size and the settings' hash it was fitted under."""
    if not isinstance(version, str):
        return None, "the evidence does not name the detector's version"
    if not has_table:
        return None, "there is no record of detector versions in this database (anomaly_detector_versions, m0204)"
    row = await _row(conn, "SELECT version, asset, in_service_at, origin, training_origin, training_start, "
                           "training_end, training_samples, left_out_flagged, left_out_incomplete, signals, alpha, "
                           "calibration_size, config_sha256, config FROM anomaly_detector_versions "
                           "WHERE model_id = %s AND version = %s", (model_id, version))
    if row is None:
        return None, (f"no record of detector version {version[:12]} of {model_id}: it came into service before "
                      "the gateway recorded detector versions (migration m0204), or its record is still in the "
                      "gateway's spool")
    return row, None


async def _registry(conn, ev: dict, stored: dict | None, has_table: bool,
                    registry_dir: Path | None) -> tuple[dict | None, str | None]:
    model_id, version = ev.get("model_id"), ev.get("model_version")
    if not isinstance(model_id, str) or not isinstance(version, str):
        return None, "the evidence does not name the model id and version"
    if not has_table:
        return None, "there is no model registry in this database (model_registry, models/ migration m0100)"
    row = await _row(conn, f"SELECT {_REGISTRY_COLUMNS} FROM model_registry WHERE model_id = %s AND sha256 = %s "
                           "ORDER BY version LIMIT 1", (model_id, version))
    if row is None:
        known = await _rows(conn, "SELECT version, sha256 FROM model_registry WHERE model_id = %s ORDER BY version",
                            (model_id,))
        if not known:
            return None, (f"model {model_id} is not in the model registry (live anomaly detectors are fitted by the "
                          "gateway and named by the sha256 of their parameters, not registered)")
        return None, (f"no registered version of {model_id} has the ONNX sha256 {version} (registered: "
                      + ", ".join(f"v{k['version']} {k['sha256'][:12]}" for k in known) + ")")
    said = ((stored or {}).get("details") or {}).get("registry_version")
    if said is not None and said != row["version"]:
        row["registry_version_stated"] = said
    gate = row.get("gate_metric")
    metrics = row.pop("metrics") or {}
    row["holdout_metrics"] = metrics.get("holdout") or {}
    row["gate_value"] = row["holdout_metrics"].get(gate) if gate else None
    row["inputs"] = [f.get("name") for f in (row.pop("input_schema") or {}).get("features", [])
                     if isinstance(f, dict)]
    path = row.pop("path")
    if registry_dir is None:
        row["onnx_file_unknown"] = "no registry directory given: the ONNX file was not checked"
    else:
        key, said = await asyncio.to_thread(_onnx_file, Path(registry_dir), path, version)
        row[key] = said
    return row, None


def _onnx_file(root: Path, path: str, version: str) -> tuple[str, str]:
    """Whether the registry's ONNX file of the version is there and is the one the prediction names."""
    if not root.is_dir():
        return "onnx_file_unknown", f"the registry directory {root.name!r} is not there on this host"
    f = root / path
    f = f if f.suffix == ".onnx" else f / "model.onnx"
    if not f.is_file():
        return "onnx_file", f"missing from the registry directory ({path})"
    return "onnx_file", "present, sha256 matches" if sha256(f.read_bytes()) == version else "present, sha256 DIFFERS"
