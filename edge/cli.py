"""The ``valvoja`` command line.

    valvoja run --config SITE.toml        run the gateway
    valvoja demo                          simulator + embedded broker and database + gateway
    valvoja check-config SITE.toml        print every problem in a configuration (exit 1 if any)
    valvoja db migrate --config SITE.toml apply schema migrations
    valvoja simulate ...                  the plant simulator on its own
    valvoja models | maintenance | emissions | opcua ...   (see --help of each)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path

from edge.errors import ConfigError

log = logging.getLogger("valvoja")

# Packages that add their own sub-commands with ``add_parser(subparsers)``.
PLUGINS = ("collectors.simulator.cli", "collectors.opcua.cli", "models.cli", "maintenance.cli", "emissions.cli",
           "console.cli")


def _config_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", type=Path, required=required, metavar="SITE.toml",
                   help="site configuration file (TOML); see config/*.toml for examples")


def host_port_arg(text: str) -> tuple[str, int]:
    """An argparse ``type``: ``HOST:PORT`` or ``[IPV6]:PORT`` as (host, port); a wrong one is a one-line usage
    error naming the option (a bare ``:PORT`` is 127.0.0.1)."""
    from edge.settings import host_port

    try:
        return host_port("127.0.0.1" + text if text.startswith(":") else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int_arg(text: str) -> int:
    """An argparse ``type``: a whole number of at least 1 (a count of rows, levels, nodes)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of at least 1")
    return value


def positive_arg(text: str) -> float:
    """An argparse ``type``: a number above 0 (a speed, a period, a duration); 0 or less is a one-line usage error
    naming the option instead of a traceback once the demo's servers have started."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number above 0")
    return value


def iso_time_arg(text: str) -> datetime:
    """An argparse ``type``: an ISO 8601 date or date-time; without an offset it is UTC (say so in the help). The
    one parser of times on the command line, so every command reads and refuses a time the same way."""
    return _iso_time(text, need_offset=False)


def iso_until_arg(text: str) -> datetime:
    """`iso_time_arg` for the end of a range: a date alone is the end of that day (UTC). ``--since 2026-11-01 --until
    2026-11-30`` left out every alert of the 30th (the range ended at its first instant), and the precision was of
    another period."""
    from datetime import timedelta

    t = iso_time_arg(text)
    if "T" not in text.strip().upper() and " " not in text.strip():
        t += timedelta(days=1) - timedelta(microseconds=1)  # timestamptz resolution: the day's last instant
    return t


def aware_time_arg(text: str) -> datetime:
    """An argparse ``type``: an ISO 8601 date-time with its offset (``Z``, ``+02:00``), for the times where reading
    local time as UTC would be hours off and unnoticed (a healthy period a model is trained on)."""
    return _iso_time(text, need_offset=True)


def _iso_time(text: str, *, need_offset: bool) -> datetime:
    from datetime import UTC

    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:  # argparse itself said "invalid fromisoformat value"
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2026-11-02T06:00:00+02:00"
                                         f"{'' if need_offset else ' or 2026-11-02'})") from None
    if t.tzinfo is not None:
        return t
    if need_offset:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add +02:00 or Z)")
    return t.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="valvoja",
        description="Valvoja: industrial measurement and predictive-maintenance gateway "
                    "(OPC UA / MQTT -> TimescaleDB, ONNX models with uncertainty).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the gateway with a site configuration",
                       description="Run the gateway until SIGTERM/SIGINT; the spool is flushed on the way out. "
                                   "SIGHUP reloads the configuration (a bad file is rejected, the old one kept). "
                                   "Exit code 0 after a clean stop; 1 when the configuration is wrong, the gateway "
                                   "cannot start, ends by itself, cannot write to its spool (stall_exit) or overruns "
                                   "service.stop_timeout_s: a supervisor (systemd Restart=always, compose restart:) "
                                   "should start it again; 130 on a second signal while stopping.")
    _config_arg(p)
    p.add_argument("--log-format", choices=["json", "text"], help="override logging.format from the config")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a site (or console) configuration and print every problem",
                       description="Exit 0 if the file is valid, 1 with one line per problem otherwise. Also "
                                   "resolves its secret references, builds each collector (TLS and key files) and "
                                   "checks that this user can write (or create) the state folder, as `run` does, "
                                   "unless --skip-secrets. A console configuration (a file with a "
                                   "[console] table) is checked as `valvoja console serve` reads it.")
    p.add_argument("path", type=Path, metavar="SITE.toml")
    p.add_argument("--skip-secrets", action="store_true",
                   help="check the file only (a machine without the secrets, e.g. CI)")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("db", help="database administration")
    dsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    m = dsub.add_parser("migrate", help="apply pending schema migrations",
                        description="Apply pending migrations to the database of --config (or --db URL).")
    _config_arg(m, required=False)
    m.add_argument("--db", metavar="URL",
                   help="postgresql:// URL (default: from --config or $VALVOJA_DB_URL; prefer those for a URL with "
                        "a password: arguments are visible in ps and shell history)")
    m.set_defaults(func=cmd_db_migrate)

    p = sub.add_parser("demo", help="run a simulated plant end to end with embedded servers",
                       description="Start the plant simulator, an MQTT broker and a PostgreSQL server "
                                   "(or use --db / --mqtt ones), run the gateway on them and print a live status "
                                   "line. Ctrl-C stops everything cleanly.")
    p.add_argument("--db", metavar="URL", help="use this database instead of an embedded one "
                                               "(default: $VALVOJA_DEMO_DB_URL if set, never $VALVOJA_DB_URL, "
                                               "the plant's; prefer it for a URL with a password: arguments are "
                                               "visible in ps). The demo writes simulated data into it")
    p.add_argument("--mqtt", metavar="HOST:PORT", type=host_port_arg,
                   help="use this MQTT broker instead of starting mosquitto")
    p.add_argument("--state-dir", type=Path, default=Path("var/demo"),
                   help="demo state (default var/demo); one demo at a time per folder")
    p.add_argument("--duration", type=positive_arg, default=None,
                   help="stop after this many seconds (default: at Ctrl-C)")
    p.add_argument("--speed", type=positive_arg, default=1.0, help="simulated seconds per real second (default 1)")
    p.add_argument("--no-console", dest="console", action="store_false",
                   help="do not serve the web console (default: on a free port; on the embedded database with a "
                        "user 'demo' whose password is printed)")
    p.set_defaults(func=cmd_demo)

    for mod_name in PLUGINS:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as exc:
            if exc.name != mod_name:
                raise
            continue
        mod.add_parser(sub)
    return parser


def cmd_check_config(args) -> int:
    from edge import settings
    from edge.service import in_file, preflight

    try:
        if _is_console_file(args.path):
            return _check_console_config(args)
        cfg = settings.load(args.path)
        if not args.skip_secrets:
            try:
                preflight(cfg)
            except ConfigError as exc:
                raise ConfigError(in_file(args.path, exc.problems)) from None
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.path}: OK ({len(cfg.tags)} tags, {len(cfg.collector_configs)} collectors, "
          f"{len(cfg.stacks)} stacks, {len(cfg.rules)} rules)")
    for note in cfg.unused_keys() + _first_day_notes(cfg):
        print(f"{args.path}: note: {note}")
    return 0


def _first_day_notes(cfg) -> list[str]:
    """What a valid file leaves out that a gateway usually needs: `run` would start and do nothing visible."""
    notes = []
    if not cfg.collector_configs:
        notes.append("no [[collectors]]: `run` collects nothing (examples: collectors/mqtt/sample.toml, "
                     "collectors/opcua/sample.toml)")
    if not cfg.database.url:
        notes.append("no database.url: `run` keeps readings in the spool only (log event spool_only)")
    if cfg.stacks:
        from emissions.config import load_stacks

        for stack in load_stacks(cfg.stacks):
            notes += stack.notes()
    return notes


def _is_console_file(path: Path) -> bool:
    """A console configuration (a top-level [console] table, which a site file never has); an unreadable or broken
    file is left to the site loader's messages."""
    import tomllib

    try:
        return isinstance(tomllib.loads(path.read_text("utf-8")).get("console"), dict)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def _check_console_config(args) -> int:
    """check-config of a console configuration: what `valvoja console serve|user|token` load, and its database
    password reference resolved unless --skip-secrets."""
    from console.config import conninfo, load

    cfg = load(args.path)
    if not args.skip_secrets:
        try:
            conninfo(cfg)
        except ConfigError as exc:
            raise ConfigError([f"{args.path}: {p}" for p in exc.problems]) from None
    print(f"{args.path}: OK (console configuration: listen {cfg.console.listen}, {len(cfg.gateways)} gateways)")
    return 0


def cmd_db_migrate(args) -> int:
    import os

    import psycopg

    from edge import settings
    from edge.db.migrate import SchemaMismatch, migrate
    from edge.gateway import database_conninfo

    url = args.db
    if url is None and args.config:
        url = database_conninfo(settings.load(args.config))
    url = url or os.environ.get("VALVOJA_DB_URL")
    if not url:
        print("no database: give --db URL, --config with [database] url, or set VALVOJA_DB_URL", file=sys.stderr)
        return 2
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            features, applied = migrate(conn)
    except SchemaMismatch as exc:
        print(f"valvoja db migrate: {exc}", file=sys.stderr)
        return 1
    print(f"database edition: {features.edition}"
          + (f" (TimescaleDB {features.timescaledb_version})" if features.timescaledb_version else ""))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
                                                      if applied else " (schema up to date)"))
    return 0


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def cmd_run(args) -> int:
    # SIGTERM/SIGINT stop (flush, exit 0), SIGHUP reloads the configuration, a watchdog restarts stalled parts.
    from edge.service import Service

    return Service(args.config, log_format=args.log_format).run()


def cmd_demo(args) -> int:
    from edge.demo import run_demo

    return run_demo(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        # A missing, unreadable or wrong kind of file, a peer that refuses: the operator's to fix, in one line
        # (a traceback whose last line says it is a bug report's material, not a typo's).
        print(f"valvoja {args.command}: {os_error(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not _is_database_error(exc):
            raise
        print(f"valvoja {args.command}: database: {one_line(exc)}", file=sys.stderr)
        return 1


def os_error(exc: OSError) -> str:
    """``FILE: what is wrong`` for a file error (``No such file or directory``), else the message on one line."""
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return one_line(exc)


def _is_database_error(exc: BaseException) -> bool:
    # psycopg is imported lazily by the commands; one that never imported it raised no database error.
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.Error)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line: libpq's span several ("connection to server ... failed: Connection
    refused" then a tab-indented "Is the server running ...?"). It names the host, port and user, never the
    password."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
