"""Maintenance schema: alerts with their history and comments, predictions, maintenance windows, feedback.

Owner: maintenance/ (documented for the console in maintenance/README.md).

- ``alerts``: one row per alert, its current state. At most one *open* (not cleared) alert per
  ``dedup_key`` (a unique partial index), so de-duplication holds across gateway restarts.
- ``alert_events``: the history, written by a trigger on ``alerts`` so that every writer (the alert
  manager, the console's acknowledge/clear) leaves the same trail; suppressed triggers (no alert
  row) are logged here too with ``alert_id`` NULL.
- ``predictions``: every model output with its uncertainty, a hypertable on ``time``; the key
  (asset, model_id, target, time) makes a replayed batch idempotent; ``id`` is what reviews refer to.
- ``prediction_feedback``: right/wrong + comment on a prediction or on an alert, by whom, when.
"""

from edge.db.features import Features, make_hypertable


def up(cur, features: Features) -> None:
    cur.execute("""
        CREATE TABLE alerts (
            id text PRIMARY KEY,
            asset text NOT NULL,
            tag text,
            kind text NOT NULL,
            severity text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
            state text NOT NULL DEFAULT 'raised' CHECK (state IN ('raised', 'acknowledged', 'cleared')),
            raised_at timestamptz NOT NULL,
            message text NOT NULL DEFAULT '',
            acknowledged_at timestamptz,
            acknowledged_by text,
            ack_comment text,
            cleared_at timestamptz,
            cleared_by text,
            evidence jsonb NOT NULL DEFAULT '{}'::jsonb,
            dedup_key text NOT NULL,
            source text NOT NULL DEFAULT '',
            model_id text,
            model_version text,
            occurrences integer NOT NULL DEFAULT 1,
            last_seen timestamptz NOT NULL,
            escalation_level integer NOT NULL DEFAULT 0,
            escalated_at timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    cur.execute("CREATE UNIQUE INDEX alerts_open_key ON alerts (dedup_key) WHERE cleared_at IS NULL")
    cur.execute("CREATE INDEX alerts_asset_raised ON alerts (asset, raised_at DESC)")
    cur.execute("CREATE INDEX alerts_open ON alerts (raised_at DESC) WHERE cleared_at IS NULL")
    cur.execute("""
        CREATE TABLE alert_events (
            id bigserial PRIMARY KEY,
            alert_id text REFERENCES alerts(id) ON DELETE CASCADE,
            asset text NOT NULL,
            kind text NOT NULL,
            time timestamptz NOT NULL DEFAULT now(),
            event text NOT NULL CHECK (event IN ('raised', 'updated', 'escalated', 'acknowledged', 'cleared',
                                                 'suppressed', 'notified', 'notify_failed')),
            actor text NOT NULL DEFAULT 'system',
            detail jsonb NOT NULL DEFAULT '{}'::jsonb
        )""")
    cur.execute("CREATE INDEX alert_events_alert ON alert_events (alert_id, time)")
    cur.execute("CREATE INDEX alert_events_asset ON alert_events (asset, time DESC)")
    # The trail of state changes, whoever makes them (alert manager or console).
    cur.execute("""
        CREATE FUNCTION maintenance_alert_history() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO alert_events (alert_id, asset, kind, time, event, actor, detail)
                VALUES (NEW.id, NEW.asset, NEW.kind, NEW.raised_at, 'raised', 'system',
                        jsonb_build_object('severity', NEW.severity, 'message', NEW.message));
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
                        jsonb_build_object('severity', NEW.severity, 'was', OLD.severity));
            END IF;
            RETURN NULL;
        END $$""")
    cur.execute("CREATE TRIGGER maintenance_alert_history AFTER INSERT OR UPDATE ON alerts "
                "FOR EACH ROW EXECUTE FUNCTION maintenance_alert_history()")
    cur.execute("""
        CREATE TABLE alert_comments (
            id bigserial PRIMARY KEY,
            alert_id text NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
            time timestamptz NOT NULL DEFAULT now(),
            author text NOT NULL,
            comment text NOT NULL
        )""")
    cur.execute("CREATE INDEX alert_comments_alert ON alert_comments (alert_id, time)")
    cur.execute("""
        CREATE TABLE maintenance_windows (
            id serial PRIMARY KEY,
            asset text NOT NULL,
            tag text,
            starts_at timestamptz NOT NULL,
            ends_at timestamptz NOT NULL,
            reason text NOT NULL DEFAULT '',
            created_by text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL DEFAULT now(),
            CHECK (ends_at > starts_at)
        )""")
    cur.execute("CREATE INDEX maintenance_windows_asset ON maintenance_windows (asset, ends_at)")
    cur.execute("""
        CREATE TABLE predictions (
            id bigserial,
            time timestamptz NOT NULL,
            model_id text NOT NULL,
            model_version text NOT NULL,
            asset text NOT NULL,
            kind text NOT NULL DEFAULT 'regression',
            target text NOT NULL DEFAULT '',
            value double precision,
            lower double precision,
            upper double precision,
            coverage double precision,
            p_value double precision,
            input_start timestamptz,
            input_end timestamptz,
            details jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset, model_id, target, time)
        )""")
    make_hypertable(cur, features, "predictions", "time", "7 days")
    cur.execute("CREATE INDEX predictions_id ON predictions (id)")
    cur.execute("CREATE INDEX predictions_model_time ON predictions (model_id, time DESC)")
    cur.execute("""
        CREATE TABLE prediction_feedback (
            id bigserial PRIMARY KEY,
            prediction_id bigint,
            alert_id text REFERENCES alerts(id) ON DELETE CASCADE,
            verdict text NOT NULL CHECK (verdict IN ('right', 'wrong')),
            comment text NOT NULL DEFAULT '',
            reviewer text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CHECK (prediction_id IS NOT NULL OR alert_id IS NOT NULL)
        )""")
    cur.execute("CREATE INDEX prediction_feedback_prediction ON prediction_feedback (prediction_id, created_at DESC)")
    cur.execute("CREATE INDEX prediction_feedback_alert ON prediction_feedback (alert_id, created_at DESC)")
