"""Models schema: the model registry and its audit trail (DESIGN.md §6).

Owner: models/ (``models.registry``; read by the console, console/routes/models.py).

- ``model_registry``: one row per registered version. The files (``model.onnx``, ``card.json``) live in the
  registry directory at ``path``; ``sha256`` is the ONNX file's, checked whenever a version is loaded.
  ``status``: candidate (registered, not serving), champion (served; at most one per model id, enforced by a
  unique partial index), retired (was champion, or was rolled back). The card's main parts are also columns
  (metrics, input schema, calibration, parity, training data) so the console and SQL can read them.
- ``model_events``: every register / promote / refuse / rollback with the gate's comparison in ``detail``,
  in time order; rollback replays it to find the previous champion.
"""

from edge.db.features import Features


def up(cur, features: Features) -> None:
    cur.execute("""
        CREATE TABLE model_registry (
            model_id text NOT NULL,
            version integer NOT NULL CHECK (version > 0),
            kind text NOT NULL,
            status text NOT NULL DEFAULT 'candidate' CHECK (status IN ('candidate', 'champion', 'retired')),
            sha256 text NOT NULL,
            path text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            parent_version integer,
            target text,
            estimator text,
            metrics jsonb NOT NULL DEFAULT '{}'::jsonb,
            gate_metric text,
            gate_direction text CHECK (gate_direction IN ('lower', 'higher')),
            input_schema jsonb NOT NULL,
            calibration jsonb NOT NULL DEFAULT '{}'::jsonb,
            parity jsonb NOT NULL DEFAULT '{}'::jsonb,
            parity_passed boolean NOT NULL,
            training_fingerprint text,
            training_start timestamptz,
            training_end timestamptz,
            training_span jsonb NOT NULL DEFAULT '{}'::jsonb,
            card jsonb NOT NULL,
            promoted_at timestamptz,
            retired_at timestamptz,
            PRIMARY KEY (model_id, version)
        )""")
    cur.execute("CREATE UNIQUE INDEX model_registry_one_champion ON model_registry (model_id) "
                "WHERE status = 'champion'")
    cur.execute("CREATE INDEX model_registry_created ON model_registry (created_at DESC)")
    cur.execute("""
        CREATE TABLE model_events (
            id bigserial PRIMARY KEY,
            model_id text NOT NULL,
            version integer NOT NULL,
            event text NOT NULL CHECK (event IN ('register', 'promote', 'refuse', 'rollback')),
            from_version integer,
            time timestamptz NOT NULL DEFAULT now(),
            actor text NOT NULL DEFAULT 'system',
            detail jsonb NOT NULL DEFAULT '{}'::jsonb
        )""")
    cur.execute("CREATE INDEX model_events_model ON model_events (model_id, id)")
