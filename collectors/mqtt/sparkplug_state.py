"""Sparkplug birth state on disk, so alias-only NDATA decode after a gateway restart.

With a persistent session the broker re-sends only what was not acknowledged: the NBIRTH that
defined the aliases was acknowledged long ago and will not come again until the edge node
rebirths. So every birth's state (alias table, datatypes, bdSeq, sequence number) is written here
— atomically and synced — while the birth message is being handled, before its batch can be
acknowledged; so is every death's (a dead node's aliases must not be taken as live after a restart).
One small JSON file per edge node: ``<state_dir>/sparkplug/<group>~<node>.json`` (the ids quoted), holding the ids
too. Ids too long for that name (a topic level may be 65,535 bytes, a file name 255) give
``<group, cut>~<node, cut>~<hash of both>.json``: the save must not fail on a name the edge node chose.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from urllib.parse import quote, unquote

from collectors.mqtt.sparkplug import SparkplugDecoder
from edge.files import write_atomic

log = logging.getLogger(__name__)

# Longest state file name: write_atomic's temporary file adds 14 bytes to it, and file systems allow 255.
NAME_MAX_BYTES = 200
_CUT = 80  # bytes of each quoted id kept in a shortened name, so a person can still tell the files apart


class SparkplugStore:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.decoders: list[SparkplugDecoder] = []
        self._lock = threading.Lock()

    def attach(self, decoder: SparkplugDecoder) -> None:
        """Load the saved nodes into ``decoder`` and save its births from now on."""
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else ():
            try:
                state = json.loads(path.read_text())
                if "group" in state and "node" in state:
                    group, node = str(state["group"]), str(state["node"])
                else:  # written before the file held the ids: its name is whole
                    group, _, node = (unquote(part) for part in path.stem.partition("~"))
                decoder.load_node(group, node, state)
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                log.warning("ignoring unreadable Sparkplug state %s: %s", path, exc)
        decoder.on_change = self.save
        self.decoders.append(decoder)

    def save(self, group: str, node: str, state: dict) -> None:
        """Write one node's state (called on the MQTT network thread, before the birth or death is acked)."""
        path = self.folder / file_name(group, node)
        with self._lock:
            write_atomic(path, json.dumps({**state, "group": group, "node": node}, separators=(",", ":")))

    def new_session(self) -> int:
        """`SparkplugDecoder.new_session` of every decoder; the number of live edge nodes whose births are now
        unconfirmed."""
        return sum(d.new_session() for d in self.decoders)

    def stats(self) -> dict | None:
        if not self.decoders:
            return None
        out: dict = {"nodes": sum(len(d.nodes) for d in self.decoders)}
        for d in self.decoders:
            for k, v in d.stats.items():
                out[k] = out.get(k, 0) + v
        return out


def file_name(group: str, node: str) -> str:
    """The state file's name for one edge node: the quoted ids, or cut ids and a hash of both when they are too
    long for a file name (the file holds the ids, `SparkplugStore.attach` reads them from there)."""
    name = f"{_name(group)}~{_name(node)}.json"
    if len(name) <= NAME_MAX_BYTES:  # quoted: ASCII, one byte a character
        return name
    digest = hashlib.sha256(json.dumps([group, node]).encode()).hexdigest()[:32]
    return f"{_name(group)[:_CUT]}~{_name(node)[:_CUT]}~{digest}.json"


def _name(part: str) -> str:
    # quote() leaves "~" alone; it separates group from node here.
    return quote(part, safe="").replace("~", "%7E")
