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


def test_a_reload_that_turns_the_loop_watch_on_applies_it(tmp_path):
    """``service.loop_stall_exit_s`` was read once at the start: a reload that turned the watch on (or changed its
    limit) logged "configuration reloaded", and a loop blocked after it went on unnoticed until a restart. A real
    `Service` in a child process (the watch ends it): started with the watch off, reloaded by SIGHUP with 0.5 s, then
    its loop blocked for 4 s."""
    import subprocess
    import sys
    from pathlib import Path

    from serverproc import free_port

    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[site]\ngateway_id = "gw-lw"\nstate_dir = "var"\n\n[http]\nlisten = "127.0.0.1:{free_port()}"\n\n'
                   '[logging]\nformat = "text"\n\n[service]\nloop_stall_exit_s = 0\n')
    code = ("import asyncio, os, signal, sys, time\n"
            "from pathlib import Path\n"
            "from edge.service import Service\n"
            "cfg = Path(sys.argv[1])\n"
            "svc = Service(cfg)\n"
            "async def main():\n"
            "    task = asyncio.create_task(svc.main())\n"
            "    while svc.gateway is None:\n"
            "        await asyncio.sleep(0.05)\n"
            "    cfg.write_text(cfg.read_text().replace('loop_stall_exit_s = 0', 'loop_stall_exit_s = 0.5'))\n"
            "    os.kill(os.getpid(), signal.SIGHUP)\n"
            "    while svc.cfg.service.loop_stall_exit_s != 0.5:\n"
            "        await asyncio.sleep(0.05)\n"
            "    await asyncio.sleep(0.3)\n"
            "    time.sleep(4)\n"
            "    print('the blocked loop went unnoticed', flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    await task\n"
            "svc._setup_logging(svc.cfg)\n"
            "asyncio.run(main())\n")
    p = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert "configuration reloaded" in p.stderr, p.stderr[-3000:]
    assert p.returncode == 1 and "event loop blocked" in p.stderr, (p.returncode, p.stdout, p.stderr[-3000:])
    assert "went unnoticed" not in p.stdout
