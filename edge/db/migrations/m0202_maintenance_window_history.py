"""Maintenance windows planned through the console or the CLI keep their history (owner: maintenance/).

A window planned by SQL was changed by UPDATE or DELETE and nothing said what it had been. Now:

- ``time_zone``: the IANA zone the planner gave local times in ('' when they gave offsets), for display;
- ``planned_ends_at``: the end as first planned; ``ends_at`` is moved earlier when the window is ended early
  (``ended_by``, ``ended_at`` say who and when);
- ``cancelled_at``, ``cancelled_by``, ``cancel_reason``: a cancelled window stays as a row and suppresses
  nothing (`maintenance.store.windows` leaves it out).
"""

from edge.db.features import Features


def up(cur, features: Features) -> None:
    cur.execute("""
        ALTER TABLE maintenance_windows
            ADD COLUMN time_zone text NOT NULL DEFAULT '',
            ADD COLUMN planned_ends_at timestamptz,
            ADD COLUMN ended_at timestamptz,
            ADD COLUMN ended_by text,
            ADD COLUMN cancelled_at timestamptz,
            ADD COLUMN cancelled_by text,
            ADD COLUMN cancel_reason text NOT NULL DEFAULT ''""")
    cur.execute("UPDATE maintenance_windows SET planned_ends_at = ends_at")
    cur.execute("CREATE INDEX maintenance_windows_starts ON maintenance_windows (starts_at, id)")
