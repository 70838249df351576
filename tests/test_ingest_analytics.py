"""What the ingest task hands live analytics: only the readings of the tags analytics uses (a `Reading` object
costs more than ingesting the reading), never analytics' own output, and the data's clock, so an unacknowledged
alert still escalates while none of the analytics tags sends anything. Real spool (SQLite file), no mocks."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from analytics_support import spool_emit

from edge.analytics import Analytics
from edge.metrics import Metrics
from edge.pipeline import Ingest, SpoolWorker
from edge.records import Batch, Reading, utcnow
from edge.settings import SiteConfig, Validation
from edge.spool import Spool
from edge.validate import Validator

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


async def _ingest(tmp_path, batches: list[Batch], tags: set[str] | None) -> list[tuple[list[Reading], datetime]]:
    worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
    ingest = Ingest(worker, Validator({}, Validation()), Metrics(), queue_batches=16)
    got: list[tuple[list[Reading], datetime]] = []
    ingest.on_spooled = lambda readings, latest: got.append((readings, latest))
    ingest.analytics_tags = tags
    task = asyncio.create_task(ingest.run())
    try:
        for b in batches:
            await ingest.emit(b)
        while ingest.accepted < sum(len(b.readings) for b in batches):
            await asyncio.wait_for(ingest.spooled.wait(), 10)  # set after each commit
            ingest.spooled.clear()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return got


async def test_only_analytics_tags_and_the_data_clock_are_handed_over(tmp_path):
    def r(tag, i, t=None):
        t = t or T0 + timedelta(seconds=i)
        return Reading(tag, t, float(i), min(t, utcnow()))

    future = utcnow() + timedelta(days=2)  # a device whose clock is far ahead
    batches = [Batch("mq", [r("A.x", 0), r("B.y", 1), r("A.x", 2)]),
               Batch("analytics", [r("A.x", 3)]),  # derived by analytics itself: not handed back
               Batch("mq", [r("B.y", 4), r("B.y", 5, future)])]
    got = await _ingest(tmp_path, batches, {"A.x"})
    handed = [x for readings, _ in got for x in readings]
    assert [(x.tag, x.value) for x in handed] == [("A.x", 0.0), ("A.x", 2.0)]
    latest = max(t for _, t in got)
    assert T0 + timedelta(seconds=4) <= latest <= utcnow()  # the data's time, never the future clock's
    everything = await _ingest(tmp_path / "all", batches, None)
    # The reading stamped two days ahead is stored (flagged) but never analysed: it would move analytics'
    # windows into the future and every real reading after it would be "late".
    assert [x.value for readings, _ in everything for x in readings] == [0.0, 1.0, 2.0, 4.0]


async def test_an_open_alert_escalates_on_the_data_clock_without_its_tag(tmp_path):
    site = SiteConfig(rules=[{"name": "hi", "tag": "P1.pressure", "kind": "threshold", "high": 10.0}],
                      maintenance={"alerts": {"clear_after_s": 60, "escalate_after_s": 600}})
    emitted: list[Batch] = []

    emit = spool_emit(emitted)

    an = Analytics(site, Metrics(), emit, None)
    assert an.tags() == {"P1.pressure"}
    an.offer([], T0)
    assert an.queue.empty()  # nothing to analyse and no open alert: nothing queued
    an.offer([Reading("P1.pressure", T0, 20.0, T0)], T0)
    await an.process(an.queue.get_nowait())
    an.offer([], T0 + timedelta(seconds=300))  # other tags' groups: the clock moves, no escalation yet
    await an.process(an.queue.get_nowait())
    an.offer([], T0 + timedelta(seconds=700))
    await an.process(an.queue.get_nowait())
    events = [body["event"] for b in emitted for kind, body in b.records if kind == "alert_change"]
    assert events == ["raised", "escalated"]


async def test_readings_kept_from_analytics_for_a_clock_ahead_are_logged_with_their_device(tmp_path, caplog):
    """A PLC whose clock is ahead (beyond validation.future_tolerance_s) had every reading kept from analytics with
    nothing but `valvoja_readings_flagged_total{rule="future_time"}`: its asset's anomaly score, zones and rules
    stopped while the console showed its values. Now a warning names the tag, its collector and how far ahead, at
    most once a minute with the count since; readings of tags analytics does not use are not reported."""
    now = utcnow()
    ahead = [Reading("A.x", now + timedelta(seconds=30 + i), 1.0, now) for i in range(3)]
    other = [Reading("B.y", now + timedelta(seconds=30), 1.0, now)]
    caplog.set_level("WARNING", logger="edge.pipeline")
    got = await _ingest(tmp_path, [Batch("plc-7", other), Batch("plc-3", ahead)], {"A.x"})
    assert [x for readings, _ in got for x in readings] == []
    [line] = [r for r in caplog.records if getattr(r, "event", None) == "readings_ahead_of_clock"]
    assert (line.tag, line.collector, line.count) == ("A.x", "plc-3", 3)
    assert 29.0 < line.ahead_s < 31.0 and "A.x from plc-3, 30." in line.getMessage()
