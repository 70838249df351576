"""The event-loop watch (edge/loopwatch.py): a blocked loop is reported after the limit, a busy one is not."""

from __future__ import annotations

import asyncio
import time

from edge.loopwatch import LoopWatch


async def _run(block_s: float, total_s: float, limit_s: float) -> list[float]:
    stalls: list[float] = []
    watch = LoopWatch(limit_s, stalls.append, check_s=0.05)
    beat = asyncio.create_task(watch.beat())
    watch.start()
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < total_s:
            await asyncio.sleep(0.01)  # a busy loop that awaits: alive
            if block_s and time.monotonic() - t0 > 0.2:
                time.sleep(block_s)  # noqa: ASYNC251 -- the point: a call that blocks the loop for block_s
                block_s = 0
    finally:
        watch.stop()
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
    return stalls


async def test_a_blocked_loop_is_reported_once_after_the_limit():
    stalls = await _run(block_s=1.0, total_s=1.5, limit_s=0.4)
    assert len(stalls) == 1 and 0.4 < stalls[0] < 1.0


async def test_a_loop_that_awaits_is_never_reported():
    assert await _run(block_s=0, total_s=1.0, limit_s=0.3) == []


def test_the_gateway_exits_on_a_blocked_loop(tmp_path):
    """The service's handler: the threads' stacks on stderr, a critical log line, exit code 1 (run in a child
    process, as it ends the process)."""
    import subprocess
    import sys

    code = ("import asyncio, time, logging\n"
            "from edge import service\n"
            "from edge.loopwatch import LoopWatch\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "async def main():\n"
            "    w = LoopWatch(0.3, service._exit_on_blocked_loop, check_s=0.05)\n"
            "    t = asyncio.create_task(w.beat()); w.start(); await asyncio.sleep(0.1)\n"
            "    time.sleep(5)\n"
            "asyncio.run(main())\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                       env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1])})
    assert p.returncode == 1
    assert "event loop blocked" in p.stderr
    assert "time.sleep" in p.stderr or "line 8" in p.stderr  # the stack shows where the loop is blocked
