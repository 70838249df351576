"""Notify the console's live alert board on every change of an alert (owner: console/).

A row trigger on maintenance's ``alerts`` table sends the alert id on channel ``valvoja_alerts``
(the notification is delivered at commit, so the board never sees an uncommitted alert). It only
notifies: it changes nothing in the row. Without an ``alerts`` table (an older schema) this does
nothing and the console falls back to polling the table.
"""

from edge.db.features import Features


def up(cur, features: Features) -> None:
    cur.execute("SELECT to_regclass('alerts') IS NOT NULL")
    if not cur.fetchone()[0]:
        return
    cur.execute("""
        CREATE OR REPLACE FUNCTION console_alert_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('valvoja_alerts', NEW.id::text);
            RETURN NULL;
        END $$""")
    cur.execute("DROP TRIGGER IF EXISTS console_alert_notify ON alerts")
    cur.execute("CREATE TRIGGER console_alert_notify AFTER INSERT OR UPDATE ON alerts "
                "FOR EACH ROW EXECUTE FUNCTION console_alert_notify()")
