"""Index the ``suppressed`` events the gateway logs (owner: console/).

The console's board and asset page show the conditions a current maintenance window hides
(`console.suppressed`): ``alert_events`` rows with ``event = 'suppressed'`` (no alert row behind them) whose
time falls in a window. Every other event kind outnumbers them by far; a partial index on their time keeps
the lookup off a scan of the whole trail, also for a window over every asset (``'*'``).
"""

from edge.db.features import Features


def up(cur, features: Features) -> None:
    cur.execute("SELECT to_regclass('alert_events') IS NOT NULL")
    if not cur.fetchone()[0]:
        return
    cur.execute("CREATE INDEX IF NOT EXISTS alert_events_suppressed ON alert_events (time) "
                "WHERE event = 'suppressed'")
