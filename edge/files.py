"""Files of the state folder: one way to replace a file whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` durably and atomically: a temporary file in the same folder, synced, renamed
    over it, then the folder synced, so a crash or a power cut leaves the old or the new content, never half of
    one, and a completed call survives. ``mode`` 0o600 for files holding credentials."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def state_body(body: dict, version: int) -> bytes:
    """A state file's content: ``body`` with its format version and when it was saved, as JSON."""
    import json
    from datetime import UTC, datetime

    return json.dumps({"format": version, "saved_at": datetime.now(UTC).isoformat(), **body}).encode()


def read_state(path: Path, version: int) -> dict | None:
    """The body of a state file written with `state_body`; None when there is none. ValueError (naming the file)
    when it cannot be read or is of another format version: the caller logs it and starts without it."""
    import json

    try:
        body = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(body, dict) or body.get("format") != version:
        got = body.get("format") if isinstance(body, dict) else type(body).__name__
        raise ValueError(f"{path}: format {got!r}, expected {version}")
    return body
