"""Time limits on awaits: `within`, the one way the product bounds a wait.

Python 3.11's `asyncio.wait_for` runs a coroutine as a task of its own. When the caller is cancelled in the same
loop iteration as that task fails, for example the gateway stopping while asyncua's connect is refused (asyncua
bounds the connect with a `wait_for` of its own, which then returns the failure instead of the cancel), the
task ends with an exception nobody retrieves. asyncio then logs "Task exception was never retrieved" with a
traceback whenever the task is garbage-collected: an ERROR in the log of an orderly stop. The chaos test saw it
(tests/test_gateway_chaos.py), and tests/test_timeouts.py reproduces it deterministically.

`within` is `wait_for` that always takes the outcome of the task it made. It keeps `wait_for`'s other behaviour on
3.11: a cancel reaches the caller even when the awaited code swallows it, which `asyncio.timeout` does not do.

A cancel is not always quick: psycopg answers one that lands in a query by asking the server to cancel it and waiting
up to 10 s (5 s for the cancel request, 5 s for the query to end). A server that does not answer (frozen, or a
network cut with the connection still open) held the gateway's stop and reload that long, past their deadline
(`stop_timeout`, exit 1). `cancel_and_wait`, and `within(..., cancel_grace_s=...)`, cancel again after a grace
period; psycopg then closes the connection at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long work on a database connection may take to end after a cancel before it is cancelled again (psycopg closes
# the connection then). A server that answers cancels a query in milliseconds.
CANCEL_GRACE_S = 1.0


async def within(aw: Awaitable[T], seconds: float | None, *, cancel_grace_s: float | None = None) -> T:
    """Await ``aw`` for at most ``seconds`` (None: no limit); TimeoutError when it takes longer.

    Cancelled or timed out, the awaited work is cancelled and waited for, as with `asyncio.wait_for`; an exception
    it ended with anyway is logged at DEBUG, since the caller has stopped waiting for it. With ``cancel_grace_s``
    that wait is bounded: the work is cancelled again after each ``cancel_grace_s`` it goes on, and left after the
    second time (`cancel_and_wait`): for work on a connection whose peer may have stopped answering.
    """
    if cancel_grace_s is not None:
        return await _within_graced(aw, seconds, cancel_grace_s)
    me = asyncio.current_task()
    cancels = me.cancelling() if me is not None else 0
    task = asyncio.ensure_future(aw)
    try:
        result = await asyncio.wait_for(task, seconds)
    except (asyncio.CancelledError, TimeoutError):
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            log.debug("%r ended with %r after its caller stopped waiting", task, exc)
        raise
    # 3.11's wait_for returns the result when the caller is cancelled in the loop iteration the awaited work
    # finishes: the cancel was lost, and a loop around `within` (the analytics' sync every SYNC_INTERVAL_S) went on
    # for good, so the stop waiting for it hung (tests/test_maintenance_windows_live.py, 300 s). The cancel wins.
    if me is not None and me.cancelling() > cancels:
        raise asyncio.CancelledError
    return result


async def _within_graced(aw: Awaitable[T], seconds: float | None, grace_s: float) -> T:
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        await cancel_and_wait(task, grace_s)
        raise
    if not done:
        await cancel_and_wait(task, grace_s)
        raise TimeoutError
    return task.result()


async def cancel_and_wait(task: asyncio.Future, grace_s: float = CANCEL_GRACE_S) -> bool:
    """Cancel ``task`` and wait for it to end, cancelling it once more after ``grace_s``; True if it ended (within
    about twice ``grace_s``). A second cancel is what ends psycopg's wait for a server that does not answer its
    cancel request (it closes the connection), where a single one held the caller up to 10 s."""
    for _ in range(2):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=grace_s)
    if not task.done():
        return False
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("%r ended with %r after it was cancelled", task, exc)
    return True
