"""Drop the index on ``readings.time`` alone that TimescaleDB made (owner: edge/).

``create_hypertable`` adds an index on the time column alone to every chunk; no query of the program needs it: every
one reads readings by tag, through the (tag_id, time) key (plain PostgreSQL never had the index, and retention on
TimescaleDB drops whole chunks). It made the planner go wrong. A chunk that holds readings of one tag only (a backfill
of one sensor's history from before the site started, a replay) has ``n_distinct(tag_id) = 1``, so where the tag
is not a known constant (a prepared statement after psycopg's fifth execution, which the server then plans once for
any tag; a LATERAL per tag) the planner expects every row of that chunk to match, and walked its time index for
another tag's ``ORDER BY time DESC LIMIT 1`` instead of probing the key: every row of the chunk read, for nothing.
A lookup that reaches such chunks (a tag or indicator with no newer reading) read all of them: with 30 days of one
tag at 1 Hz before a site of 200 tags, 0.22-0.37 s (39,500 pages) instead of 0.5 ms (101 pages), and an asset page
with one indicator not yet computed 0.44-0.77 s instead of 2-4 ms (bench/bench_tsdb_plans.py). Dropping it also
spares every write the upkeep of a second index (what bench/bench_db_growth.py measured for an index on time on
plain PostgreSQL).

DROP INDEX on a hypertable drops the index of every chunk: files removed, nothing rebuilt, under a short exclusive
lock. A query by time alone over all tags (an operator's own SQL) reads whole chunks instead (docs/operations.md).
"""

from edge.db.features import Features


def up(cur, features: Features) -> None:
    # The rollups' bucket indexes stay: their lookups by tag read the (tag_id, bucket) key alone (index-only), which
    # the planner prefers whatever it guesses; and they take one row a minute per tag, not one a second.
    cur.execute("DROP INDEX IF EXISTS readings_time_idx")
