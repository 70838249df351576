"""The evidence of an alert in its history (owner: maintenance/).

The ``alerts`` row holds the evidence of the last observation that changed it: a flap or a rise of severity
replaces it, so the readings or the prediction that *raised* the alert were gone from the database once the
condition had come back a few times ("why was this raised?" had no answer for a review or an audit, and the
prediction a reviewer marked was no longer the one the alert named). The history trigger (m0200) now keeps the
evidence in the ``raised`` event and in each ``updated`` event of a severity change. Same function otherwise.
"""

from edge.db.features import Features


def up(cur, features: Features) -> None:
    cur.execute("""
        CREATE OR REPLACE FUNCTION maintenance_alert_history() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO alert_events (alert_id, asset, kind, time, event, actor, detail)
                VALUES (NEW.id, NEW.asset, NEW.kind, NEW.raised_at, 'raised', 'system',
                        jsonb_build_object('severity', NEW.severity, 'message', NEW.message,
                                           'evidence', NEW.evidence));
                RETURN NULL;
            END IF;
            IF OLD.acknowledged_at IS NULL AND NEW.acknowledged_at IS NOT NULL THEN
                INSERT INTO alert_events (alert_id, asset, kind, time, event, actor, detail)
                VALUES (NEW.id, NEW.asset, NEW.kind, NEW.acknowledged_at, 'acknowledged',
                        coalesce(NEW.acknowledged_by, 'unknown'), jsonb_build_object('comment', NEW.ack_comment));
            END IF;
            IF OLD.cleared_at IS NULL AND NEW.cleared_at IS NOT NULL THEN
                INSERT INTO alert_events (alert_id, asset, kind, time, event, actor, detail)
                VALUES (NEW.id, NEW.asset, NEW.kind, NEW.cleared_at, 'cleared', coalesce(NEW.cleared_by, 'system'),
                        '{}'::jsonb);
            END IF;
            IF NEW.escalation_level > OLD.escalation_level THEN
                INSERT INTO alert_events (alert_id, asset, kind, time, event, actor, detail)
                VALUES (NEW.id, NEW.asset, NEW.kind, coalesce(NEW.escalated_at, now()), 'escalated', 'system',
                        jsonb_build_object('level', NEW.escalation_level, 'severity', NEW.severity));
            ELSIF NEW.severity <> OLD.severity THEN
                INSERT INTO alert_events (alert_id, asset, kind, time, event, actor, detail)
                VALUES (NEW.id, NEW.asset, NEW.kind, NEW.last_seen, 'updated', 'system',
                        jsonb_build_object('severity', NEW.severity, 'was', OLD.severity, 'message', NEW.message,
                                           'evidence', NEW.evidence));
            END IF;
            RETURN NULL;
        END $$""")
