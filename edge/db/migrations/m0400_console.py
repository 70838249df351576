"""Console schema: users, sessions, API tokens, audit log, log-in failures (owner: console/).

Secrets are never stored: passwords as scrypt hashes (console/passwords.py), session ids
and API tokens as SHA-256 digests (they are 256-bit random values, so a fast hash is
enough and a database leak does not give usable credentials).
"""

from edge.db.features import Features

ROLES = ("viewer", "engineer", "maintenance", "admin")


def up(cur, features: Features) -> None:
    roles = ", ".join(f"'{r}'" for r in ROLES)
    cur.execute(f"""
        CREATE TABLE console_users (
            id serial PRIMARY KEY,
            username text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9_.@-]{{1,64}}$'),
            display_name text NOT NULL DEFAULT '',
            password_hash text NOT NULL,
            role text NOT NULL CHECK (role IN ({roles})),
            disabled boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            last_login timestamptz
        )""")
    cur.execute("""
        CREATE TABLE console_sessions (
            id_hash bytea PRIMARY KEY,
            user_id integer NOT NULL REFERENCES console_users(id) ON DELETE CASCADE,
            csrf_token text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            last_seen timestamptz NOT NULL DEFAULT now(),
            client text NOT NULL DEFAULT ''
        )""")
    cur.execute("CREATE INDEX console_sessions_expiry ON console_sessions (expires_at)")
    cur.execute(f"""
        CREATE TABLE console_api_tokens (
            id serial PRIMARY KEY,
            name text NOT NULL,
            token_hash bytea NOT NULL UNIQUE,
            prefix text NOT NULL,
            role text NOT NULL CHECK (role IN ({roles})),
            created_by text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz,
            last_used_at timestamptz,
            revoked_at timestamptz
        )""")
    # Append-only by convention: the console only INSERTs here. detail holds before/after values.
    cur.execute("""
        CREATE TABLE console_audit (
            id bigserial PRIMARY KEY,
            time timestamptz NOT NULL DEFAULT now(),
            actor text NOT NULL,
            actor_kind text NOT NULL CHECK (actor_kind IN ('user', 'token', 'system')),
            action text NOT NULL,
            target_kind text NOT NULL DEFAULT '',
            target_id text NOT NULL DEFAULT '',
            detail jsonb NOT NULL DEFAULT '{}'::jsonb,
            client text NOT NULL DEFAULT ''
        )""")
    cur.execute("CREATE INDEX console_audit_time ON console_audit (time DESC)")
    cur.execute("CREATE INDEX console_audit_target ON console_audit (target_kind, target_id, time DESC)")
    cur.execute("""
        CREATE TABLE console_login_failures (
            time timestamptz NOT NULL DEFAULT now(),
            username text NOT NULL,
            client text NOT NULL
        )""")
    cur.execute("CREATE INDEX console_login_failures_user ON console_login_failures (username, time)")
    cur.execute("CREATE INDEX console_login_failures_client ON console_login_failures (client, time)")
