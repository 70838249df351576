"""``valvoja maintenance trace ALERT_ID --db URL [--registry DIR] [--tz ZONE | --utc] [--json]``: the traceability
chain of an alert (`maintenance.trace`, the same assembly as the console's ``GET /api/alerts/{id}/trace``).

The text gives times in plant time, as the console's pages do (its ``[console] time_zone``): in ``--tz ZONE``, else
in the host's zone (``TZ``, ``/etc/localtime``), each with its UTC offset and the zone named once at the top, so a
time in the hour the clocks repeat in autumn is not ambiguous; ``--utc`` in UTC. ``--json`` is the API's document,
ISO-8601 with offsets in UTC, whatever the zone.

Exit status: 0 printed; 1 the database cannot be used; 2 no database given (or a bad option); 3 no such alert.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo


def add_parser(sub, db_arg) -> None:
    """Register ``trace`` on the ``maintenance`` sub-command parser."""
    t = sub.add_parser("trace", help="an alert traced to its tags, calibrations, model version and input window",
                       description="Print the traceability chain of an alert (DESIGN.md §2): at its raise and its "
                                   "latest return, each evidence tag with its registry entry and the calibration "
                                   "in force at the evidence time, the prediction behind it with its model "
                                   "version and registry entry, the input window and whether its readings are "
                                   "still stored. Times are in plant time (--tz, else the host's zone) with "
                                   "their UTC offsets. Exit status 0; 1 database unusable; 2 no database given "
                                   "or a bad option; 3 no such alert.")
    t.add_argument("alert_id")
    t.add_argument("--registry", type=Path, help="model registry directory: also check the version's ONNX file")
    zone = t.add_mutually_exclusive_group()
    zone.add_argument("--tz", type=_zone_arg, metavar="ZONE",
                      help="the plant's IANA zone for the times, as the console's time_zone, e.g. Europe/Helsinki "
                           "(default: the host's zone, $TZ or /etc/localtime)")
    zone.add_argument("--utc", action="store_true", help="times in UTC")
    t.add_argument("--json", action="store_true",
                   help="print the chain as JSON (the API's document; times ISO-8601 in UTC)")
    db_arg(t)
    t.set_defaults(func=cmd_trace)


async def _load(args) -> dict | None:
    import psycopg

    from edge.db.migrate import check_schema
    from maintenance.trace import trace_alert

    with psycopg.connect(args.db, autocommit=True) as sync_conn:  # a schema of another version: refused
        check_schema(sync_conn)
    async with await psycopg.AsyncConnection.connect(args.db, autocommit=True) as conn:
        return await trace_alert(conn, args.alert_id, registry_dir=args.registry)


def _zone_arg(text: str) -> ZoneInfo:
    from maintenance.windows import WindowError, zone

    try:
        tz = zone(text)
    except WindowError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("time_zone: ")) from None
    if tz is None:
        raise argparse.ArgumentTypeError("empty: give an IANA time zone such as Europe/Helsinki")
    return tz


def host_zone() -> tuple[tzinfo | None, str]:
    """The host's zone and its name: ``$TZ`` when set, else the zone ``/etc/localtime`` links to; (None, a
    description) when it has no IANA name: times then go through the C library's local time, which follows the
    same ``$TZ`` (a POSIX rule such as ``EET-2EEST,M3.5.0/3,M10.5.0/4``), DST included."""
    name = os.environ.get("TZ")
    if name is None:
        try:
            name = os.readlink("/etc/localtime")
        except OSError:
            name = ""
    name = name.removeprefix(":")
    name = name.split("zoneinfo/", 1)[1] if "zoneinfo/" in name else name
    try:
        return ZoneInfo(name), name
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError; an empty or absolute name a ValueError
        return None, "the host's local time"


# An instant written into a reason ("the first is valid from ...") or kept as text in the evidence.
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)")


def in_zone(v, tz: tzinfo | None):
    """The document with every time converted to ``tz`` (None: the host's local time), those within text (reasons,
    evidence kept as ISO-8601 text) written as `_t` writes them."""
    if isinstance(v, datetime):
        return v.astimezone(tz) if v.tzinfo is not None else v
    if isinstance(v, str):
        return _ISO.sub(lambda m: _zoned_text(m[0], tz), v)
    if isinstance(v, dict):
        return {k: in_zone(x, tz) for k, x in v.items()}
    if isinstance(v, list):
        return [in_zone(x, tz) for x in v]
    return v


def _zoned_text(text: str, tz: tzinfo | None) -> str:
    try:
        return _t(datetime.fromisoformat(text).astimezone(tz))
    except ValueError:  # the shape of a time but not one (month 13): left as written
        return text


def _t(v) -> str:
    """A time as its wall clock with its UTC offset, ``2026-10-25 03:30:00 +03:00`` (as the console shows it)."""
    if not isinstance(v, datetime):
        return str(v)
    off = v.strftime("%z")
    frac = f".{v.microsecond:06d}" if v.microsecond else ""
    return v.strftime("%Y-%m-%d %H:%M:%S") + frac + (f" {off[:3]}:{off[3:]}" if off else "")


def _unknowns(d: dict, indent: str) -> list[str]:
    return [f"{indent}{k.removesuffix('_unknown')}: unknown because {v}" for k, v in d.items()
            if k.endswith("_unknown")]


def _tag_lines(tag: dict, indent: str) -> list[str]:
    reg = tag.get("registry")
    lines = [f"{indent}tag {tag['tag']}" + (
        f": asset {reg['asset'] or '-'}, unit {reg['unit'] or '-'}, range {reg['range_min']}..{reg['range_max']}, "
        f"{'configured' if reg['configured'] else 'not configured'}" if reg else "")]
    cal = tag.get("calibration")
    if cal:
        lines.append(f"{indent}  calibration in force at {_t(tag['at'])}: {cal['certificate']} (calibrated "
                     f"{cal['calibrated_on']}, ±{cal['uncertainty']:g} {cal['uncertainty_unit']}, valid from "
                     f"{_t(cal['valid_from'])})")
    lines += _unknowns(tag, indent + "  ")
    if tag.get("derived_from"):
        lines.append(f"{indent}  derived from:")
        lines += _tag_lines(tag["derived_from"], indent + "    ")
    rd = tag.get("readings") or {}
    for r in rd.get("evidence", []):
        lines.append(f"{indent}  reading {_t(r['time'])} = {r['value']}: "
                     + ("still stored" if r["stored"] else "no longer stored"))
    if "window_raw" in rd:
        lines.append(f"{indent}  raw readings in the window: {'at least ' if rd.get('window_raw_at_least') else ''}"
                     f"{rd['window_raw']}")
    lines += _unknowns(rd, indent + "  ")
    return lines


def render(tr: dict, tz: tzinfo | None = UTC, zone_name: str = "UTC") -> str:
    """The chain as text, one moment after the other, times in ``tz`` (None: the host's local time) named
    ``zone_name``."""
    tr = in_zone(tr, tz)
    a = tr["alert"]
    lines = [f"alert {a['id']}: {a['kind']} {a['severity']} {a['state']} on {a['asset']}"
             + (f" / {a['tag']}" if a["tag"] else "") + f", raised {_t(a['raised_at'])}", f"  {a['message']}",
             f"  times: {zone_name}, with their UTC offsets"]
    lines += [f"  note: {n}" for n in tr["notes"]]
    for m in tr["moments"]:
        lines.append(f"evidence at {m['moment']} ({_t(m['time'])}), evidence time {_t(m['evidence_time'])}")
        for k, v in m["condition"].items():
            if k != "data_quality":
                lines.append(f"  {k}: {json.dumps(v, default=str)}")
        w = m.get("window")
        if w:
            lines.append(f"  input window {_t(w['start'])} .. {_t(w['end'])} ({w['of']})")
        p = m.get("prediction")
        if p:
            u = f"p = {p['p_value']}" + (f" (alpha {p['alpha']})" if p.get("alpha") is not None else "") \
                if p.get("p_value") is not None else f"interval {p.get('lower')} " \
                f"{'or more' if p.get('upper') is None else '.. ' + str(p['upper'])} (coverage {p.get('coverage')})"
            lines.append(f"  prediction {p['model_id']} sha256 {p['model_version']} at {_t(p['time'])}: "
                         f"value {p['value']}, {u}" + (f", stored as #{p['stored']['id']}" if p["stored"] else ""))
            reg = p.get("registry")
            if reg:
                lines.append(f"    registry v{reg['version']} ({reg['status']}), parent "
                             f"{reg['parent_version'] or '-'}, training data {reg['training_fingerprint'] or '-'} "
                             f"{_t(reg['training_start'])} .. {_t(reg['training_end'])}, gate "
                             f"{reg['gate_metric'] or '-'} ({reg['gate_direction'] or '-'}) = {reg['gate_value']}"
                             + (f", ONNX file {reg['onnx_file']}" if reg.get("onnx_file") else ""))
                lines += _unknowns(reg, "    ")
            det = p.get("detector")
            if det:
                lines.append(f"    detector {det['origin']}" + (f" (trained: {det['training_origin']})"
                                                                   if det.get("training_origin") else "")
                             + f" in service {_t(det['in_service_at'])}, trained on {det['training_samples']} samples "
                             f"{_t(det['training_start'])} .. {_t(det['training_end'])} ({det['left_out_flagged']} "
                             f"left out as flagged), signals {', '.join(det['signals'])}, alpha {det['alpha']}, "
                             f"{det['calibration_size']} calibration scores, settings {det['config_sha256'][:12]}")
                lines += _unknowns(det, "    ")
            lines += _unknowns(p, "    ")
        lines += _unknowns(m, "  ")
        for tag in m["tags"]:
            lines += _tag_lines(tag, "  ")
    return "\n".join(lines)


def cmd_trace(args) -> int:
    from edge.jsontext import api_json

    if not args.db:
        print("no database: give --db URL or set VALVOJA_DB_URL", file=sys.stderr)
        return 2
    tr = asyncio.run(_load(args))  # a database error is the valvoja command's one line, exit 1
    if tr is None:
        print(f"no alert {args.alert_id!r}", file=sys.stderr)
        return 3
    if args.json:
        print(api_json(tr, indent=True))
    elif args.utc:
        print(render(tr))
    elif args.tz is not None:
        print(render(tr, args.tz, f"{args.tz.key} (plant time; --utc for UTC)"))
    else:
        tz, name = host_zone()
        how = "--tz ZONE for the plant's, --utc for UTC"
        print(render(tr, tz, f"{name} ({how})" if tz is None else f"{name} (the host's zone; {how})"))
    return 0
