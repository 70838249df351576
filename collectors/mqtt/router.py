"""Message -> readings: the subscription a topic belongs to, its decoder, and dead letters.

Runs on paho's network thread. A message that cannot be decoded becomes a `DeadLetter` (kept by
the pipeline for inspection) and one log line per topic, then at most one per ``LOG_EVERY_S`` with
the number suppressed in between, so a device that sends garbage ten times a second does not flood
the log. Across topics a collector logs at most ``LOG_TOPICS_PER_WINDOW`` such lines per ``LOG_EVERY_S``
(and one saying the rest are held back): a publisher that puts a counter or a time in its topics, or a
thousand devices all sending garbage, would otherwise write one line per message.

Readings without a source time get the receive time; `untimed` keeps several of one tag apart and decides what
becomes of a retained message's (``retained_untimed``).

A decoder raises `DataError` for what it knows to be malformed. Any other exception is a bug that a
message has found in a decoder: it becomes a dead letter too (the message is acknowledged and the
stream goes on; raising here would end the connection and the broker would redeliver the message on
every reconnect, stopping everything after it). The first such error of each exception type is logged
at ERROR with its traceback, and counted through ``on_decoder_error``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from collectors.mqtt.config import MQTT_MAX_PAYLOAD, Subscription
from collectors.mqtt.decode import Decoder, JsonDecoder, make_decoder
from collectors.mqtt.sparkplug import SparkplugDecoder
from collectors.mqtt.sparkplug_state import SparkplugStore
from collectors.mqtt.topics import CACHED_KEY_MAX, TopicFilter, covers, subscribed_filters
from collectors.mqtt.untimed import mark_retained, spread, without_untimed
from edge.columns import Rows
from edge.errors import DataError
from edge.records import DeadLetter, Reading

log = logging.getLogger(__name__)

DEAD_LETTER_MAX_BYTES = 1 << 20  # payload bytes kept per dead letter
LOG_EVERY_S = 60.0  # a topic's decode errors are logged at most this often
LOG_TOPICS_PER_WINDOW = 10  # lines about undecodable messages per LOG_EVERY_S and collector, whatever their topics
_LOG_TOPICS_MAX = 10_000
_ROUTE_CACHE_MAX = 65_536
SUBSCRIPTION_ID_MAX = 268_435_455  # MQTT 5 §3.8.2.1.2


def subscription_id(mqtt_filter: str) -> int:
    """The MQTT 5 subscription identifier of a filter: derived from the filter alone, so a resumed session's
    subscriptions (made by an earlier run, maybe with other filters beside) keep meaning the same filter."""
    h = int.from_bytes(hashlib.blake2b(mqtt_filter.encode(), digest_size=8).digest(), "big")
    return h % SUBSCRIPTION_ID_MAX + 1



def partly_stored(errors: list[str], kept: int) -> str:
    """A dead letter's error for a message whose good readings were stored: what was left out, and that."""
    shown = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
    return (f"{len(errors)} malformed sample(s) or value(s) not stored: {shown} "
            f"(the message's other {kept} reading(s) are stored)")


class Router:
    """The collector's subscriptions with their decoders; counts what it handles."""

    def __init__(self, source: str, subscriptions: list[Subscription], state_dir: Path, *,
                 on_decoder_error: Callable[[], None] | None = None,
                 on_rebirth: Callable[[str, str, str], None] | None = None,
                 retained_untimed: str = "skip", max_payload_bytes: int = MQTT_MAX_PAYLOAD,
                 on_too_large: Callable[[], None] | None = None,
                 on_sequence_gap: Callable[[], None] | None = None) -> None:
        self.source = source
        self.max_payload_bytes = max_payload_bytes
        self.on_too_large = on_too_large  # told of each message over max_payload_bytes (a metric)
        self.keep_retained = retained_untimed == "store"
        self.on_decoder_error = on_decoder_error
        self.sparkplug = SparkplugStore(Path(state_dir) / "sparkplug")
        self.routes: list[tuple[TopicFilter, Decoder]] = []
        for sub in subscriptions:
            decoder = make_decoder(sub)
            if isinstance(decoder, SparkplugDecoder):
                decoder.on_rebirth = on_rebirth
                decoder.on_gap = on_sequence_gap  # told of each Sparkplug sequence gap (messages lost: a metric)
                self.sparkplug.attach(decoder)
            self.routes.append((sub.compiled()[0], decoder))
        # What is subscribed; routing still goes by every subscription, in configuration order.
        self.filters = subscribed_filters([flt.mqtt for flt, _ in self.routes])
        self._cache: dict[str, Decoder | None] = {}
        # MQTT 5: mosquitto sends a message matching two subscribed filters (overlapping, neither covering the
        # other: plant/+/x and plant/a/+) once per subscription, each copy with its subscription's identifier.
        # Only the copy of the first matching filter is decoded; the others are acknowledged and counted.
        ids = [subscription_id(f) for f in self.filters]
        self.sub_ids = dict(zip(self.filters, ids, strict=True)) if len(set(ids)) == len(ids) else {}
        self._known_ids = set(self.sub_ids.values())
        self._owner: dict[str, int | None] = {}
        self.copies = 0  # copies of a message for a second matching subscription, not decoded
        self._log_times: dict[str, tuple[float, int]] = {}
        self._bugs_logged: set[type] = set()  # exception types already logged with a traceback
        # The collector-wide window of dead-letter lines: its start, lines written in it, messages held back.
        self._window_at: float | None = None
        self._window_lines = self._window_quiet = 0
        self.messages = self.readings = self.dead_letters = self.decoder_errors = self.retained_skipped = 0
        self.too_large = 0  # messages over max_payload_bytes (also in dead_letters)

    def handle(self, topic: str | None, raw_topic: bytes, payload: bytes, now: datetime,
               retained: bool = False, redelivered: bool = False,
               sub_ids: list[int] | None = None) -> tuple[list[Reading] | Rows, list[DeadLetter], int]:
        """Decode one message; ``topic`` is None when its bytes are not UTF-8; ``redelivered``: the broker sends it
        again (DUP); ``sub_ids``: the MQTT 5 subscription identifiers it came with. Returns the readings, the dead
        letters and the microseconds from ``now`` its readings without a source time take (`untimed.spread`; 0: none
        has the receive time as its time)."""
        if sub_ids and topic is not None and self.sub_ids and not self._for_owner(topic, sub_ids):
            self.copies += 1
            return [], [], 0
        self.messages += 1
        if topic is None:
            return [], [self._dead_letter(raw_topic.decode("utf-8", "replace"), payload,
                                          "topic is not valid UTF-8", now)], 0
        if len(payload) > self.max_payload_bytes:  # before decoding: that would take several times its size
            self.too_large += 1
            if self.on_too_large is not None:
                self.on_too_large()
            return [], [self._dead_letter(topic, payload, f"message of {len(payload)} bytes is over max_payload_bytes "
                                                          f"({self.max_payload_bytes}); not decoded", now)], 0
        decoder = self._route(topic)
        try:
            if decoder is None:
                raise DataError("no subscription of this collector matches the topic")
            # JSON (the bulk of plant traffic) decodes into plain rows; the others into readings.
            if decoder.__class__ is JsonDecoder:
                readings = decoder.rows(payload, topic, now)
            elif redelivered and decoder.__class__ is SparkplugDecoder:  # its sequence number was seen already
                readings = decoder(payload, topic, now, redelivered=True)
            else:
                readings = decoder(payload, topic, now)
        except DataError as exc:
            return [], [self._dead_letter(topic, payload, str(exc), now)], 0
        except Exception as exc:  # a decoder bug: see the module docstring
            return [], [self._dead_letter(topic, payload, f"{type(exc).__name__}: {exc}", now, exc)], 0
        dead = []
        if getattr(readings, "errors", ()):
            dead.append(self._dead_letter(topic, payload, partly_stored(readings.errors, len(readings)), now))
        if retained:
            if self.keep_retained:
                mark_retained(readings)
            else:
                readings, skipped = without_untimed(readings)
                if skipped:
                    self._skipped_retained(topic, skipped)
        self.readings += len(readings)
        return readings, dead, spread(readings)

    def _skipped_retained(self, topic: str, n: int) -> None:
        if not self.retained_skipped:
            # Once per collector: at a new subscription a broker may hold thousands of retained topics.
            log.info("%s: retained message on %s: %d value(s) without a source time not stored (the broker's last "
                     "known value, not a new measurement); more are counted in status(); retained_untimed = "
                     "\"store\" keeps them", self.source, topic, n,
                     extra={"event": "mqtt_retained_skipped", "collector": self.source, "topic": topic})
        self.retained_skipped += n

    def _for_owner(self, topic: str, sub_ids: list[int]) -> bool:
        """Whether a message came for the first subscribed filter matching its topic (or for none known: a
        subscription this run did not make, whose copy must not be lost)."""
        owner = self._owner.get(topic, 0)
        if owner == 0:
            owner = next((i for f, i in self.sub_ids.items() if covers(f, topic)), None)
            if len(topic) <= CACHED_KEY_MAX:
                if len(self._owner) >= _ROUTE_CACHE_MAX:
                    self._owner.clear()
                self._owner[topic] = owner
        return owner is None or owner in sub_ids or self._known_ids.isdisjoint(sub_ids)

    def _route(self, topic: str) -> Decoder | None:
        cache = self._cache
        try:
            return cache[topic]
        except KeyError:
            pass
        levels = topic.split("/")
        found = next((dec for flt, dec in self.routes if flt.matches(levels)), None)
        if len(topic) <= CACHED_KEY_MAX:
            if len(cache) >= _ROUTE_CACHE_MAX:
                cache.clear()
            cache[topic] = found
        return found

    def _dead_letter(self, topic: str, payload: bytes, error: str, now: datetime,
                     bug: Exception | None = None) -> DeadLetter:
        self.dead_letters += 1
        if bug is not None:
            self.decoder_errors += 1
            if self.on_decoder_error is not None:
                self.on_decoder_error()
        if len(payload) > DEAD_LETTER_MAX_BYTES:
            error += f" (payload of {len(payload)} bytes cut to {DEAD_LETTER_MAX_BYTES})"
            payload = payload[:DEAD_LETTER_MAX_BYTES]
        mono = time.monotonic()
        key = topic[:CACHED_KEY_MAX]  # long topics that begin alike share their log lines' rate
        last, suppressed = self._log_times.get(key, (None, 0))
        first_bug = bug is not None and type(bug) not in self._bugs_logged
        due = first_bug or last is None or mono - last >= LOG_EVERY_S
        if due and self._window_open(mono, first_bug):
            if len(self._log_times) >= _LOG_TOPICS_MAX:
                self._log_times.clear()
            self._log_times[key] = (mono, 0)
            more = f" ({suppressed} more on this topic since the last report)" if suppressed else ""
            more += self._window_note(first_bug)
            if first_bug:
                self._bugs_logged.add(type(bug))
                log.error("%s: decoder failed on a message on %s (a bug; the message is kept as a dead letter): "
                          "%s%s", self.source, topic, error, more, exc_info=bug,
                          extra={"event": "mqtt_decoder_error", "collector": self.source, "topic": topic})
            else:
                log.warning("%s: undecodable message on %s: %s%s", self.source, topic, error, more,
                            extra={"event": "mqtt_dead_letter", "collector": self.source, "topic": topic})
        elif not due:  # (one the collector's window held back is counted there)
            self._log_times[key] = (last, suppressed + 1)
        return DeadLetter(self.source, topic, bytes(payload), error, now)

    def _window_open(self, mono: float, first_bug: bool) -> bool:
        """Whether one more dead-letter line fits this collector's window of ``LOG_TOPICS_PER_WINDOW`` lines per
        ``LOG_EVERY_S`` (a line held back is counted for the window's next line, and still counted in the metrics
        and kept as a dead letter). A decoder's first error of a kind (a bug, with its traceback) is always written."""
        if self._window_at is None or mono - self._window_at >= LOG_EVERY_S:
            self._window_at, self._window_lines = mono, 0
        if first_bug:
            return True
        if self._window_lines >= LOG_TOPICS_PER_WINDOW:
            self._window_quiet += 1
            return False
        self._window_lines += 1
        return True

    def _window_note(self, first_bug: bool) -> str:
        """What a line adds about the collector's window: the lines held back before it, or that it fills it."""
        note = ""
        if self._window_quiet:
            note = f" ({self._window_quiet} undecodable message(s) on other topics not logged since the last report)"
            self._window_quiet = 0
        if not first_bug and self._window_lines == LOG_TOPICS_PER_WINDOW:
            note += (f"; the {LOG_TOPICS_PER_WINDOW}th such line within {LOG_EVERY_S:.0f} s: those of further topics "
                     "are not logged until that is over (each is counted in valvoja_dead_letters_total and kept in "
                     "dead_letters)")
        return note
