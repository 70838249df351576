"""Time limits on awaits: `within`, the one way the product bounds a wait.

Python 3.11's `asyncio.wait_for` runs a coroutine as a task of its own. When the caller is cancelled in the same
loop iteration as that task fails, for example the gateway stopping while asyncua's connect is refused (asyncua
bounds the connect with a `wait_for` of its own, which then returns the failure instead of the cancel), the
task ends with an exception nobody retrieves. asyncio then logs "Task exception was never retrieved" with a
traceback whenever the task is garbage-collected: an ERROR in the log of an orderly stop. The chaos test saw it
(tests/test_gateway_chaos.py), and tests/test_timeouts.py reproduces it deterministically.

`within` is `wait_for` that always takes the outcome of the task it made. It keeps `wait_for`'s other behaviour on
3.11: a cancel reaches the caller even when the awaited code swallows it, which `asyncio.timeout` does not do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


async def within(aw: Awaitable[T], seconds: float | None) -> T:
    """Await ``aw`` for at most ``seconds`` (None: no limit); TimeoutError when it takes longer.

    Cancelled or timed out, the awaited work is cancelled and waited for, as with `asyncio.wait_for`; an exception
    it ended with anyway is logged at DEBUG, since the caller has stopped waiting for it.
    """
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
