"""Console configuration: one TOML file with ``[console]``, ``[database]``, ``[models]`` and ``[[gateways]]``.

The database section has the gateway's schema (``edge.settings.Database``), so the same
``url`` / ``password = "env:NAME"`` rules apply; secrets are references, never literals.
As in the site configuration, every relative path (``reports_dir``, ``[models]``, a ``file:`` reference) is
taken from the file's folder (``edge.paths``), never from the working directory; ``console.listen`` is
``HOST:PORT`` or ``[IPV6]:PORT`` (``edge.settings.host_port``), as ``http.listen`` there.
``load`` raises ``ConfigError`` listing every problem as ``FILE: KEY: what is wrong``.
"""

from __future__ import annotations

import tomllib
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, ValidationInfo, field_validator

from edge.errors import ConfigError
from edge.paths import PATH, resolve_relative
from edge.settings import Database, Strict, _describe, host_port


def _network(value: object) -> object:
    if not isinstance(value, str):
        return value  # validation says what is wrong
    try:
        return ip_network(value.strip())
    except ValueError as exc:
        if "host bits" in str(exc):
            raise ValueError(f"{value!r} has host bits set: write the network "
                             f"({ip_network(value.strip(), strict=False)}) "
                             "or one address") from None
        raise ValueError(f"{value!r} is not an IP address or network (e.g. 127.0.0.1, ::1, 10.0.0.0/8, fd00::/8; "
                         "host names are not looked up, IPv6 without brackets)") from None


# Pooled connections CSV downloads may never take (console.csv_max_concurrent): a log-in takes one, a page's API
# calls and the alert feed's poll one each at a time.
CSV_POOL_RESERVE = 2

# A proxy's address, or a network of them; compared as addresses, so "::1" and "0:0:0:0:0:0:0:1" are one.
ProxyNetwork = Annotated[IPv4Network | IPv6Network, BeforeValidator(_network)]


class Console(Strict):
    listen: str = Field("127.0.0.1:8080", description="HOST:PORT, or [IPV6]:PORT (e.g. [::1]:8080)")
    # "auto": Secure cookies when the request arrived over TLS (directly or via X-Forwarded-Proto from
    # a trusted proxy); "always" for deployments that are only ever reached over HTTPS.
    cookie_secure: Literal["auto", "always", "never"] = "auto"
    # Whose X-Forwarded-For / X-Forwarded-Proto are believed: addresses or networks (console.auth).
    trusted_proxies: list[ProxyNetwork] = Field(default_factory=lambda: [ip_network("127.0.0.1"), ip_network("::1")])
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    # Log-in rate limit: at most this many failures per client address (IPv6: /64) per window, across user names ...
    login_failures_max: int = Field(5, ge=1)
    # ... and this many per user name across clients: higher, so that one address cannot lock a user (an admin) out,
    # and still a bound on a brute force from many addresses.
    login_user_failures_max: int = Field(50, ge=1)
    login_window_s: float = Field(300.0, gt=0)
    pool_min: int = Field(1, ge=1)
    pool_max: int = Field(8, ge=1)
    # The SSE alert feed polls as a safety net next to LISTEN/NOTIFY (e.g. when a writer does not notify).
    alert_poll_s: float = Field(1.0, gt=0, le=60)
    # An idle alert stream sends a comment this often (keeps proxies from closing it) and checks that its
    # session or token is still valid; the check is also made before every event.
    alert_heartbeat_s: float = Field(15.0, gt=0, le=300)
    # Readings: answer at most this many points per series; longer ranges are downsampled on the server.
    max_points: int = Field(5000, ge=10, le=100_000)
    default_points: int = Field(1000, ge=10, le=100_000)
    # CSV downloads: at most this many data rows per file (the answer says when it was cut). At most what one Excel
    # sheet holds under its header row (1,048,576 rows): a longer file opens cut without a word.
    csv_max_rows: int = Field(1_000_000, ge=1, le=1_048_575)
    # CSV downloads running at once (this process): each holds a pooled connection while it streams, and unbounded
    # they took every one of pool_max, so log-in and the board stalled. More are answered 503 at once. A value given
    # must leave CSV_POOL_RESERVE connections (checked against pool_max below); unset: 2, or what a pool under 4
    # leaves (an older file with a small pool_max still loads).
    csv_max_concurrent: int | None = Field(None, ge=1)
    # Emission/compliance reports are linked from the emissions page when present here.
    reports_dir: Annotated[Path, PATH] | None = None
    # The plant's IANA time zone: the pages show times in it, with the UTC offset, whatever zone the browser of
    # a control-room screen is set to (often UTC). None: the browser's zone (still with the offset). Trend buckets of
    # a day or more begin at its midnight (console.trend); None: UTC's.
    time_zone: str | None = None

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"{v!r} is not an IANA time zone (e.g. Europe/Helsinki)") from None
        return v or None

    @field_validator("csv_max_concurrent")
    @classmethod
    def _csv_leaves_connections(cls, v: int | None, info: ValidationInfo) -> int | None:
        pool_max = info.data.get("pool_max")  # absent: pool_max itself was refused, and says so
        if v is not None and pool_max is not None and v > pool_max - CSV_POOL_RESERVE:
            fix = (f"at most {pool_max - CSV_POOL_RESERVE}, or raise pool_max" if pool_max > CSV_POOL_RESERVE else
                   f"raise pool_max to at least {v + CSV_POOL_RESERVE}")
            raise ValueError(f"{v} would let CSV downloads hold all but {max(pool_max - v, 0)} of the pool_max = "
                             f"{pool_max} database connections; log-in, the pages and the board need "
                             f"{CSV_POOL_RESERVE}: {fix}")
        return v

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host_port(v)  # its ValueError says what is wrong (a bare IPv6 address: "goes in brackets")
        return v

    @property
    def csv_limit(self) -> int:
        """CSV downloads run at once: ``csv_max_concurrent``, unset 2 or what a pool under 4 leaves (at least 1)."""
        if self.csv_max_concurrent is not None:
            return self.csv_max_concurrent
        return min(2, max(1, self.pool_max - CSV_POOL_RESERVE))

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to listen on; an IPv6 host without its brackets."""
        return host_port(self.listen)


def _http_url(value: str) -> str:
    """An http(s) URL the gateway page can fetch, checked here: one it could not parse (httpx.InvalidURL, not an
    httpx.HTTPError) failed the whole page at run time."""
    import httpx

    example = "e.g. http://gw-1:9108/healthz or http://[::1]:9108/healthz"
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        hint = "an IPv6 address goes in brackets" if value.count(":") > 2 and "[" not in value else str(exc)
        raise ValueError(f"{value!r} is not a URL ({hint}; {example})") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"{value!r}: must start with http:// or https://")
    if not url.host:
        raise ValueError(f"{value!r}: no host ({example})")
    if url.port is not None and not 0 < url.port <= 65535:
        raise ValueError(f"{value!r}: port {url.port} is not a TCP port (1-65535)")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class Gateway(Strict):
    """A gateway whose ``/healthz`` the gateway page shows."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    health_url: HttpUrl
    metrics_url: HttpUrl | None = None
    timeout_s: float = Field(2.0, gt=0, le=30)


class Models(Strict):
    """The model registry the models page promotes and rolls back in (`models.registry`): its directory here,
    its index in the console's database (``model_registry``)."""

    registry: Annotated[Path, PATH] = Path("var/models")
    # Uncertainty reports generated on demand from a version's stored held-out rows, kept per ONNX sha256.
    report_cache: Annotated[Path, PATH] = Path("var/cache/model-reports")


class ConsoleConfig(Strict):
    console: Console = Console()
    database: Database = Database()
    models: Models = Models()
    gateways: list[Gateway] = Field(default_factory=list)


def parse(data: dict, *, source: str = "<config>") -> ConsoleConfig:
    """Validate parsed TOML; raise ConfigError naming every problem."""
    try:
        cfg = ConsoleConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{source}: {_describe(e, data)}" for e in exc.errors()]) from None
    if not cfg.database.url:
        raise ConfigError(f"{source}: database.url: is required (the console reads the gateway database)")
    return cfg


def load(path: str | Path) -> ConsoleConfig:
    """Read and validate a console configuration file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse(relative_to_file(data, path.resolve().parent), source=str(path))


def relative_to_file(data: dict, base: Path) -> dict:
    """The file's data with every relative path (``reports_dir``, ``[models]``, ``[database]`` ``file:``
    references) taken from ``base``, the file's folder, not the working directory: systemd starts the console
    elsewhere. ``[models]`` defaults ("var/models") are the folder's too."""
    data = dict(data)
    if isinstance(data.get("models", {}), dict):
        data["models"] = data.get("models", {})  # so that its defaults are filled in from the file's folder
    return resolve_relative(ConsoleConfig, data, base)


def conninfo(cfg: ConsoleConfig) -> str:
    """The libpq connection string with its password reference resolved."""
    from edge.gateway import database_conninfo

    return database_conninfo(cfg)  # type: ignore[arg-type]  # needs only .database
