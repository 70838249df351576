"""Values a gap missed, read back from the server's history (OPC UA Part 11, HistoryRead with ReadRawModified).

A resumed session loses nothing (the server's queues and Republish bridge the gap), but a gap no session bridges
does: a cut or a gateway restart longer than the session timeout, a server that dropped the session, a failover to
the other server of a redundant pair. A server that historizes its nodes still has those values. With
``history_backfill_max_s`` set, the collector (collector.py) reads them back when it opens a new session: from the
newest source time the spool holds for the collector (minus `OVERLAP_S`, for devices whose timestamps lag the
others') to the server's current time, in windows (the first `WINDOW_S`, later ones sized to hold about
`WINDOW_VALUES`), every node of a window in one request per
``items_per_call`` nodes, following continuation points; each window's values are handed on in time order before
the next is read, so the analytics see the gap's values in order, and the live values of the new subscription wait
until the backfill is done.

What this module does is the reading: `read_window`, `Windows` and `plan`; the collector owns the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from asyncua import Client, ua

from edge.timeouts import within

WINDOW_S = 60.0  # the first window; a window's values are held in memory, sorted and handed on before the next is read
WINDOW_VALUES = 50_000  # what later windows are sized to hold (all nodes): some 15 MB of readings
MIN_WINDOW_S, MAX_WINDOW_S = 1.0, 3600.0
VALUES_PER_NODE = 10_000  # per node and request (NumValuesPerNode); more follow by continuation point
OVERLAP_S = 10.0  # read again before the newest stored source time: the database keeps one reading per (tag, time)
MAX_ROUNDS = 1_000  # continuation rounds per window: a server whose continuation never ends is not followed for ever

# Keys of the collector's state in the spool (edge.pipeline.SourceState), committed with the readings they describe.
MARK_KEY = b"opcua.history_mark"  # the newest source time of a reading the spool holds for this collector
DUE_KEY = b"opcua.history_due"  # a backfill begun and not finished: "<next start> <end>"

# Statuses that mean "nothing in that range", not a refusal.
_EMPTY = {ua.StatusCodes.GoodNoData, ua.StatusCodes.BadNoData}
# Statuses that mean "not now", not "no history": the server has no continuation point left for the operation (Part 4
# §7.9: it used its last one on the operations before it in the request) or released the one it gave (to serve
# another request). The node is asked again, without one, from its last value taken.
_AGAIN = {ua.StatusCodes.BadNoContinuationPoints, ua.StatusCodes.BadContinuationPointInvalid}


@dataclass(frozen=True, slots=True)
class BackfillPlan:
    """The span to read: ``start`` to ``end`` (None: the server's current time when the backfill begins);
    ``clipped`` is how much of the gap lies before ``start`` and is not read (history_backfill_max_s)."""

    start: datetime
    end: datetime | None = None
    clipped: timedelta = timedelta(0)


def due_text(start: datetime, end: datetime) -> bytes:
    """An unfinished backfill as kept in the spool (`DUE_KEY`); `parse_due` reads it."""
    return f"{start.isoformat()} {end.isoformat()}".encode()


def parse_time(raw: bytes | None) -> datetime | None:
    """A stored ISO time (mark); None when absent or unreadable (a backfill then starts from nothing known)."""
    if not raw:
        return None
    try:
        t = datetime.fromisoformat(raw.decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return t if t.tzinfo is not None else None


def parse_due(raw: bytes | None) -> tuple[datetime, datetime] | None:
    """A stored unfinished backfill ``(next start, end)``; None when absent or unreadable."""
    if not raw:
        return None
    parts = raw.split(b" ")
    if len(parts) != 2:
        return None
    start, end = parse_time(parts[0]), parse_time(parts[1])
    return (start, end) if start is not None and end is not None and start <= end else None


def plan(mark: datetime | None, due: tuple[datetime, datetime] | None, now: datetime,
         max_s: float) -> BackfillPlan | None:
    """What a new session should read back: from the oldest of an unfinished backfill's start and the newest stored
    source time (less `OVERLAP_S`), no further back than ``max_s`` before ``now``; None when nothing is known (a
    first start) or backfill is off."""
    if max_s <= 0:
        return None
    starts = [t for t in ((mark - timedelta(seconds=OVERLAP_S)) if mark else None, due[0] if due else None) if t]
    if not starts:
        return None
    start, floor = min(starts), now - timedelta(seconds=max_s)
    if start >= now:
        return None
    return BackfillPlan(max(start, floor), None, max(floor - start, timedelta(0)))


def next_width(width_s: float, held: int) -> float:
    """The next window's width: sized so it holds about `WINDOW_VALUES` at the rate the last one (``width_s`` wide)
    held ``held``, changing by at most 4x at a time, within [`MIN_WINDOW_S`, `MAX_WINDOW_S`]."""
    factor = WINDOW_VALUES / held if held else 4.0
    return min(max(width_s * min(max(factor, 0.25), 4.0), MIN_WINDOW_S), MAX_WINDOW_S)


class Windows:
    """``[start, end]`` cut into consecutive windows, the first `WINDOW_S` wide, each next one sized by `next_width`
    from what the last held (`held`): a window's values are in memory at once, and sparse history should not cost a
    request per minute. Each window shares its end with the next one's start (servers differ on whether EndTime is
    included: a value there may come twice, and is dropped)."""

    def __init__(self, start: datetime, end: datetime, width_s: float = WINDOW_S) -> None:
        self.start, self.end, self.width_s = start, end, width_s

    def __iter__(self):
        t = self.start
        while t < self.end:
            w1 = min(t + timedelta(seconds=self.width_s), self.end)
            yield t, w1
            t = w1

    def held(self, values: int) -> None:
        """How many values the window just read held: sizes the next one."""
        self.width_s = next_width(self.width_s, values)


async def read_window(client: Client, nodes: list[tuple[int, ua.NodeId]], start: datetime, end: datetime, *,
                      per_call: int, timeout_s: float, held: dict[int, tuple[ua.NodeId, bytes]] | None = None,
                      settle: Callable[[], bool] | None = None
                      ) -> tuple[list[tuple[int, ua.DataValue]], dict[int, str]]:
    """Every raw value of ``nodes`` ((index, node id) pairs) whose source time lies in ``[start, end]``, as
    ``(index, DataValue)`` in the server's order per node; and the nodes the server refused (index -> status name:
    not historized, no access ...). ``per_call`` nodes per request, each request within ``timeout_s``. Raises what
    the requests raise (a lost connection, a refused request).

    ``held`` (index -> (node id, continuation point)) is kept current with the continuation points the server holds
    for this session: those given and not yet used, and those sent in a request that did not answer (it may not have
    used them). A read that raises, is cancelled or gives up after `MAX_ROUNDS` leaves them there, for the caller to
    `release`: a server has few (Part 4 §7.9), and keeps them for the session's life otherwise. Cancelled while a
    request is under way, the read waits for its answer (within ``timeout_s``) when ``settle()`` says so (the
    connection is up): the points it gives are known from it only.

    A node whose answer is cut at NumValuesPerNode without a continuation point (asyncua's server does that, where
    Part 11 asks for one) is read on from its last value's time, which is not handed on twice; so is a node the
    server had no continuation point for (`_AGAIN`), while the others of the request make progress."""
    values: list[tuple[int, ua.DataValue]] = []
    refused: dict[int, str] = {}
    held = {} if held is None else held
    for k in range(0, len(nodes), per_call):
        ids = dict(nodes[k:k + per_call])
        # node -> (continuation point, start time of its request); nodes are asked together when their starts agree
        pending: dict[int, tuple[bytes | None, datetime]] = {i: (None, start) for i in ids}
        taken: dict[int, datetime] = {}  # node -> its values up to this time are taken (a read from there repeats it)
        seen: dict[int, datetime] = {}  # node -> the newest time of its values taken so far
        for _ in range(MAX_ROUNDS):
            if not pending:
                break
            groups: dict[datetime, list[int]] = {}
            for i, (_, since) in pending.items():
                groups.setdefault(since, []).append(i)
            later: dict[int, tuple[bytes | None, datetime]] = {}
            again: dict[int, str] = {}
            for since, order in groups.items():
                request = asyncio.ensure_future(
                    _history_read(client, [(ids[i], pending[i][0]) for i in order], since, end, timeout_s))
                try:
                    results = await asyncio.shield(request)
                except asyncio.CancelledError:
                    # Cancelled (a stop) while the server reads: the continuation points its answer gives are the
                    # session's, and known from the answer only; so it is waited for (the request has its timeout)
                    # while the connection is up. Failed or not waited for, what the request carried stays in `held`.
                    if not request.done() and settle is not None and settle():
                        await asyncio.wait([request])
                    if request.done() and not request.cancelled() and request.exception() is None:
                        _hold(held, ids, order, request.result())
                    else:
                        request.cancel()
                    raise
                _hold(held, ids, order, results)
                for i, res in zip(order, results, strict=True):
                    code = res.StatusCode
                    if code is not None and code.value in _AGAIN:
                        again[i] = code.name
                        if i in seen:
                            taken[i] = seen[i]
                        later[i] = (None, seen.get(i, since))
                        continue
                    if code is not None and not code.is_good() and code.value not in _EMPTY:
                        refused[i] = code.name
                        continue
                    raw = getattr(res.HistoryData, "DataValues", None) or []
                    floor = taken.get(i)
                    got = raw if floor is None else [dv for dv in raw if (_when(dv) or floor) > floor]
                    values.extend((i, dv) for dv in got)
                    newest = max((t for t in map(_when, got) if t is not None), default=None)
                    if newest is not None and (i not in seen or newest > seen[i]):
                        seen[i] = newest
                    # Followed even with no values: Part 11 §6.3 lets a server that is slow to find even one
                    # value answer zero results with a continuation point (taken as the end, a node's whole window
                    # was lost without a word).
                    if res.ContinuationPoint:
                        later[i] = (res.ContinuationPoint, since)
                    elif len(raw) >= VALUES_PER_NODE:
                        if newest is None:
                            refused[i] = f"more than {VALUES_PER_NODE} values at one time, without a continuation point"
                            continue
                        taken[i] = newest
                        later[i] = (None, newest)
            if len(again) == len(pending) and all(pending[i][0] is None for i in again):
                # Asked afresh and none made progress: no continuation point is to be had (nobody else holds one)
                refused.update({i: f"{name} (no continuation point to be had)" for i, name in again.items()})
                later = {i: p for i, p in later.items() if i not in again}
            pending = later
        else:
            refused.update(dict.fromkeys(pending, f"continuation not ended after {MAX_ROUNDS} requests"))
    return values, refused


def _hold(held: dict[int, tuple[ua.NodeId, bytes]], ids: dict[int, ua.NodeId], order: list[int],
          results: list[ua.HistoryReadResult]) -> None:
    """Note the continuation points an answer gives and those its request used (or the server dropped)."""
    for i, res in zip(order, results, strict=True):
        held.pop(i, None)
        if res.ContinuationPoint:
            held[i] = (ids[i], res.ContinuationPoint)


async def release(client: Client, held: list[tuple[ua.NodeId, bytes]], timeout_s: float) -> dict[str, int]:
    """Give back continuation points a read left (`read_window`'s ``held``): HistoryRead with
    ReleaseContinuationPoints (Part 4 §5.10.3), within ``timeout_s``. Returns the refusals, status name -> how many;
    Bad_ContinuationPointInvalid is none (the point is not held any more: the request that carried it used it, or
    the server dropped it). Raises what the request raises (a lost connection: the session, if resumed, still holds
    them)."""
    if not held:
        return {}
    now = datetime.now(UTC)
    results = await _history_read(client, held, now, now, timeout_s, release=True)
    refused: dict[str, int] = {}
    for res in results:
        code = res.StatusCode
        if code is not None and not code.is_good() and code.value != ua.StatusCodes.BadContinuationPointInvalid:
            refused[code.name] = refused.get(code.name, 0) + 1
    return refused


def _when(dv: ua.DataValue) -> datetime | None:
    return dv.SourceTimestamp or dv.ServerTimestamp


async def _history_read(client: Client, nodes: list[tuple[ua.NodeId, bytes | None]], start: datetime, end: datetime,
                        timeout_s: float, *, release: bool = False) -> list[ua.HistoryReadResult]:
    params = ua.HistoryReadParameters()
    params.HistoryReadDetails = ua.ReadRawModifiedDetails(
        IsReadModified=False, StartTime=start, EndTime=end, NumValuesPerNode=VALUES_PER_NODE, ReturnBounds=False)
    params.TimestampsToReturn = ua.TimestampsToReturn.Both
    params.ReleaseContinuationPoints = release
    params.NodesToRead = [ua.HistoryReadValueId(NodeId=node, IndexRange="", ContinuationPoint=cp) for node, cp in nodes]
    results = await within(client.uaclient.history_read(params), timeout_s)
    if len(results) != len(nodes):
        raise ValueError(f"HistoryRead answered {len(results)} results for {len(nodes)} nodes")
    return results
