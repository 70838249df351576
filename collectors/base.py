"""What every collector is: protocol traffic in, `Batch`es of `Reading`s out.

A collector knows nothing about storage. The runtime (`edge.gateway`) gives it an
`emit` coroutine and runs `run(emit)` inside its own reconnect loop. A collector
raises `edge.errors.NotConnectedError` (or any exception) when its peer is gone;
the runtime logs it once, counts it, backs off and calls `run` again.

`emit(batch)` returns when the batch is accepted into the bounded ingest queue
(back-pressure); `batch.ack` is called later, once the readings are durable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from edge.records import Batch

Emit = Callable[[Batch], Awaitable[None]]


class Collector(Protocol):
    name: str

    async def run(self, emit: Emit) -> None:
        """Connect, then emit batches until cancelled or the connection is lost."""
        ...

    async def aclose(self) -> None:
        """Release connections; safe to call more than once."""
        ...

    def status(self) -> dict:
        """A small dict for /healthz: connected, last message time, counters."""
        ...


class CollectorContext:
    """What the runtime gives a collector when it builds one.

    ``state_dir`` is the collector's own folder for durable state (certificates,
    session ids); ``metrics`` is the gateway's `edge.metrics.Metrics`; ``state`` (an
    `edge.pipeline.SourceState`, or None without a spool) is state kept in the spool, for
    what must be committed with the readings themselves (`Batch.state`).
    """

    def __init__(self, *, name: str, state_dir, metrics, state=None) -> None:
        self.name = name
        self.state_dir = state_dir
        self.metrics = metrics
        self.state = state
