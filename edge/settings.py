"""Site configuration: one TOML file, validated at start-up (DESIGN.md §5, style notes).

`load(path)` returns a `SiteConfig` or raises `ConfigError` listing *every* problem,
each as ``FILE: KEY: what is wrong``. Sections owned by other packages (collectors,
stacks, rules) are validated by their own models, found through registries, so the
defaults live in exactly one place.

Secrets are never literal: fields holding them accept only ``env:NAME`` or ``file:PATH``.
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge.errors import ConfigError
from edge.paths import PATH, REF, resolve_relative
from edge.secrets import SecretRef


class Strict(BaseModel):
    """Base for configuration sections: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(Strict):
    name: str = "valvoja"
    gateway_id: str = Field("gw-1", pattern=r"^[A-Za-z0-9_.-]+$")
    state_dir: Annotated[Path, PATH] = Path("var")


class Calibration(Strict):
    certificate: str = Field(min_length=1)
    date: date
    uncertainty: float = Field(ge=0)
    uncertainty_unit: str = ""


class Asset(Strict):
    name: str = Field(min_length=1)
    site: str = ""
    kind: str = ""
    description: str = ""


class Tag(Strict):
    """One entry of the tag registry (DESIGN.md §2)."""

    name: str = Field(min_length=1, pattern=r"^[^\s]+$")
    asset: str = ""
    unit: str = ""
    description: str = ""
    kind: Literal["float", "int", "bool", "string"] = "float"
    range: tuple[float, float] | None = None
    sampling_ms: int | None = Field(None, gt=0)
    # A value unchanged for this long is flagged as frozen (a stuck sensor); None disables.
    frozen_after_s: float | None = Field(None, gt=0)
    calibration: Calibration | None = None

    @field_validator("range")
    @classmethod
    def _range_ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None:
            lo, hi = v
            if not (math.isfinite(lo) and math.isfinite(hi)):
                # "low < high" alone was the message for [0.0, inf], which has low < high.
                raise ValueError(f"both limits must be finite numbers (no inf or nan: for a side without a limit "
                                 f"give one far beyond any real value), got [{lo}, {hi}]")
            if lo >= hi:
                raise ValueError(f"must be [low, high] with low < high, got [{lo}, {hi}]")
        return v


ALERTS_RETENTION_MIN_DAYS = 92  # the longest quarter


class Database(Strict):
    """TimescaleDB / PostgreSQL. Without ``url`` the gateway runs spool-only (the demo embeds one)."""

    url: Annotated[str, REF] | None = Field(None, description="postgresql://user@host:port/db (no password here)")
    password: SecretRef | None = None
    batch_rows: int = Field(20_000, ge=1, le=1_000_000)
    writers: int = Field(2, ge=1, le=8, description="database connections writing readings side by side")
    flush_interval_s: float = Field(0.2, gt=0, le=60)
    connect_timeout_s: float = Field(5.0, gt=0)
    retention_days: int | None = Field(None, gt=0)
    # 1-minute rollups (readings_1m: ~84 GB a year per 1,000 tags) older than this are removed; the hourly ones are
    # kept. None (the default) keeps them, as raw readings are by default: removing a plant's trend history must
    # be asked for, not come with an upgrade.
    rollups_1m_retention_days: int | None = Field(None, gt=0)
    # Predictions and dead letters are removed by default (they filled the disk): reviewed predictions and an
    # alert's evidence are kept whatever their age (edge/sink/housekeeping.py). 0: keep them all.
    predictions_retention_days: int = Field(180, ge=0)
    dead_letters_retention_days: int = Field(30, ge=0)
    # One run per stack every 5 minutes; the newest of each configuration and late-data recomputations are kept.
    emission_runs_retention_days: int = Field(400, ge=0)
    # Cleared alerts (with their history and comments) untouched this long are removed; open and acknowledged ones,
    # and those a review counts, are kept whatever their age (edge/sink/housekeeping.py). Five calendar years
    # (1,827 days, two leap days in): maintenance teams compare an asset's alerts across a turnaround cycle (major
    # shutdowns every 4-5 years in process plants), and an alert with its events takes a few KB. 0: keep them all.
    alerts_retention_days: int = Field(1827, ge=0)
    rollup_interval_s: float = Field(5.0, gt=0)
    migrate_on_start: bool = True
    # How long the start's migration check waits for a lock another session holds (another gateway or `valvoja db
    # migrate` upgrading the schema): then it is a database error (/healthz last_error, db_down) and retried.
    migration_lock_timeout_s: float = Field(60.0, gt=0, le=3600)

    @field_validator("emission_runs_retention_days")
    @classmethod
    def _a_year_of_runs(cls, v: int) -> int:
        # The late-data check of the year before reads the run that computed it to its end, up to a year old.
        if 0 < v < 367:
            raise ValueError(f"must be 0 (keep them all) or at least 367 days, got {v}")
        return v

    @field_validator("alerts_retention_days")
    @classmethod
    def _a_quarter_of_alerts(cls, v: int) -> int:
        # Alerts are reviewed after they clear (review meetings, quarterly reports): one removed before that is
        # missing from the review and from the precision `valvoja models evaluate feedback` reports. Fewer days
        # than a quarter is most likely a unit taken for another (weeks, months).
        if 0 < v < ALERTS_RETENTION_MIN_DAYS:
            raise ValueError(f"must be 0 (keep them all) or at least {ALERTS_RETENTION_MIN_DAYS} days, got {v}")
        return v

    @field_validator("rollups_1m_retention_days")
    @classmethod
    def _rollups_outlive_raw_readings(cls, v: int | None, info: ValidationInfo) -> int | None:
        # Raw readings are the only source of a 1-minute rollup: with the rollups gone first, the console's
        # medium ranges fall back to hourly ones over raw readings still stored, and a late reading for such a
        # minute cannot reach its hour (edge/sink/rollups.py). Most likely the two values were swapped.
        if v is None or "retention_days" not in info.data:  # an invalid retention_days is reported on its own
            return v
        raw = info.data["retention_days"]
        if raw is None:
            raise ValueError(f"{v} days would remove 1-minute rollups of raw readings kept for good "
                             "(database.retention_days is not set): set retention_days too, at most "
                             f"{v} days, or remove this key")
        if v < raw:
            raise ValueError(f"must be at least database.retention_days ({raw}): 1-minute rollups are what is "
                             f"left of the raw readings that retention removes, got {v}")
        return v

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("postgresql://", "postgres://", "env:", "file:")):
            raise ValueError("must start with postgresql:// (or be an env:/file: reference)")
        if v.startswith("postgres"):
            from urllib.parse import parse_qs, urlsplit

            url = urlsplit(v)
            if url.password is not None or "password" in parse_qs(url.query):
                raise ValueError("contains a password; put it in database.password as env:NAME or file:/path")
            # What libpq cannot parse (a misspelt parameter such as sslmod=) otherwise passed check-config and
            # failed only at run time: retried for ever, or raised out of a SIGHUP reload. This URL holds no
            # password (checked above), so libpq's message, which quotes it, may be shown.
            from psycopg import ProgrammingError
            from psycopg.conninfo import conninfo_to_dict

            try:
                conninfo_to_dict(v)
            except ProgrammingError as exc:
                raise ValueError(f"not a valid connection URL: {str(exc).strip()}") from None
        return v


class Spool(Strict):
    """Durable store-and-forward buffer (SQLite, WAL)."""

    path: Annotated[Path, PATH] | None = None  # default: <state_dir>/spool.db
    max_bytes: int = Field(2_000_000_000, ge=1_000_000)
    # reject_new: stop acknowledging upstream (MQTT keeps messages on the broker) and refuse
    #             new readings, which keeps the oldest data; drop_oldest: delete the oldest
    #             spooled readings to make room, which keeps the newest.
    full_policy: Literal["reject_new", "drop_oldest"] = "reject_new"
    # full: fsync each group commit (survives power loss); normal: survives a process kill only.
    synchronous: Literal["full", "normal"] = "full"
    queue_batches: int = Field(256, ge=1, description="bounded ingest queue (back-pressure)")
    group_commit_ms: float = Field(5.0, ge=0, le=1000)


MAX_TEXT_BYTES_CEILING = 16 * 2**20  # the OPC UA client's message limit (collectors/opcua/connection.py)
# The longest tag name `validation.max_tag_bytes` may allow: a B-tree entry of PostgreSQL (8 kB pages) holds at most
# 2,704 bytes, and the ``tags`` table's unique index holds each name whole (uncompressed unless it compresses well).
MAX_TAG_BYTES_CEILING = 2048


class Validation(Strict):
    future_tolerance_s: float = Field(5.0, ge=0)
    max_age_s: float = Field(7 * 86400.0, gt=0)
    flag_unknown_tags: bool = True
    # A text value longer than this (UTF-8 bytes) is not a reading but a dead letter (its first bytes kept): a broken
    # device's 10 MB "status string" went whole through the spool, the database and the console. 64 KiB is far over
    # any plant text tag (alarm texts, batch ids, recipe names, a JSON diagnostic of a few kB). Strict: TOML's
    # `true` or "64k" is a mistake here, not 1 or an error later.
    max_text_bytes: int = Field(65_536, ge=1, le=MAX_TEXT_BYTES_CEILING, strict=True)
    # A reading whose tag name is longer (UTF-8 bytes) is a dead letter too. Anyone who may publish on the broker
    # chooses tag names (a topic level, a JSON field, a Sparkplug metric); one over the database's index limit was
    # refused only there, at the cost of writing its whole group apart. 512 is far over plant names (an OPC UA
    # browse path joined by dots, a topic of a few levels: well under 100 bytes).
    max_tag_bytes: int = Field(512, ge=1, strict=True)

    @field_validator("max_tag_bytes")
    @classmethod
    def _fits_the_tag_index(cls, v: int) -> int:
        if v > MAX_TAG_BYTES_CEILING:
            raise ValueError(f"must be at most {MAX_TAG_BYTES_CEILING}: a longer tag name does not fit the "
                             f"database's index of tag names (2,704 bytes an entry), got {v}")
        return v


def host_port(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` as (host, port), the host without brackets; ValueError saying what is
    wrong. A bare IPv6 address cannot be told from its port, so it must be in brackets (as in a URL)."""
    if listen.startswith("["):
        addr, sep, port = listen[1:].partition("]:")
        if not sep:
            raise ValueError(f"{listen!r}: write [IPV6-ADDRESS]:PORT, e.g. [::1]:9108 (no port after the brackets)")
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            raise ValueError(f"{listen!r}: {addr!r} in brackets is not an IPv6 address") from None
        host = addr
    else:
        host, sep, port = listen.rpartition(":")
        if not sep:
            raise ValueError(f"{listen!r}: write HOST:PORT, e.g. 127.0.0.1:9108 (no port)")
        if ":" in host:
            raise ValueError(f"{listen!r}: an IPv6 address goes in brackets: [{host}]:{port}")
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"{listen!r}: no host name or address before the port (0.0.0.0 for every IPv4 "
                             "interface, [::] for every IPv6 one)")
    if not port.isascii() or not port.isdigit():
        raise ValueError(f"{listen!r}: port {port!r} is not a number")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port} is not a TCP port (0-65535; 0 picks a free one)")
    return host, int(port)


class Http(Strict):
    listen: str = Field("127.0.0.1:9108", description="HOST:PORT, or [IPV6]:PORT (e.g. [::1]:9108)")
    enabled: bool = True

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host_port(v)
        return v

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to listen on; an IPv6 host without its brackets."""
        return host_port(self.listen)


class Logging(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Service(Strict):
    """The long-running process around the gateway (edge/service.py): stop deadline and watchdog."""

    # SIGTERM: flush the spool and exit within this (container stop grace periods must be longer).
    stop_timeout_s: float = Field(10.0, ge=2, le=600)
    watchdog_interval_s: float = Field(5.0, gt=0, le=300)
    # Forwarder / ingest: no progress for this long while there is work means stalled (restart).
    stall_after_s: float = Field(120.0, gt=0)
    # A collector that delivered nothing for this long is restarted; 0 turns the check off
    # (for sources that may be silent longer, e.g. event-only MQTT topics).
    collector_silence_s: float = Field(600.0, ge=0)
    # The event loop without a heartbeat this long: exit 1 so the supervisor starts the process again (docker does
    # not restart an unhealthy container; edge/loopwatch.py). 0 turns it off.
    loop_stall_exit_s: float = Field(120.0, ge=0)
    # Warn (log disk_low; valvoja_state_disk_free_bytes) when the spool's file system (or the state directory's, where
    # that is another one) has less free space than this. Only a warning: the spool itself keeps
    # edge.spool.DISK_RESERVE_BYTES free.
    min_free_disk_bytes: int = Field(500_000_000, ge=0)


class SiteConfig(Strict):
    site: Site = Site()
    database: Database = Database()
    spool: Spool = Spool()
    validation: Validation = Validation()
    http: Http = Http()
    logging: Logging = Logging()
    service: Service = Service()
    assets: list[Asset] = []
    tags: list[Tag] = []
    # Validated by their owners' models (collectors.registry and friends) in `load`.
    collectors: list[dict[str, Any]] = []
    stacks: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    maintenance: dict[str, Any] = {}
    models: dict[str, Any] = {}

    @model_validator(mode="after")
    def _unique_names(self) -> SiteConfig:
        for section, items in (("tags", self.tags), ("assets", self.assets)):
            seen: set[str] = set()
            for item in items:
                if item.name in seen:
                    raise ValueError(f"{section}: duplicate name '{item.name}'")
                seen.add(item.name)
        known = {a.name for a in self.assets}
        if known:
            for i, t in enumerate(self.tags):
                if t.asset and t.asset not in known:
                    raise ValueError(f"tags[{i}] ({t.name}): asset '{t.asset}' is not in [[assets]]")
        return self

    # Filled by `load` after the owners validate their sections.
    _collectors: list[tuple[str, str, Any]] = PrivateAttr(default_factory=list)

    @property
    def collector_configs(self) -> list[tuple[str, str, Any]]:
        """(kind, name, validated config) per ``[[collectors]]`` entry."""
        return self._collectors

    @property
    def spool_path(self) -> Path:
        return self.spool.path or (self.site.state_dir / "spool.db")

    def tag_map(self) -> dict[str, Tag]:
        return {t.name: t for t in self.tags}

    def unused_keys(self) -> list[str]:
        """Keys the file sets that this version accepts (older files stay valid) but does not act on: said at
        start, at reload and by check-config, so nobody tunes a setting that changes nothing."""
        notes = []
        if "group_commit_ms" in self.spool.model_fields_set:
            notes.append("spool.group_commit_ms: has no effect (every spool commit already takes all the batches "
                         "queued while the previous one was written); remove it")
        if self.models:
            notes.append("models: this table is not read (models are configured where they are used: "
                         "[maintenance.assets.anomaly] and .rul, a [[stacks]] pollutant's pems); remove it")
        notes += self._frozen_without_repeats()
        return notes

    def _frozen_without_repeats(self) -> list[str]:
        """Tags whose frozen-value rule cannot fire, one note per OPC UA collector: read through its subscription,
        which reports a value when it changes (DataChangeTrigger StatusValue), so a stuck one sends no reading the
        rule could flag."""
        subscribed = {node.tag: name for kind, name, c in self.collector_configs if kind == "opcua"
                      for node in c.nodes if (node.mode or c.mode) == "subscribe"}
        by_collector: dict[str, list[str]] = {}
        for i, t in enumerate(self.tags):
            if t.frozen_after_s and t.name in subscribed:
                by_collector.setdefault(subscribed[t.name], []).append(f"tags[{i}] ({t.name})")
        return [f"{', '.join(where[:3])}{f' and {len(where) - 3} more' if len(where) > 3 else ''}: frozen_after_s "
                f"never flags a tag that OPC UA collector {name!r} reads through its subscription, which sends a value "
                "only when it changes: a stuck one sends nothing (the maintenance 'no data' sensor alert comes after "
                "no_data_after_s instead). Poll the node (mode = \"poll\": a repeated value is read again when the "
                "server gives it a new source time) or remove the key" for name, where in by_collector.items()]


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(err: dict, data: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
    msg = err["msg"].removeprefix("Value error, ")
    where = _loc(loc)
    # Name the entry of a list section so "tags[41]" becomes findable in a long file.
    if len(loc) >= 2 and isinstance(loc[1], int) and loc[0] in data:
        try:
            name = data[loc[0]][loc[1]].get("name")
        except (AttributeError, IndexError, TypeError):
            name = None
        if name:
            where = f"{_loc(loc[:2])} ({name})" + (("." + _loc(loc[2:])) if loc[2:] else "")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (misspelt, or not valid in this section)"
    elif err["type"] == "missing":
        msg = "is required"
    return f"{where}: {msg}"


def parse(data: dict, *, source: str = "<config>") -> SiteConfig:
    """Validate already-parsed TOML data; raises ConfigError with every problem found."""
    problems: list[str] = []
    cfg: SiteConfig | None = None
    try:
        cfg = SiteConfig.model_validate(data)
    except ValidationError as exc:
        problems += [f"{source}: {_describe(e, data)}" for e in exc.errors()]
    collectors = _validate_collectors(data.get("collectors", []), source, problems)
    _validate_owned_sections(data, source, problems)
    if cfg is not None:
        problems += _long_tag_names(cfg, collectors, source)
        if not problems:
            problems += _stack_tag_units(cfg, source)
            problems += _retention_for_stacks(cfg, source)
    if problems:
        raise ConfigError(problems)
    assert cfg is not None
    cfg._collectors = collectors
    return cfg


def _long_tag_names(cfg: SiteConfig, collectors: list[tuple[str, str, Any]], source: str) -> list[str]:
    """Tag names written in the file that are over ``validation.max_tag_bytes``: every reading of such a tag would
    only become a dead letter at run time, so the file is refused now. (Names an MQTT topic or payload makes are
    known only when a message comes, and checked then.)"""
    limit = cfg.validation.max_tag_bytes
    named = [(f"tags[{i}].name", t.name) for i, t in enumerate(cfg.tags)]
    for _kind, name, ccfg in collectors:
        named += [(f"collector {name}: nodes[{j}].tag", n.tag) for j, n in enumerate(getattr(ccfg, "nodes", []))]
    fix = "shorten it" if limit == MAX_TAG_BYTES_CEILING else "shorten it or raise the limit"
    return [f"{source}: {where}: the name is {size} bytes (UTF-8), over validation.max_tag_bytes ({limit}): its "
            f"readings would all be dead letters; {fix}"
            for where, tag in named if (size := len(tag.encode())) > limit]


def _stack_tag_units(cfg: SiteConfig, source: str) -> list[str]:
    """Stack keys that read a tag in another unit than the tag registry gives it (`emissions.config.StackConfig.
    tag_unit_problems`): a concentration read in the wrong unit is a wrong number in every average and report."""
    if not cfg.stacks:
        return []
    from emissions.config import load_stacks

    units = {t.name: t.unit for t in cfg.tags if t.unit}
    return [f"{source}: {problem}" for stack in load_stacks(cfg.stacks) for problem in stack.tag_unit_problems(units)]


LONGEST_YEAR_DAYS = 366


def _retention_for_stacks(cfg: SiteConfig, source: str) -> list[str]:
    """``database.retention_days`` too short for the emissions job of the file's ``[[stacks]]``: its hourly year run
    recomputes each stack's year from raw readings (from 1 January in the stack's time zone; at New Year the whole
    year before, and again for ``late_data_days`` after it when late readings come) and stores the result over the
    averages stored, so the averages of periods whose raw readings retention removed became "no value (invalid)"."""
    days = cfg.database.retention_days
    if not cfg.stacks or days is None:
        return []
    from emissions.config import load_stacks

    # The longest year, the days after its end in which the year before is still recomputed, and a day for the time
    # zone's offset and the job's first run after New Year.
    need = LONGEST_YEAR_DAYS + max(s.late_data_days for s in load_stacks(cfg.stacks)) + 1
    if days >= need:
        return []
    return [f"{source}: database.retention_days: {days} days would remove raw readings the emissions job of the "
            f"[[stacks]] still reads (its hourly run recomputes each stack's year from them, from 1 January, and "
            f"the year before for late_data_days after New Year) and replace the stored averages of those periods "
            f"with invalid ones: at least {need} days (the longest year, late_data_days, one day), or remove the key"]


def _validate_collectors(entries: Any, source: str, problems: list[str]) -> list[tuple[str, str, Any]]:
    from collectors.registry import KINDS, module_for

    out: list[tuple[str, str, Any]] = []
    if not isinstance(entries, list):
        return out
    names: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        body = dict(entry)
        kind = body.pop("kind", None)
        name = body.pop("name", None) or f"{kind}-{i}"
        where = f"{source}: collectors[{i}] ({name})"
        if kind not in KINDS:
            problems.append(f"{where}.kind: must be one of {sorted(KINDS)}, got {kind!r}")
            continue
        if name in names:
            problems.append(f"{where}.name: duplicate collector name")
        names.add(name)
        try:
            module = module_for(kind)
        except ImportError as exc:
            problems.append(f"{where}: collector kind {kind!r} cannot be loaded: {exc}")
            continue
        try:
            out.append((kind, name, module.Config.model_validate(body)))
        except ValidationError as exc:
            for e in exc.errors():
                d = _describe(e, {})
                top = d.startswith("(top level): ")  # a rule across keys: the entry itself
                problems.append(f"{where}: {d.removeprefix('(top level): ')}" if top else f"{where}.{d}")
    return out


# Sections whose schema belongs to another package: (key, module, attribute).
OWNED_SECTIONS: list[tuple[str, str, str]] = [
    ("stacks", "emissions.config", "StackConfig"),
    ("rules", "maintenance.rules", "RuleConfig"),
]


def _validate_owned_sections(data: dict, source: str, problems: list[str]) -> None:
    import importlib

    if data.get("maintenance"):
        from maintenance.config import MaintenanceConfig

        try:
            MaintenanceConfig.model_validate(data["maintenance"])
        except ValidationError as exc:
            problems += [f"{source}: maintenance.{_describe(e, {})}" for e in exc.errors()]

    for key, module_name, attr in OWNED_SECTIONS:
        entries = data.get(key)
        if not entries:
            continue
        try:
            model = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            problems.append(f"{source}: {key}: this build cannot validate [[{key}]] ({module_name}.{attr} missing)")
            continue
        for i, entry in enumerate(entries):
            try:
                model.model_validate(entry)
            except ValidationError as exc:
                name = entry.get("name", "") if isinstance(entry, dict) else ""
                label = f"{key}[{i}]" + (f" ({name})" if name else "")
                problems += [f"{source}: {label}.{_describe(e, {})}" for e in exc.errors()]


def load(path: str | Path) -> SiteConfig:
    """Read and validate a site configuration file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse(relative_to_file(data, path.resolve().parent), source=str(path))


def relative_to_file(data: dict, base: Path) -> dict:
    """The file's data with every relative path (fields marked `edge.paths.PATH`, ``file:`` references) taken from
    ``base``, the configuration file's folder, in every section: the site's own, each collector's (by its kind),
    ``[maintenance]`` and ``[[stacks]]``. Not the working directory: systemd and docker start the gateway elsewhere
    (state_dir and spool.path alone were taken from the file, a pki_dir or a ``file:`` secret from the process)."""
    import importlib

    from collectors.registry import KINDS, module_for

    data = dict(data)
    if isinstance(data.get("site", {}), dict):
        data["site"] = data.get("site", {})  # so that the default state_dir ("var") is the file's folder's too
    out = resolve_relative(SiteConfig, data, base)
    if isinstance(out.get("collectors"), list):
        out["collectors"] = [
            resolve_relative(module_for(c["kind"]).Config, c, base)
            if isinstance(c, dict) and c.get("kind") in KINDS and _importable(module_for, c["kind"]) else c
            for c in out["collectors"]]
    owned = [("maintenance", "maintenance.config", "MaintenanceConfig"), *OWNED_SECTIONS]
    for key, module_name, attr in owned:
        section = out.get(key)
        try:
            model = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            continue  # `parse` says so
        if isinstance(section, dict):
            out[key] = resolve_relative(model, section, base)
        elif isinstance(section, list):
            out[key] = [resolve_relative(model, e, base) if isinstance(e, dict) else e for e in section]
    return out


def _importable(module_for, kind: str) -> bool:
    try:
        module_for(kind)
    except ImportError:
        return False  # `parse` names it
    return True
