"""Late readings of a closed year (owner: emissions/): what each run was computed from, and why it ran.

``rollup_readings``: the readings of the stack's tags in the run's span as the rollups (``readings_1h``) counted
them when the run started; the periodic job compares it with the count now to find readings that arrived after a
closed year was computed (NULL: stored before this column). ``reason``: why a run was made where it is not the
usual schedule (a recomputation from late data says so here, and reports quote it).
The index finds the runs that computed a year to its end without reading every 5-minute month run.
"""

from edge.db.features import Features


def up(cur, features: Features) -> None:
    cur.execute("ALTER TABLE emission_runs ADD COLUMN IF NOT EXISTS rollup_readings bigint,"
                " ADD COLUMN IF NOT EXISTS reason text NOT NULL DEFAULT ''")
    cur.execute("CREATE INDEX IF NOT EXISTS emission_runs_span_end ON emission_runs (stack, span_end)")
