"""Running ``valvoja`` as a user does: a child process of this interpreter, its exit status and output."""

from __future__ import annotations

import os
import subprocess
import sys

from psycopg.conninfo import conninfo_to_dict


def valvoja(*args: str, dsn: str | None = None, env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m edge.cli ARGS`` with no stdin (a command waiting for input fails instead of hanging). With
    ``dsn`` the database is the default one (``$VALVOJA_DB_URL``) and its password, if any, in ``PGPASSWORD``
    (never on the command line); ``env`` adds to (or overrides) this process's environment."""
    e = dict(os.environ)
    if dsn:
        e["VALVOJA_DB_URL"] = dsn
        if conninfo_to_dict(dsn).get("password"):
            e["PGPASSWORD"] = conninfo_to_dict(dsn)["password"]
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, env=e,
                          timeout=timeout, stdin=subprocess.DEVNULL)
