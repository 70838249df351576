"""Core schema: assets, tags with calibration records, readings, rollups, dead letters.

``readings`` has one row per (tag, time): the primary key is what makes a replayed
batch idempotent. Rollup tables have the same shape on every edition so readers
need not care which edition they run on; the forwarder keeps them current.
"""

from edge.db.features import Features, make_hypertable


def up(cur, features: Features) -> None:
    cur.execute("""
        CREATE TABLE assets (
            name text PRIMARY KEY,
            site text NOT NULL DEFAULT '',
            kind text NOT NULL DEFAULT '',
            description text NOT NULL DEFAULT '',
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    cur.execute("""
        CREATE TABLE tags (
            id serial PRIMARY KEY,
            name text NOT NULL UNIQUE,
            asset text NOT NULL DEFAULT '',
            unit text NOT NULL DEFAULT '',
            description text NOT NULL DEFAULT '',
            kind text NOT NULL DEFAULT 'float',
            range_min double precision,
            range_max double precision,
            sampling_ms integer,
            configured boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    # Calibration history: a reading is traced to the record whose valid_from is the
    # latest one not after the reading's time.
    cur.execute("""
        CREATE TABLE tag_calibrations (
            tag_id integer NOT NULL REFERENCES tags(id),
            valid_from timestamptz NOT NULL,
            certificate text NOT NULL,
            calibrated_on date NOT NULL,
            uncertainty double precision NOT NULL,
            uncertainty_unit text NOT NULL DEFAULT '',
            PRIMARY KEY (tag_id, valid_from)
        )""")
    cur.execute("""
        CREATE TABLE readings (
            time timestamptz NOT NULL,
            tag_id integer NOT NULL,
            value double precision,
            value_text text,
            quality smallint NOT NULL,
            flags integer NOT NULL DEFAULT 0,
            status bigint NOT NULL DEFAULT 0,
            receive_time timestamptz NOT NULL,
            server_time timestamptz,
            PRIMARY KEY (tag_id, time)
        )""")
    make_hypertable(cur, features, "readings", "time", "1 day")
    if features.community:
        # Only the Timescale-licensed edition compresses; segmenting by tag keeps per-tag range scans cheap.
        # Not exercised by CI here (Debian ships the Apache-2 edition only).
        cur.execute("ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_segmentby = 'tag_id',"
                    " timescaledb.compress_orderby = 'time DESC')")
        cur.execute("SELECT add_compression_policy('readings', INTERVAL '7 days', if_not_exists => true)")
    for name, chunk in (("readings_1m", "7 days"), ("readings_1h", "90 days")):
        cur.execute(f"""
            CREATE TABLE {name} (
                bucket timestamptz NOT NULL,
                tag_id integer NOT NULL,
                min double precision,
                max double precision,
                sum double precision,
                count integer NOT NULL,
                last double precision,
                last_time timestamptz,
                bad_count integer NOT NULL DEFAULT 0,
                PRIMARY KEY (tag_id, bucket)
            )""")
        make_hypertable(cur, features, name, "bucket", chunk)
    cur.execute("""
        CREATE VIEW readings_named AS
        SELECT r.time, t.name AS tag, t.asset, t.unit, r.value, r.value_text, r.quality, r.flags,
               r.status, r.receive_time, r.server_time
        FROM readings r JOIN tags t ON t.id = r.tag_id""")
    cur.execute("""
        CREATE TABLE dead_letters (
            id bigserial PRIMARY KEY,
            time timestamptz NOT NULL,
            source text NOT NULL,
            topic text NOT NULL,
            payload bytea NOT NULL,
            error text NOT NULL
        )""")
    cur.execute("CREATE INDEX dead_letters_time ON dead_letters (time DESC)")
