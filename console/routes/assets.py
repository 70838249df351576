"""Assets, tags (with their calibration in force) and readings over a time range.

Tag routes take the name as a ``path`` parameter: a tag name may hold ``/`` (the MQTT collector names a tag after
its whole topic by default, ``plant/line1/T-7``), which a client sends URL-encoded (``plant%2Fline1%2FT-7``) and
the server sees decoded."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request

from console import trend
from console.auth import Principal, require
from console.csvexport import RESPONSES, Column, CSVStream, export, file_name_part, stamp
from console.jsonresp import FastJSON
from console.params import decode_cursor, equal_filters, page, time_range
from console.problems import Problem

router = APIRouter(prefix="/api", default_response_class=FastJSON, dependencies=[Depends(require("read"))])

ZONES = ("A", "B", "C", "D")  # ISO 20816-3 zones; maintenance stores a zone as its index in <tag>.iso_zone
TAG_COLUMNS = ("t.id, t.name, t.asset, t.unit, t.description, t.kind, t.range_min, t.range_max, t.sampling_ms, "
               "t.configured, t.updated_at")
_CALIBRATION = ("(SELECT json_build_object('certificate', c.certificate, 'calibrated_on', c.calibrated_on, "
                "'uncertainty', c.uncertainty, 'uncertainty_unit', c.uncertainty_unit, 'valid_from', c.valid_from) "
                "FROM tag_calibrations c WHERE c.tag_id = t.id AND c.valid_from <= now() "
                "ORDER BY c.valid_from DESC LIMIT 1) AS calibration")


@router.get("/assets", tags=["assets"])
async def list_assets(request: Request, site: str | None = None, kind: str | None = None,
                      q: str | None = Query(None, max_length=200, description="search: part of the name, site "
                                            "(area), kind or description, any case"),
                      limit: int = Query(200, ge=1, le=1000), cursor: str | None = None):
    """Assets (by name), with their number of tags; filter by site or kind, search with ``q``; a page at a time
    (``next_cursor``)."""
    where, params = ["true"], {"n": limit + 1}
    equal_filters(where, params, {"site": ("a.site", site), "kind": ("a.kind", kind)})
    if q and q.strip():
        # A substring anywhere, so "101" finds P-101 and "area-07" the area's assets. No index serves it; the page
        # walks the name key until it has its rows: at 20,000 assets a search that matches nothing reads them all
        # in some 20 ms (bench/bench_console_scale.py), a trigram index would need the pg_trgm extension.
        params["q"] = f"%{_like_escaped(q.strip())}%"
        where.append("(a.name ILIKE %(q)s OR a.site ILIKE %(q)s OR a.kind ILIKE %(q)s OR a.description ILIKE %(q)s)")
    if cursor:
        (params["after"],) = decode_cursor(cursor, n=1)
        where.append("a.name > %(after)s")
    rows = await request.app.state.db.fetch(
        "SELECT a.name, a.site, a.kind, a.description, a.updated_at, "
        "(SELECT count(*) FROM tags t WHERE t.asset = a.name) AS tags "
        f"FROM assets a WHERE {' AND '.join(where)} ORDER BY a.name LIMIT %(n)s", params)
    return page(rows, limit, ("name",))


@router.get("/sites", tags=["assets"])
async def list_sites(request: Request):
    """The sites (areas) that have assets, by name, each with its number of assets (the board's site filter; it
    took them from the whole asset list, 20 requests at 20,000 assets)."""
    return {"items": await request.app.state.db.fetch(
        "SELECT site, count(*) AS assets FROM assets WHERE site <> '' GROUP BY site ORDER BY site")}


def _like_escaped(text: str) -> str:
    """``text`` matched literally by LIKE (PostgreSQL's default escape character is the backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# The indicators of a tag are the names from "<tag>." up to "<tag>/" in byte order: one range of index m0404 each
# (a LIKE over every tag without an asset read all of the site's indicators; no wildcards to escape either).
_INDICATOR_IDS = ("SELECT t.id FROM unnest(%s::text[]) AS p(tag) JOIN tags t ON t.asset = '' "
                  "AND t.name COLLATE \"C\" >= p.tag || '.' AND t.name COLLATE \"C\" < p.tag || '/'")
# An indicator's value is the newest good reading among its newest GOOD_LOOKBACK readings, one short range of the
# (tag_id, time) key; further back, the newest good value the hourly rollups kept (``last`` / ``last_time``, which
# the gateway's forwarder keeps current), then looked up raw for its quality (gone with raw retention: null).
# Scanning back to the newest good reading read a run of bad ones whole: 200,000 rows for a sensor broken for
# 2.3 days at 1 Hz, some 20 ms per such indicator with every page in memory (tests/test_console_scale.py).
# ``bad_time`` is the newest reading when it is not good: every reading newer than the good one shown is bad.
# By id, found first: the planner cannot tell how few the name ranges hold, and at its guess (thousands) the
# lookups below cost enough for JIT compilation, some 250 ms.
GOOD_LOOKBACK = 1000
_INDICATORS = (
    f"SELECT {TAG_COLUMNS}, coalesce(r.time, h.time) AS latest_time, coalesce(r.value, h.value) AS latest_value, "
    "coalesce(r.quality, h.quality) AS latest_quality, "
    "CASE WHEN r.time IS NOT NULL THEN 'readings' WHEN h.time IS NOT NULL THEN 'readings_1h' END AS latest_source, "
    "CASE WHEN NOT n.good THEN n.time END AS bad_time, CASE WHEN NOT n.good THEN n.quality END AS bad_quality "
    "FROM tags t "
    f"LEFT JOIN LATERAL (SELECT time, quality, ({trend.GOOD}) AS good FROM readings WHERE tag_id = t.id "
    "ORDER BY time DESC LIMIT 1) n ON true "
    "LEFT JOIN LATERAL (SELECT time, value, quality FROM (SELECT time, value, quality FROM readings "
    f"WHERE tag_id = t.id ORDER BY time DESC LIMIT {GOOD_LOOKBACK}) w WHERE {trend.GOOD} "
    "ORDER BY time DESC LIMIT 1) r ON true "
    "LEFT JOIN LATERAL (SELECT h.last_time AS time, h.last AS value, (SELECT x.quality FROM readings x "
    "WHERE x.tag_id = t.id AND x.time = h.last_time) AS quality FROM readings_1h h WHERE r.time IS NULL "
    "AND n.time IS NOT NULL AND h.tag_id = t.id AND h.last_time IS NOT NULL ORDER BY h.bucket DESC LIMIT 1) h ON true "
    "WHERE t.id = ANY(%s) ORDER BY t.name")


@router.get("/assets/{name:path}", tags=["assets"])
async def get_asset(request: Request, name: str):
    """One asset with its tags and their calibration in force."""
    db = request.app.state.db
    asset = await db.fetchone("SELECT name, site, kind, description, updated_at FROM assets WHERE name = %s", (name,))
    if asset is None:
        raise Problem(404, f"no asset {name!r}")
    asset["tags"] = await db.fetch(f"SELECT {TAG_COLUMNS}, {_CALIBRATION} FROM tags t WHERE t.asset = %s "
                                   "ORDER BY t.name", (name,))
    # Condition indicators derived by maintenance/ from the asset's tags (``<tag>.<stat>``, ``<tag>.iso_zone``)
    # are registered without an asset: found by name, each with its newest value.
    # The value shown is the newest good one (trend.GOOD, as the trends draw: uncertain counts, with its quality);
    # a newer bad reading (a fault value, a zone derived from a broken sensor) is not the machine's value: it was
    # shown as the current one. Its time and quality come along (``bad_time``, ``bad_quality``) so the page flags it.
    ids = [r["id"] for r in await db.fetch(_INDICATOR_IDS, ([t["name"] for t in asset["tags"]],))]
    asset["derived"] = await db.fetch(_INDICATORS, (ids,)) if ids else []
    asset["good_lookback"] = GOOD_LOOKBACK
    asset["iso_zones"] = [{"tag": d["name"].removesuffix(".iso_zone"), "zone": ZONES[int(d["latest_value"])],
                           "time": d["latest_time"], "quality": d["latest_quality"], "bad_time": d["bad_time"],
                           "bad_quality": d["bad_quality"]}
                          for d in asset["derived"] if d["name"].endswith(".iso_zone")
                          and d["latest_value"] is not None and 0 <= int(d["latest_value"]) < len(ZONES)]
    return asset


@router.get("/tags", tags=["assets"])
async def list_tags(request: Request, asset: str | None = None, limit: int = Query(500, ge=1, le=5000),
                    cursor: str | None = None):
    """Tags of the registry, by name; filter by asset."""
    where, params = ["true"], {"n": limit + 1}
    equal_filters(where, params, {"asset": ("t.asset", asset)})
    if cursor:
        (params["after"],) = decode_cursor(cursor, n=1)
        where.append("t.name > %(after)s")
    rows = await request.app.state.db.fetch(
        f"SELECT {TAG_COLUMNS}, {_CALIBRATION} FROM tags t WHERE {' AND '.join(where)} ORDER BY t.name LIMIT %(n)s",
        params)
    return page(rows, limit, ("name",))


async def tag_row(request: Request, name: str) -> dict:
    row = await request.app.state.db.fetchone(f"SELECT {TAG_COLUMNS} FROM tags t WHERE t.name = %s", (name,))
    if row is None:
        raise Problem(404, f"no tag {name!r}")
    return row


@router.get("/tags/{name:path}/calibrations", tags=["assets"])
async def calibrations(request: Request, name: str):
    """Calibration history of a tag, newest first (traceability: which record was in force when)."""
    tag = await tag_row(request, name)
    return {"tag": name, "items": await request.app.state.db.fetch(
        "SELECT valid_from, certificate, calibrated_on, uncertainty, uncertainty_unit FROM tag_calibrations "
        "WHERE tag_id = %s ORDER BY valid_from DESC", (tag["id"],))}


@router.get("/tags/{name:path}/readings", tags=["readings"])
async def readings(request: Request, name: str, _: Principal = Depends(require("read")),
                   from_: str | None = Query(None, alias="from",
                                             description="ISO-8601 instant, e.g. 2024-05-01T00:00Z"),
                   to: str | None = Query(None, description="ISO-8601 instant (default now)"),
                   last: str | None = Query(None, description="ISO-8601 duration back from `to`, e.g. PT6H, P7D"),
                   points: int | None = Query(None, ge=10, description="target number of points (buckets)"),
                   resolution: Literal["auto", "raw", "1m", "1h"] = "auto"):
    """One tag's readings over a range. Long ranges are downsampled on the server into about ``points``
    buckets (min, max, mean, counts) from the raw table or the 1-minute / 1-hour rollups; ``source`` and
    ``bucket_s`` say which. ``resolution=raw`` returns raw rows (at most ``points``; ``truncated`` tells) with
    their quality ``q``, validation ``flags`` (`edge.records.Flag` bits) and the device's ``status`` code. Buckets
    of a day or more begin at the plant's midnight (``zone``: ``console.time_zone``, else UTC; a day of a DST change
    is one bucket of 23 or 25 hours); ``edges_exact`` is false where hourly rollups could not follow a midnight off
    the UTC hour. Times are UTC."""
    cfg = request.app.state.config.console
    n = min(points or cfg.default_points, cfg.max_points)
    tr = time_range(from_, to, last, default=timedelta(hours=6))
    tag = await tag_row(request, name)
    series = await trend.fetch(request.app.state.db, request.app.state.db.features, tag["id"], tr, n, resolution,
                               cfg.time_zone)
    return {"tag": name, "unit": tag["unit"], "asset": tag["asset"], "from": tr.start, "to": tr.end,
            "range": [tag["range_min"], tag["range_max"]], **series}


# Each reading's quality with why (validation's flags, the device's status code): what a suspicious trend is checked
# against. The rollups carry only good and bad counts.
READING_COLUMNS = (Column("time", kind="time"), Column("tag"), Column("value", kind="number"), Column("unit"),
                   Column("quality", kind="int"), Column("flags", kind="int"), Column("flag_names", "flags", "flags"),
                   Column("status", kind="status"), Column("value_text"))
BUCKET_COLUMNS = (Column("time", "t", kind="time"), Column("tag"), Column("unit"), Column("min", kind="number"),
                  Column("max", kind="number"), Column("mean", "avg", kind="number"), Column("count", "n", kind="int"),
                  Column("bad_count", "bad", kind="int"))
BUCKET_PLANS = {"1m": trend.Plan("readings_1m", 60), "1h": trend.Plan("readings_1h", 3600)}


@router.get("/tags/{name:path}/readings.csv", tags=["readings"], response_class=CSVStream, responses=RESPONSES)
async def readings_csv(request: Request, name: str, _: Principal = Depends(require("read")),
                       from_: str | None = Query(None, alias="from",
                                                 description="ISO-8601 instant, e.g. 2024-05-01T00:00Z"),
                       to: str | None = Query(None, description="ISO-8601 instant (default now)"),
                       last: str | None = Query(None, description="ISO-8601 duration back from `to`, e.g. PT6H"),
                       resolution: Literal["raw", "1m", "1h"] = "raw"):
    """One tag's readings over a range as CSV, oldest first: every raw reading (``time``, ``tag``, ``value``,
    ``unit``, ``quality``, ``flags`` and ``flag_names`` (the gateway's validation flags), ``status`` (the device's
    status code, hex), ``value_text``), or per minute / hour bucket as the chart's buckets (``min``, ``max``,
    ``mean`` and ``count`` of the good readings, ``bad_count``). The range and its checks are the JSON route's;
    at most ``console.csv_max_rows`` rows (``X-Valvoja-Truncated``)."""
    tr = time_range(from_, to, last, default=timedelta(hours=6))
    tag = await tag_row(request, name)
    if resolution == "raw":
        sql, params, columns = trend.RAW, {"tag": tag["id"], "start": tr.start, "end": tr.end}, READING_COLUMNS
    else:
        db = request.app.state.db
        sql, params = await trend.bucket_query(db, db.features, tag["id"], tr, BUCKET_PLANS[resolution])
        columns = BUCKET_COLUMNS
    return await export(request, sql, params, columns, constants={"tag": name, "unit": tag["unit"]},
                        file_name=f"{file_name_part(name)}_{stamp(tr.start)}_{stamp(tr.end)}_{resolution}")


LATEST = ("SELECT time, value, value_text, quality, flags, status, receive_time, server_time FROM readings "
          "WHERE tag_id = %s ORDER BY time DESC LIMIT 1")


@router.get("/tags/{name:path}/latest", tags=["readings"])
async def latest(request: Request, name: str):
    """The newest reading of a tag, with its quality and both timestamps."""
    tag = await tag_row(request, name)
    row = await request.app.state.db.fetchone(LATEST, (tag["id"],))
    return {"tag": name, "unit": tag["unit"], "reading": row}
