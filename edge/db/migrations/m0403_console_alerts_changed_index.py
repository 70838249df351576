"""Index the alerts by change time (owner: console/).

The console's live alert feed polls every second for the alerts changed after the last one it saw, by
(``updated_at``, ``id``) (`console.alerts.changed_page_sql`). ``alerts`` keeps every alert ever raised, and
without this index each poll scanned and sorted all of them: at 100,000 alerts some 2,000 pages a second per
console process, growing with every alert. With it a poll reads a short index range.
"""

from edge.db.features import Features


def up(cur, features: Features) -> None:
    cur.execute("SELECT to_regclass('alerts') IS NOT NULL")
    if not cur.fetchone()[0]:
        return
    cur.execute("CREATE INDEX IF NOT EXISTS alerts_changed ON alerts (updated_at, id)")
