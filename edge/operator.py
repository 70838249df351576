"""Who runs a command from a shell, for the records a change leaves (audit log, emission runs)."""

from __future__ import annotations

import getpass
import os


def who() -> str:
    """``$VALVOJA_USER``, else the login name; ``uid N`` where the account has no name (a container's user that is
    in no passwd file), so that a record never fails for want of one."""
    name = os.environ.get("VALVOJA_USER")
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no LOGNAME/USER and no passwd entry (3.11 raises KeyError, 3.13 OSError)
        return f"uid {os.getuid()}"
