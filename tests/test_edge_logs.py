"""The text log format: one record, one line, whatever the peer put in a topic or tag name."""

from __future__ import annotations

import io
import json
import logging

import pytest

from edge import logs

# every test here sets up the process's logging as the gateway does (tests/conftest.py puts it back)
pytestmark = pytest.mark.usefixtures("restore_logging")


def _emit(fmt: str, *args, **extra) -> str:
    out = io.StringIO()
    logs.setup("INFO", fmt, stream=out)
    try:
        logging.getLogger("valvoja.test").warning(*args, extra=extra)
    finally:
        logs.setup("INFO", "json", stream=io.StringIO())
    return out.getvalue()


def test_text_format_cannot_be_given_forged_lines() -> None:
    forged = "x\n00:00:00 ERROR   edge.auth: admin logged in event=login_ok"
    text = _emit("text", "no such tag %s", forged, event="tag_unknown", topic="plant/\r\n1\x1b[2J\u2028")
    assert text.count("\n") == 1 and text.endswith("\n")  # the message, its fields and the record's own end
    assert "\\n00:00:00 ERROR" in text and "topic=plant/\\r\\n1\\x1b[2J\\u2028" in text
    assert "event=tag_unknown" in text  # ordinary fields as they were


def test_text_format_keeps_a_traceback_on_its_lines() -> None:
    out = io.StringIO()
    logs.setup("INFO", "text", stream=out)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("valvoja.test").exception("failed on %s", "a\nb")
    finally:
        logs.setup("INFO", "json", stream=io.StringIO())
    first, *rest = out.getvalue().splitlines()
    assert first.endswith("failed on a\\nb") and rest[0] == "Traceback (most recent call last):"


def test_json_format_keeps_the_text_as_it_was() -> None:
    rec = json.loads(_emit("json", "no such tag %s", "a\nb", topic="t\n"))
    assert rec["msg"] == "no such tag a\nb" and rec["topic"] == "t\n"


def test_a_python_warning_is_a_json_line_of_the_log_too() -> None:
    """A library's warning (psycopg's about a connection that took GSSAPI encryption by libpq's default, a
    deprecation) went to stderr as Python prints it, two lines of text in a log of JSON objects that a collector
    parsing each line as JSON drops or chokes on. It is a record of the log like any other."""
    import warnings

    out = io.StringIO()
    logs.setup("INFO", "json", stream=out)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("the connection was obtained using the GSSAPI", RuntimeWarning, stacklevel=1)
    finally:
        logs.setup("INFO", "json", stream=io.StringIO())
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    rec = json.loads(lines[0])
    assert rec["level"] == "warning" and rec["logger"] == "py.warnings" and "GSSAPI" in rec["msg"]


def test_an_exception_ending_a_thread_is_a_json_line_of_the_log(restore_logging) -> None:
    """An exception that ended a thread (paho's network loop, the spool's writer, a library's worker) was printed by
    Python as a plain-text traceback on stderr, lines a JSON log reader drops and no alert on `level` sees. It is an
    error record with its event, the thread's name and the traceback; a thread that exits on purpose says nothing."""
    import threading

    out = io.StringIO()
    logs.setup("INFO", "json", stream=out)

    def broken() -> None:
        raise RuntimeError("socket gone")

    def leaving() -> None:
        raise SystemExit(0)

    for target, name in ((broken, "paho-loop"), (leaving, "worker")):
        t = threading.Thread(target=target, name=name)
        t.start()
        t.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    rec = json.loads(lines[0])
    assert (rec["level"], rec["event"], rec["thread_name"]) == ("error", "thread_error", "paho-loop")
    assert "socket gone" in rec["msg"] and "RuntimeError" in rec["exc"] and "in broken" in rec["exc"]
