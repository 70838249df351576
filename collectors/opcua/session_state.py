"""What a restarted gateway needs to resume the OPC UA session and subscription an earlier process made.

``<state_dir>/session.json``, mode 0600: it holds the session's authentication token, a credential (with it and
the gateway's own certificate and key anyone may take the session over). Written two ways:

- `SessionFile.save`, the whole record, when the session or the subscription changes: created, re-activated
  (every ActivateSession gives a new server nonce, which the next client signature covers), re-created. A
  temporary file, fsync, rename, fsync of the folder: a crash leaves the old record or the new one.
- `SessionFile.advance`, the last sequence number whose notification message the spool holds, after every such
  message and before asyncua acknowledges it to the server: written in place (a fixed-width field at the start of
  the file) into the page cache, without fsync. That costs about a microsecond; an atomic replace costs about
  0.7 ms here (ext4 writes the new file out at the rename even without fsync) and would hold the event loop for
  every publish response. A killed or crashed process leaves the number exact (the kernel has it): the resumed
  subscription republishes exactly what was not stored. After a power loss it may be older (never newer: it is
  written after the spool's commit), which only makes the server republish messages already stored: the same
  (tag, time), kept once by the database's primary key (the spool itself keeps every batch; the forwarder's
  ``ON CONFLICT (tag_id, time) DO NOTHING`` drops the repeat). The messages between the two numbers that the
  old process had acknowledged are then counted as lost, wrongly.

The record names the configuration it belongs to (`config_key`): a different endpoint, security, identity,
subscription setting or node list is not resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from collectors.opcua.config import Config
from collectors.opcua.connection import SessionTicket
from edge.files import write_atomic

VERSION = 1
_HEAD = b'{"durable_sequence_number": '  # the field `advance` overwrites: within the file's first disk sector
_WIDTH = 10  # a UInt32 in decimal, padded with spaces (JSON allows them)


def config_key(cfg: Config) -> dict[str, str]:
    """The settings a saved session belongs to, by part (a resume is refused naming the parts that differ).
    ``nodes`` covers the whole list in order: client handle i + 1 is ``cfg.nodes[i]``."""
    nodes = [n.model_dump() for n in cfg.nodes]
    defaults = {k: getattr(cfg, k) for k in ("mode", "sampling_interval_ms", "queue_size", "discard_oldest")}
    text = json.dumps([defaults, nodes], sort_keys=True)
    return {
        "endpoint": cfg.endpoint,
        "security": f"{cfg.security_policy}/{cfg.security_mode} certificate={cfg.certificate} "
                    f"application_uri={cfg.application_uri}",
        "identity": (f"user {cfg.username}" if cfg.username is not None else
                     f"certificate {cfg.user_certificate}" if cfg.user_certificate is not None else "anonymous"),
        "subscription": f"session_timeout_s={cfg.session_timeout_s} "
                        f"publishing_interval_ms={cfg.publishing_interval_ms} "
                        f"keepalive_count={cfg.keepalive_count} lifetime_count={cfg.lifetime_count} "
                        f"max_notifications_per_publish={cfg.max_notifications_per_publish}",
        "nodes": hashlib.sha256(text.encode()).hexdigest(),
    }


@dataclass(slots=True)
class SavedSession:
    config: dict[str, str]  # config_key() when saved
    ticket: SessionTicket
    server_started: str | None  # ServerStatus.StartTime (ISO) when the session was created
    subscription_id: int
    publishing_interval_ms: float  # what the server granted
    keepalive_count: int
    lifetime_count: int
    items: dict[int, str]  # client handle -> tag, of the monitored items the server created
    eu_ranges: dict[int, tuple[float, float]] = field(default_factory=dict)  # of percent-deadband items
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (tag, node id, status) refused
    last_sequence_number: int = 0  # the last notification message the spool holds (0: none yet)

    def to_text(self) -> bytes:
        body = asdict(self)
        seq = body.pop("last_sequence_number")
        rest = json.dumps({"version": VERSION, **body}, indent=1)[1:]  # without its "{"
        return _HEAD + b"%*d" % (_WIDTH, seq) + b"," + rest.encode() + b"\n"

    @classmethod
    def from_text(cls, text: bytes) -> SavedSession:
        """Raises ValueError (with what is wrong) for anything but a record this version wrote."""
        try:
            raw = json.loads(text)
            if raw.get("version") != VERSION:
                raise ValueError(f"version {raw.get('version')!r}, not {VERSION}")
            t = raw["ticket"]
            ticket = SessionTicket(str(t["authentication_token"]), t["server_nonce"], float(t["timeout_ms"]),
                                   [(p[0], int(p[1]), p[2]) for p in t["user_token_policies"]], t["session_id"])
            return cls(config=dict(raw["config"]), ticket=ticket, server_started=raw["server_started"],
                       subscription_id=int(raw["subscription_id"]),
                       publishing_interval_ms=float(raw["publishing_interval_ms"]),
                       keepalive_count=int(raw["keepalive_count"]), lifetime_count=int(raw["lifetime_count"]),
                       items={int(h): str(tag) for h, tag in raw["items"].items()},
                       eu_ranges={int(h): (float(lo), float(hi)) for h, (lo, hi) in raw["eu_ranges"].items()},
                       failed=[(str(a), str(b), str(c)) for a, b, c in raw["failed"]],
                       last_sequence_number=int(raw["durable_sequence_number"]))
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{type(exc).__name__}: {exc}") from None


class SessionFile:
    """``session.json`` in a collector's state folder; errors are the caller's (OSError, ValueError)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._live = False  # this process saved the current record: `advance` may write into it

    def load(self) -> SavedSession | None:
        """The saved record, None if there is none; ValueError if it cannot be read as one."""
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return SavedSession.from_text(text)

    def save(self, saved: SavedSession) -> None:
        self._close()
        self._live = False  # until the new record is in place: never advance the one it replaces
        write_atomic(self.path, saved.to_text(), mode=0o600)  # a credential: the owner only
        self._live = True

    def advance(self, seq: int) -> None:
        """Record ``seq`` as the last durable message of the saved subscription (nothing before `save`)."""
        if not self._live:
            return
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY)
        os.pwrite(self._fd, b"%*d" % (_WIDTH, seq), len(_HEAD))

    def delete(self) -> None:
        self._close()
        self._live = False
        self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
