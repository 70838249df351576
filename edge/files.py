"""Files of the state folder: one way to replace a file whole or not at all."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import secrets
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def write_atomic(path: str | Path, data: bytes | str, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` durably and atomically: a temporary file in the same folder, synced, renamed
    over it, then the folder synced, so a crash or a power cut leaves the old or the new content, never half of
    one, and a completed call survives. The file's mode is what ``open`` would give a new file (0o666 less the
    process's umask: a site that runs with umask 027 gets files the world cannot read); ``mode`` 0o600 for files
    holding credentials (the umask can only take more away)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: it makes the file 0o600 whatever the umask, and a fchmod to a fixed mode ignored the site's umask.
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666 if mode is None else mode)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries (a rename or a new file in it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


FileId = tuple[int, int, int]


def file_id(path: str | Path) -> FileId | None:
    """What tells one version of a file from another (inode, mtime, size): `write_atomic` gives every write a new
    inode, so a changed id means someone replaced the file. None when there is no file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the exclusive advisory lock of ``path`` (``<path>.lock`` beside it) while reading, changing and writing
    it back, so two processes that both do (the gateway and a command such as ``train-anomaly``) never lose each
    other's change. Blocks until the lock is free; released on exit, also when the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def replace_if_unchanged(path: str | Path, data: bytes, expected: FileId | None) -> FileId | None:
    """`write_atomic` ``data`` to ``path`` under its lock, only if the file is still the version ``expected`` (None:
    no file): the new version's id, or None when another process replaced the file since (read it, merge, retry)."""
    with locked(path):
        if file_id(path) != expected:
            return None
        write_atomic(path, data)
        return file_id(path)


META = "__meta__"


def pack_state(meta: dict, arrays: dict[str, np.ndarray], version: int) -> bytes:
    """A state file's content (`write_atomic` it): ``meta`` (JSON: names, keys, scalars) with its format version
    and save time, and numpy ``arrays``, as one uncompressed ``.npz``. Arrays are written as they are, with no
    per-number Python work: a large history costs milliseconds, not the seconds of a JSON encoding that holds
    the interpreter lock (and with it the event loop)."""
    head = json.dumps({"format": version, "saved_at": datetime.now(UTC).isoformat(), **meta}).encode()
    buf = io.BytesIO()
    np.savez(buf, **{META: np.frombuffer(head, np.uint8)}, **arrays)
    return buf.getvalue()


def read_state(path: str | Path, version: int) -> tuple[dict, dict[str, np.ndarray]] | None:
    """``(meta, arrays)`` of a state file written from `pack_state`; None when there is none. ValueError naming
    the file when it cannot be read or is of another format version: the caller logs it and starts without."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z[META].tobytes())
            arrays = {k: z[k] for k in z.files if k != META}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable state file ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != version:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path}: format {got!r}, expected {version}")
    return meta, arrays


def read_asset_state(path: str | Path, version: int) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """The per-asset entries (``meta["assets"]``) and the arrays of a state file; both empty when there is none.
    ValueError naming the file when it cannot be read as one (the caller logs it and starts without)."""
    state = read_state(path, version)
    if state is None:
        return {}, {}
    meta, arrays = state
    assets = meta.get("assets")
    if not isinstance(assets, dict) or not all(isinstance(v, dict) for v in assets.values()):
        raise ValueError(f"{path}: no per-asset entries")
    return assets, arrays
