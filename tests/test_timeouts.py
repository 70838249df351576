"""edge/timeouts.py: `within`, the product's one way to bound a wait (Python 3.11's wait_for race)."""

from __future__ import annotations

import ast
import asyncio
import gc
import logging
import time
from pathlib import Path

import pytest

from edge.timeouts import cancel_and_wait, within

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("edge", "collectors", "models", "maintenance", "emissions", "console")


async def connect_like_asyncua(fut: asyncio.Future) -> None:
    """asyncua's connect_socket: the connect bounded by a wait_for of its own."""
    await asyncio.wait_for(fut, 10)


async def test_a_failure_racing_the_callers_cancel_is_taken_and_the_cancel_still_reaches_the_caller(caplog):
    loop = asyncio.get_running_loop()
    unhandled: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx["message"]))
    fut = loop.create_future()
    caller = asyncio.create_task(within(connect_like_asyncua(fut), 5))
    for _ in range(5):
        await asyncio.sleep(0)
    caplog.set_level(logging.DEBUG, logger="edge.timeouts")
    # The connect is refused in the loop iteration in which the gateway's stop cancels the caller: the inner
    # wait_for returns the failure instead of the cancel.
    fut.set_exception(ConnectionRefusedError(111, "Connect call failed"))
    caller.cancel()
    [outcome] = await asyncio.gather(caller, return_exceptions=True)
    del caller
    gc.collect()
    for _ in range(5):
        await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert isinstance(outcome, asyncio.CancelledError)  # the stop is not lost
    assert unhandled == []  # nobody logs "Task exception was never retrieved" for the failure
    assert "ConnectionRefusedError" in caplog.text  # and the race did happen: the awaited task ended with it


async def test_a_result_racing_the_callers_cancel_still_lets_the_cancel_reach_the_caller():
    """The awaited work finishes in the loop iteration the caller is cancelled (the gateway stopping while the
    analytics' sync answers): 3.11's wait_for returned the result and the cancel was lost, so a loop around
    `within` never ended and the stop waiting for it hung."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    rounds = 0

    async def sync_loop() -> None:
        nonlocal rounds
        while rounds < 20:
            await within(fut, 5) if rounds == 0 else await asyncio.sleep(0.01)
            rounds += 1

    caller = asyncio.create_task(sync_loop())
    for _ in range(5):
        await asyncio.sleep(0)
    fut.set_result(1)
    caller.cancel()
    [outcome] = await asyncio.gather(caller, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError) and rounds == 0


async def test_within_returns_raises_and_times_out_like_wait_for():
    async def value() -> int:
        await asyncio.sleep(0)
        return 7

    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad")

    assert await within(value(), 1) == 7
    assert await within(value(), None) == 7
    with pytest.raises(ValueError, match="bad"):
        await within(fails(), 1)
    slow = asyncio.ensure_future(asyncio.sleep(10))
    with pytest.raises(TimeoutError):
        await within(slow, 0.01)
    assert slow.cancelled()  # timed out, the work is cancelled, as wait_for does


async def test_a_cancel_the_work_is_slow_to_honour_is_repeated_after_the_grace():
    """psycopg answers a cancel in a query by waiting up to 10 s for the server to cancel it (a server that does not
    answer: all 10); a second cancel ends that wait. `within(..., cancel_grace_s)` and `cancel_and_wait` give it."""
    cancels = 0

    async def like_psycopg() -> None:
        nonlocal cancels
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancels += 1
            await asyncio.sleep(10)  # its wait for the server's answer to the cancel request
            raise

    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(like_psycopg(), 0.05, cancel_grace_s=0.1)
    assert cancels == 1 and time.monotonic() - t0 < 1
    task = asyncio.ensure_future(like_psycopg())
    await asyncio.sleep(0)
    t0 = time.monotonic()
    assert await cancel_and_wait(task, 0.1) and task.cancelled()
    assert time.monotonic() - t0 < 1


def test_the_product_bounds_waits_only_through_within():
    """asyncio.wait_for anywhere else would bring back the never-retrieved tracebacks in the gateway's log."""
    found = []
    for folder in PRODUCT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "edge" / "timeouts.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Attribute) and node.attr == "wait_for"
                        and isinstance(node.value, ast.Name) and node.value.id == "asyncio"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []
