"""Store what `MaintenanceLive.process` produced and send the notifications (the gateway calls this).

Order matters for traceability: predictions are written first, so an alert raised from a prediction
can carry the prediction's id in its evidence (``evidence.prediction.id``; reviews of the alert and of
the prediction then meet in `review.alert_precision`); then the alert changes in one transaction;
then the notifications, whose outcome is logged in ``alert_events`` (``notified`` / ``notify_failed``).
Derived readings are not handled here: they go to the spool like raw readings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import psycopg

from edge.records import Prediction
from maintenance import store
from maintenance.alerts import AlertChange


async def publish(conn: psycopg.AsyncConnection, predictions: Sequence[Prediction], changes: Sequence[AlertChange],
                  notifiers: Sequence = ()) -> list[tuple[AlertChange, bool, str]]:
    """Persist predictions and alert changes, then notify; returns (change, ok, detail) per notification."""
    ids = await store.write_predictions(conn, predictions) if predictions else []
    by_key = {(p.model_id, p.asset, p.time): i for p, i in zip(predictions, ids, strict=True)}
    for ch in changes:
        pred = ch.alert.evidence.get("prediction")
        if pred and "id" not in pred:
            pid = by_key.get((pred.get("model_id"), ch.alert.asset, pred.get("time")))
            if pid is not None:
                pred["id"] = pid
    await store.apply_changes(conn, changes)
    outcomes: list[tuple[AlertChange, bool, str]] = []
    sendable = [ch for ch in changes if ch.event != "suppressed"]
    async def send_in_order(n) -> list[tuple[bool, str]]:
        # One receiver's changes one after the other: sent at once, a "cleared" overtook its "raised" whenever the
        # receiver answered the first more slowly. Receivers are still served side by side.
        return [await n.send(ch) for ch in sendable]

    per_receiver = await asyncio.gather(*(send_in_order(n) for n in notifiers))
    for n, results in zip(notifiers, per_receiver, strict=True):
        for ch, (ok, detail) in zip(sendable, results, strict=True):
            if detail == "skipped":
                continue
            outcomes.append((ch, ok, detail))
            await store.log_event(conn, ch.alert, "notified" if ok else "notify_failed",
                                  {"channel": type(n).__name__, "event": ch.event, "detail": detail})
    return outcomes
