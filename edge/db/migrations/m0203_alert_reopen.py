"""Alerts re-opened when their condition comes back soon after they cleared (owner: maintenance/).

A condition flapping more slowly than the hysteresis (``clear_after_s``) raised a new alert, and paged, at every
return. The gateway now re-opens the alert it cleared less than ``reopen_within_s`` before
(`maintenance.alerts.AlertManager`): ``reopened_at`` says when it last did (the escalation clock starts there), and
the history gets a ``reopened`` event.
"""

from edge.db.features import Features


def up(cur, features: Features) -> None:
    cur.execute("ALTER TABLE alerts ADD COLUMN reopened_at timestamptz")
    cur.execute("ALTER TABLE alert_events DROP CONSTRAINT alert_events_event_check")
    cur.execute("""
        ALTER TABLE alert_events ADD CONSTRAINT alert_events_event_check
            CHECK (event IN ('raised', 'updated', 'escalated', 'acknowledged', 'cleared', 'suppressed', 'notified',
                             'notify_failed', 'reopened'))""")
