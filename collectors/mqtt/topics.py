"""Topic filters and tag templates: which subscription a topic belongs to, and the tag it names.

A subscription's ``topic`` is an MQTT filter whose single-level wildcards may carry a name:
``plant/+site/+asset/#`` subscribes to ``plant/+/+/#`` and names levels 1 and 2 ``site`` and
``asset``. The subscription's ``tag`` template builds the tag name from the received topic:

- ``{0}``, ``{1}``, ...  topic level by position, counted from 0 (``a/b/c``: ``{1}`` is ``b``);
  a level beyond the end of the topic renders empty;
- ``{site}``             the level a named wildcard ``+site`` matched;
- ``{#}``                the levels the trailing ``#`` matched, joined with ``/`` as in the topic;
- ``{topic}``            the whole topic;
- ``{field}``            the name the payload gives (JSON tag field or object key, Sparkplug metric name);
- Sparkplug only: ``{group}``, ``{node}``, ``{device}`` (levels 1, 3 and 4 of ``spBv1.0/...``).

``{{`` and ``}}`` are literal braces. Templates are compiled once; per topic the rendered text
around ``{field}`` is cached, so naming a reading costs one string concatenation.
"""

from __future__ import annotations

import re

from edge.errors import DataError

SPARKPLUG_NAMES = {"group": 1, "node": 3, "device": 4}
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CACHE_MAX = 65_536  # distinct topics remembered per subscription; cleared (not grown) beyond this
_FIELD_TOPICS_MAX = 4096  # topics whose field -> tag names are remembered
_FIELD_NAMES_MAX = 100_000  # field -> tag names remembered over all topics; cleared (not grown) beyond this
# Topics and field names come from whoever may publish, and either may be 64 kB: longer ones are not cached (they
# cost a little more to route and name), so the caches stay at tens of MB. Bounded by entries alone, 20,000
# messages on distinct 20 kB topics kept 786 MB.
CACHED_KEY_MAX = 256

# Template parts: a literal str, or one of these tuples.
_LEVEL, _REST, _TOPIC, _FIELD = "level", "rest", "topic", "field"


class TopicFilter:
    """An MQTT topic filter with optional named ``+name`` wildcards."""

    def __init__(self, spec: str) -> None:
        if not spec:
            raise ValueError("topic filter is empty")
        levels = spec.split("/")
        self.names: dict[str, int] = {}
        plain: list[str] = []
        for i, level in enumerate(levels):
            if level == "#":
                if i != len(levels) - 1:
                    raise ValueError(f"topic {spec!r}: '#' must be the last level")
            elif level.startswith("+"):
                name = level[1:]
                if name:
                    if not _NAME.fullmatch(name):
                        raise ValueError(f"topic {spec!r}: wildcard name {name!r} must be a word like +asset")
                    if name in self.names:
                        raise ValueError(f"topic {spec!r}: wildcard name {name!r} used twice")
                    self.names[name] = i
                level = "+"
            elif "+" in level or "#" in level:
                raise ValueError(f"topic {spec!r}: wildcards must fill a whole level (level {i}: {level!r})")
            plain.append(level)
        self.spec = spec
        self.mqtt = "/".join(plain)  # what is sent to the broker
        self.has_rest = plain[-1] == "#"
        self.fixed = plain[:-1] if self.has_rest else plain  # levels before '#'
        self.min_levels = len(self.fixed)

    def matches(self, levels: list[str]) -> bool:
        fixed = self.fixed
        n = len(levels)
        if n < len(fixed) or (not self.has_rest and n != len(fixed)):
            return False
        for want, got in zip(fixed, levels, strict=False):
            if want != "+" and want != got:
                return False
        return True


def covers(wide: str, narrow: str) -> bool:
    """True when MQTT filter ``wide`` matches every topic that filter ``narrow`` matches."""
    a, b = wide.split("/"), narrow.split("/")
    for i, level in enumerate(a):
        if level == "#":
            return not (i == 0 and b[0].startswith("$"))  # wildcards at level 0 never match $SYS/...
        if i >= len(b) or b[i] == "#":
            return False
        if level == "+":
            if i == 0 and b[0].startswith("$"):
                return False
        elif level != b[i]:
            return False
    return len(a) == len(b)


def subscribed_filters(filters: list[str]) -> list[str]:
    """``filters`` without those another one covers. A broker may send a message that matches two subscriptions
    once per subscription (mosquitto does with MQTT 5): each copy would be stored, at its own receive time."""
    return [f for f in filters if not any(g != f and covers(g, f) for g in filters)]


class TagTemplate:
    """A compiled tag template (see the module docstring); ``render`` names a reading."""

    def __init__(self, spec: str, topic: TopicFilter, *, sparkplug: bool = False) -> None:
        names = dict(SPARKPLUG_NAMES) if sparkplug else {}
        names.update(topic.names)
        parts: list = []
        fields = 0
        pos = 0
        for m in _PLACEHOLDER.finditer(spec):
            parts.append(spec[pos:m.start()])
            pos = m.end()
            token = m.group(0)
            if token in ("{{", "}}"):
                parts.append(token[0])
                continue
            key = m.group(1)
            if key is None:
                raise ValueError(f"tag {spec!r}: unmatched {token!r} (write {token * 2} for a literal brace)")
            if key.isdigit():
                index = int(key)
                if not topic.has_rest and index >= len(topic.fixed):
                    raise ValueError(f"tag {spec!r}: {{{key}}} is beyond topic {topic.spec!r} "
                                     f"(levels 0..{len(topic.fixed) - 1})")
                parts.append((_LEVEL, index))
            elif key == "#":
                if not topic.has_rest:
                    raise ValueError(f"tag {spec!r}: {{#}} needs a topic ending in '#'")
                parts.append((_REST, topic.min_levels))
            elif key == "topic":
                parts.append((_TOPIC,))
            elif key == "field":
                fields += 1
                parts.append((_FIELD,))
            elif key in names:
                parts.append((_LEVEL, names[key]))
            else:
                known = ", ".join(["0..N", "#", "topic", "field", *names]) if names else "0..N, #, topic, field"
                raise ValueError(f"tag {spec!r}: unknown placeholder {{{key}}} (known: {known}; name a level "
                                 f"with a named wildcard like +{key} in the topic)")
        parts.append(spec[pos:])
        if fields > 1:
            raise ValueError(f"tag {spec!r}: {{field}} may appear once")
        self.spec = spec
        self.uses_field = fields == 1
        self._parts = [p for p in parts if p != ""]
        self._cache: dict[str, tuple[str, str]] = {}
        self._field_cache: dict[str, dict[str, str]] = {}
        self._field_names = 0  # names held in _field_cache, over all topics

    def around_field(self, topic: str) -> tuple[str, str]:
        """(text before ``{field}``, text after) for ``topic``; the whole tag is in the first when no field."""
        got = self._cache.get(topic)
        if got is None:
            got = self._render(topic)
            if len(topic) <= CACHED_KEY_MAX:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[topic] = got
        return got

    def field_tags(self, topic: str) -> dict[str, str]:
        """A cache ``{field: tag}`` for ``topic`` that decoders look names up in and fill through `remember`, so a
        known name costs one lookup (a long topic gets an empty dict of its own: not cached)."""
        if len(topic) > CACHED_KEY_MAX:
            return {}
        names = self._field_cache.get(topic)
        if names is None:
            if len(self._field_cache) >= _FIELD_TOPICS_MAX:
                self._forget_fields()
            names = self._field_cache[topic] = {}
        return names

    def remember(self, names: dict[str, str], field: str, tag: str) -> None:
        """Add ``field -> tag`` to ``names`` (from `field_tags`) unless the field name is long; all topics' names
        are forgotten beyond `_FIELD_NAMES_MAX`."""
        if len(field) > CACHED_KEY_MAX:
            return
        if self._field_names >= _FIELD_NAMES_MAX:
            self._forget_fields()
            return
        names[field] = tag
        self._field_names += 1

    def _forget_fields(self) -> None:
        self._field_cache.clear()
        self._field_names = 0

    def render(self, topic: str, field: str | None = None) -> str:
        pre, post = self.around_field(topic)
        if self.uses_field:
            if field is None:
                raise DataError(f"tag template {self.spec!r} needs {{field}} but the message names none")
            return pre + field + post
        return pre

    def _render(self, topic: str) -> tuple[str, str]:
        levels = topic.split("/")
        out: list[str] = []
        before: list[str] | None = None
        for p in self._parts:
            if isinstance(p, str):
                out.append(p)
            elif p[0] == _LEVEL:
                out.append(levels[p[1]] if p[1] < len(levels) else "")
            elif p[0] == _REST:
                out.append("/".join(levels[p[1]:]))
            elif p[0] == _TOPIC:
                out.append(topic)
            else:
                before, out = out, []
        if before is None:
            tag = "".join(out)
            if not tag:
                raise DataError(f"tag template {self.spec!r} gives an empty tag name for topic {topic!r}")
            return tag, ""
        return "".join(before), "".join(out)
