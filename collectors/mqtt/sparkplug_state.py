"""Sparkplug birth state on disk, so alias-only NDATA decode after a gateway restart.

With a persistent session the broker re-sends only what was not acknowledged: the NBIRTH that
defined the aliases was acknowledged long ago and will not come again until the edge node
rebirths. So every birth's state (alias table, datatypes, bdSeq, sequence number) is written here
— atomically and synced — while the birth message is being handled, before its batch can be
acknowledged. One small JSON file per edge node: ``<state_dir>/sparkplug/<group>~<node>.json``.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from urllib.parse import quote, unquote

from collectors.mqtt.sparkplug import SparkplugDecoder
from edge.files import write_atomic

log = logging.getLogger(__name__)


class SparkplugStore:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.decoders: list[SparkplugDecoder] = []
        self._lock = threading.Lock()

    def attach(self, decoder: SparkplugDecoder) -> None:
        """Load the saved nodes into ``decoder`` and save its births from now on."""
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else ():
            group, _, node = path.stem.partition("~")
            try:
                decoder.load_node(unquote(group), unquote(node), json.loads(path.read_text()))
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                log.warning("ignoring unreadable Sparkplug state %s: %s", path, exc)
        decoder.on_birth = self.save
        self.decoders.append(decoder)

    def save(self, group: str, node: str, state: dict) -> None:
        """Write one node's state (called on the MQTT network thread, before the birth is acked)."""
        path = self.folder / f"{_name(group)}~{_name(node)}.json"
        with self._lock:
            write_atomic(path, json.dumps(state, separators=(",", ":")))

    def stats(self) -> dict | None:
        if not self.decoders:
            return None
        out: dict = {"nodes": sum(len(d.nodes) for d in self.decoders)}
        for d in self.decoders:
            for k, v in d.stats.items():
                out[k] = out.get(k, 0) + v
        return out


def _name(part: str) -> str:
    # quote() leaves "~" alone; it separates group from node here.
    return quote(part, safe="").replace("~", "%7E")
