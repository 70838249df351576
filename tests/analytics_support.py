"""What tests of live analytics (`edge.analytics.Analytics`) share."""

from __future__ import annotations


def spool_emit(batches: list | None = None):
    """An ``emit`` for `Analytics` standing in for the gateway's ingest task: keeps each batch in ``batches`` (if
    given) and acknowledges it at once, as the ingest task does after the spool commit. Alert changes are notified
    only after that acknowledgement; an emit that never acknowledges holds them for NOTIFY_STORE_WAIT_S."""

    async def emit(batch) -> None:
        if batches is not None:
            batches.append(batch)
        if batch.ack is not None:
            batch.ack()

    return emit
