"""edge.files.write_atomic: the mode of the files it writes follows the process's umask, as open() would."""

from __future__ import annotations

import os
import stat

import pytest

from edge.files import write_atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_sites_umask_decides_who_can_read_the_state_files(tmp_path, umask_027):
    """Every state file was made 0o644 whatever the umask: a site running the gateway with umask 027 (nothing for
    the world) still had its spool's neighbours, model cards and Sparkplug births readable by every local user."""
    write_atomic(tmp_path / "state.json", "{}")
    assert mode(tmp_path / "state.json") == 0o640
    write_atomic(tmp_path / "key.pem", b"secret", mode=0o600)  # credentials: the owner only, whatever the umask
    assert mode(tmp_path / "key.pem") == 0o600
    write_atomic(tmp_path / "key.pem", b"secret 2", mode=0o600)  # replacing keeps it, and the content is the new one
    assert mode(tmp_path / "key.pem") == 0o600 and (tmp_path / "key.pem").read_bytes() == b"secret 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem", "state.json"]  # no temporary file left


def test_the_default_umask_gives_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "card.json", "{}")
    finally:
        os.umask(old)
    assert mode(tmp_path / "card.json") == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, "old")
    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # type: ignore[arg-type]  # neither bytes nor str: fails while writing
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
