"""Structured logs: one JSON object per line (or plain text for people at a terminal).

Context goes in ``extra={...}``: ``event`` names what happened (db_down, spool_full,
collector_lost ...) so logs can be filtered and counted; other keys add detail.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v if isinstance(v, str | int | float | bool | type(None)) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators, which some viewers break lines at.
_CONTROL = {c: ascii(chr(c))[1:-1] for c in (*range(0x20), *range(0x7f, 0xa0), 0x2028, 0x2029)}


def _one_line(text: str) -> str:
    """``text`` with its control characters escaped as Python writes them (``\\n``, ``\\x1b``): a topic or tag
    name with a line break in it, logged as it came, would start a line of the text log that looks like a record
    of its own (a forged "logged in"), and a terminal escape would act on the reader's terminal."""
    return text.translate(_CONTROL)


class TextFormatter(logging.Formatter):
    """One line per record: the message and its fields with control characters escaped; a traceback follows on
    lines of its own, as Python prints it. The JSON format needs none of this (its strings are escaped)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in record.__dict__.items() if k not in _STD and not k.startswith("_")}
        line = super().formatMessage(record) + (" " + " ".join(f"{k}={v}" for k, v in extras.items())
                                                 if extras else "")
        return _one_line(line)


NOISY = ("asyncua", "asyncio", "uvicorn.access", "httpx", "httpcore")  # loggers `setup` keeps at WARNING or above


log_threads = logging.getLogger("valvoja.threads")


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if issubclass(args.exc_type, SystemExit):
        return  # as Python's own hook: a thread that exits on purpose
    name = args.thread.name if args.thread is not None else "?"
    log_threads.error(
        "unhandled %s in thread %s: %s", args.exc_type.__name__, name, args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        extra={"event": "thread_error", "thread_name": name})


def setup(level: str = "INFO", fmt: str = "json", stream=None) -> None:
    """Configure the root logger once (idempotent; replaces earlier handlers)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # A library's warnings.warn (psycopg's about GSSAPI taken by libpq's default, a deprecation) would go to stderr
    # as Python prints it: lines of plain text in a log of JSON objects. As records of `py.warnings` they are JSON.
    logging.captureWarnings(True)
    # An exception ending a thread (paho's network loop, the spool's writer, a library's worker) was printed by
    # Python as a plain-text traceback on stderr: no event, no level, lines a JSON log reader drops.
    threading.excepthook = _log_thread_exception
    # Libraries log every reconnect attempt at INFO/WARNING; the runtime logs outages once. httpx logs every request
    # with its whole URL at INFO ("HTTP Request: POST <url>"): a webhook's token in its path or query with it.
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))
