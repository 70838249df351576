"""Emission monitoring schema (owner: emissions/): averages, compliance, exceedance events, QAL3, runs.

Every table is keyed so that recomputing a span writes the same rows again (idempotent upserts);
``emission_runs`` keeps the configuration used for each computation, so any stored average can be
traced to the exact permit numbers (``config_sha256``) that produced it.
"""

from edge.db.features import Features, make_hypertable


def up(cur, features: Features) -> None:
    cur.execute("""
        CREATE TABLE emission_averages (
            stack text NOT NULL,
            pollutant text NOT NULL,
            period text NOT NULL,               -- ten_min | half_hour | hour | day | month | year
            period_start timestamptz NOT NULL,
            period_end timestamptz NOT NULL,
            value double precision,             -- mg/Nm3 dry, 273.15 K, 101.325 kPa, reference O2
            validated double precision,         -- value minus the 95 % confidence interval (valid periods only)
            raw double precision,               -- mean analyser value in the analyser's unit
            status smallint NOT NULL,           -- 0 valid, 1 invalid, 2 not operating
            valid boolean NOT NULL,
            availability double precision,      -- valid / operating primary values
            n_expected integer NOT NULL,
            n_operating integer NOT NULL,
            n_valid integer NOT NULL,
            n_substituted integer NOT NULL,
            substituted_share double precision NOT NULL,
            sub_valid integer,                  -- day: valid hours or half-hours; month/year: valid days
            sub_invalid integer,
            ci double precision NOT NULL,       -- confidence interval subtracted, mg/Nm3
            mass_kg_h double precision,
            mass_kg double precision,
            config_sha256 text NOT NULL,
            computed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (stack, pollutant, period, period_start)
        )""")
    make_hypertable(cur, features, "emission_averages", "period_start", "90 days")
    cur.execute("""
        CREATE TABLE emission_compliance (
            stack text NOT NULL,
            pollutant text NOT NULL,
            rule text NOT NULL,
            window_start timestamptz NOT NULL,
            window_end timestamptz NOT NULL,
            n_valid integer NOT NULL,
            n_over integer NOT NULL,
            limit_value double precision NOT NULL,
            required_share double precision,
            share_within double precision,
            passed boolean NOT NULL,
            provisional boolean NOT NULL,
            reference text NOT NULL DEFAULT '',
            config_sha256 text NOT NULL,
            computed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (stack, pollutant, rule, window_start)
        )""")
    cur.execute("""
        CREATE TABLE emission_events (
            stack text NOT NULL,
            pollutant text NOT NULL,
            rule text NOT NULL,
            kind text NOT NULL,                 -- exceedance | window | invalid_days | pems_deviation
            period text NOT NULL,
            period_start timestamptz NOT NULL,
            period_end timestamptz NOT NULL,
            value double precision NOT NULL,
            limit_value double precision NOT NULL,
            elv double precision NOT NULL,
            breach boolean NOT NULL,            -- a final breach; false: tolerated by a share rule or by an
                                                -- alternative of its group, provisional, or a PEMS deviation
            provisional boolean NOT NULL,       -- period or window not complete in the computed span: never a
                                                -- breach yet; the first run covering all of it judges it
            config_sha256 text NOT NULL,
            computed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (stack, pollutant, rule, kind, period_start)
        )""")
    cur.execute("CREATE INDEX emission_events_time ON emission_events (stack, period_start DESC)")
    cur.execute("""
        CREATE TABLE emission_qal3_checks (
            stack text NOT NULL,
            analyser text NOT NULL,
            kind text NOT NULL,                 -- zero | span
            time timestamptz NOT NULL,
            value double precision NOT NULL,
            reference double precision NOT NULL,
            deviation double precision NOT NULL,
            z double precision,
            cusum_pos double precision NOT NULL,
            cusum_neg double precision NOT NULL,
            moving_range double precision,
            s_ams double precision,
            s_estimated boolean NOT NULL,
            alarms text[] NOT NULL,
            computed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (stack, analyser, kind, time)
        )""")
    cur.execute("""
        CREATE TABLE emission_runs (
            id bigserial PRIMARY KEY,
            stack text NOT NULL,
            span_start timestamptz NOT NULL,
            span_end timestamptz NOT NULL,
            config jsonb NOT NULL,
            config_sha256 text NOT NULL,
            averages integer NOT NULL,
            events integer NOT NULL,
            seconds double precision NOT NULL,
            computed_at timestamptz NOT NULL DEFAULT now()
        )""")
    cur.execute("CREATE INDEX emission_runs_stack ON emission_runs (stack, computed_at DESC)")
