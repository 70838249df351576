"""Core records that flow through the gateway (DESIGN.md §2).

A `Reading` is created by a collector (where a reading enters), flagged by
`edge.validate`, made durable by `edge.spool`, and stored by `edge.sink`.
Records are plain slotted dataclasses: they are created tens of thousands of
times per second, so they carry no validation logic of their own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # edge.columns imports this module
    from edge.columns import Columns, Rows

Value = float | int | bool | str | None


class Quality(enum.IntEnum):
    """OPC UA style quality. Stored as a smallint; order matters (worse is larger)."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


class Flag(enum.IntFlag):
    """Why a reading's quality is what it is. A bitmask so several rules can apply.

    Validation never drops the raw value; it only sets these bits and lowers quality.
    """

    NONE = 0
    NOT_FINITE = 1 << 0  # NaN or +-inf
    OUT_OF_RANGE = 1 << 1  # outside the tag's expected range
    FROZEN = 1 << 2  # value unchanged for longer than the tag allows
    FUTURE_TIME = 1 << 3  # source timestamp ahead of the gateway clock
    STALE_TIME = 1 << 4  # source timestamp too old
    SOURCE_STATUS = 1 << 5  # quality set by the device (e.g. OPC UA status code)
    NO_SOURCE_TIME = 1 << 6  # device gave no timestamp; time is the gateway receive time
    UNKNOWN_TAG = 1 << 7  # tag not in the registry (wildcard-discovered)
    SUBSTITUTED = 1 << 8  # value produced by a model in place of a measurement
    TYPE_MISMATCH = 1 << 9  # value type not what the tag declares
    RETAINED = 1 << 10  # MQTT retained (last known) value without source time: time = when received, not measured


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Reading:
    """One sample of one tag.

    `time` is the source timestamp where the device gives one, else the gateway
    receive time (then `Flag.NO_SOURCE_TIME` is set). Both are always kept.
    `status` is the protocol status code (OPC UA StatusCode value) or 0.
    `status_name` is a readable name for the status or validation rule.
    """

    tag: str
    time: datetime
    value: Value
    receive_time: datetime
    quality: Quality = Quality.GOOD
    flags: int = 0
    status: int = 0
    status_name: str = ""
    server_time: datetime | None = None

    @property
    def numeric(self) -> float | None:
        """Value as float where it has one (bool -> 0/1), else None."""
        v = self.value
        if isinstance(v, bool):
            return 1.0 if v else 0.0
        if isinstance(v, int | float):
            return float(v)
        return None


@dataclass(slots=True)
class Batch:
    """Readings handed from a collector to the pipeline as one unit.

    `ack` is called once every reading in the batch is durable in the spool;
    collectors use it to acknowledge upstream (MQTT PUBACK). `nack(exc)` is called instead
    when the batch could not be spooled (it is gone): a collector waiting for the ack stops
    waiting. `source` names the collector for metrics and logs.
    """

    source: str
    readings: list[Reading] | Rows | Columns  # hot-path decoders hand over `Rows` (edge/columns.py)
    ack: object | None = None  # Callable[[], None]; typed loosely to keep records import-light
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # Other record types (predictions, alert changes) as (kind, msgpack-able dict); see edge/analytics.py.
    records: list[tuple[str, dict]] = field(default_factory=list)
    nack: object | None = None  # Callable[[BaseException], None]
    # The collector's own durable state, written in the spool commit of these readings (so it holds exactly when
    # they do): (key, value) pairs for the `source`, a None value deletes the key. See `edge.pipeline.SourceState`.
    state: list[tuple[bytes, bytes | None]] | tuple = ()


def settles(stored):
    """``(ack, nack)`` for a `Batch` that settle the asyncio future ``stored``: its result once the spool holds the
    batch, the reason it was not spooled otherwise (both called on the event loop by the ingest task). For whoever
    must wait for the commit (the OPC UA collector's acknowledgements, analytics' notifications)."""
    return (lambda: stored.done() or stored.set_result(None),
            lambda exc: stored.done() or stored.set_exception(exc))


@dataclass(slots=True)
class DeadLetter:
    """A message a collector could not decode, kept for inspection."""

    source: str
    topic: str
    payload: bytes
    error: str
    receive_time: datetime


@dataclass(slots=True)
class Prediction:
    """A model output with its uncertainty (DESIGN.md §2, §6)."""

    model_id: str
    model_version: str  # sha256 of the ONNX file
    asset: str
    time: datetime
    value: float
    lower: float | None = None
    upper: float | None = None
    coverage: float | None = None  # nominal coverage of [lower, upper]
    p_value: float | None = None
    input_start: datetime | None = None
    input_end: datetime | None = None
    kind: str = "regression"  # regression | anomaly | rul | pems
    target: str = ""
    details: dict = field(default_factory=dict)


@dataclass(slots=True)
class Alert:
    """An alert and its lifecycle (DESIGN.md §2, §7)."""

    id: str
    asset: str
    tag: str | None
    kind: str
    severity: str
    raised_at: datetime
    message: str = ""
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    cleared_at: datetime | None = None
    evidence: dict = field(default_factory=dict)
