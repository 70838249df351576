"""Dead letters written once: a digest of each one, unique (owner: edge/).

A spooled batch is deleted only after its database COMMIT, so a crash between the two writes the batch
again. Readings are de-duplicated by their key (tag, time); dead letters had none and were stored twice.
The digest is sha256 over source, topic, payload, error and receive time (edge/sink/timescale.py); rows
written before this migration keep a NULL digest (NULLs never conflict).
"""

from edge.db.features import Features


def up(cur, features: Features) -> None:
    cur.execute("ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS digest bytea")
    cur.execute("CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_digest ON dead_letters (digest)")
