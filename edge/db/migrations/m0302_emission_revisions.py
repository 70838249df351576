"""Revisions of closed emission averages (owner: emissions/): a stored average of a period that had ended when it was
stored, which a later run (late readings, `valvoja emissions compute`) replaced with a different value or status.

A report filed from the first value would differ from one made after the change; reports of the period say so from
these rows (`emissions.revisions.notes`). One row per changed average, kept (a few rows per late batch): the run that
made it (``run_id``) may be removed by ``emission_runs`` retention, so the row holds everything the note needs.
"""

from edge.db.features import Features


def up(cur, features: Features) -> None:
    cur.execute("""
        CREATE TABLE IF NOT EXISTS emission_revisions (
            id bigserial PRIMARY KEY,
            stack text NOT NULL,
            pollutant text NOT NULL,
            period text NOT NULL,               -- half_hour | hour (the day's sub-averages) | day | month | year
            period_start timestamptz NOT NULL,
            period_end timestamptz NOT NULL,
            old_value double precision,         -- mg/Nm3 as stored before (NULL: no value)
            new_value double precision,
            old_status smallint NOT NULL,       -- 0 valid, 1 invalid, 2 not operating
            new_status smallint NOT NULL,
            run_id bigint NOT NULL,             -- emission_runs.id of the run that changed it
            revised_at timestamptz NOT NULL DEFAULT now()
        )""")
    cur.execute("CREATE INDEX IF NOT EXISTS emission_revisions_period ON emission_revisions (stack, period_start)")
