"""A first-day user's wrong argument (a missing file, a folder, an empty file, a typo in HOST:PORT, a broker that
refuses) gets one line naming what is wrong and a non-zero exit, never a Python traceback. Found by a first-day
audit: each command here printed a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from cli_support import valvoja as _valvoja


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: a connect is refused


def _one_line_error(r: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_maintenance_evaluate_missing_data_is_one_line(tmp_path):
    r = _valvoja("maintenance", "evaluate", "skab", "--data", str(tmp_path), "--files", "valve1/0.csv")
    _one_line_error(r, 1, "valve1/0.csv", "No such file")
    r = _valvoja("maintenance", "evaluate", "cmapss", "--data", str(tmp_path), "--subset", "FD001")
    _one_line_error(r, 1, "train_FD001.txt", "not found")


def _skab_file(path, rows: int = 420, value: float = 1.0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["datetime;a;b;anomaly;changepoint"]
    lines += [f"2020-03-09 10:{i // 60 % 60:02d}:{i % 60:02d};{value + i % 7};{i % 3};{int(i > 410)}.0;0.0"
              for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return str(path.relative_to(path.parents[1]))


@pytest.mark.parametrize("args, code, words", [
    (["--folds", "1"], 2, ["argument --folds", "at least 2"]),
    (["--max-far", "-5"], 2, ["argument --max-far", "[0, 100]"]),
    (["--files", "v/0.csv"], 1, ["v/0", "named twice"]),  # the same file twice: it would choose its own configuration
    (["--files", "w/0.csv"], 1, ["w/0 holds the same rows as v/0"]),  # a copy under another name
    (["--files", "free/0.csv"], 1, ["free/0", "no anomaly column"]),  # was dropped, and still counted as a file
    (["--files", "short/0.csv"], 1, ["short/0 (400 rows)", "no rows after the first 400"]),
])
def test_maintenance_evaluate_skab_refuses_what_would_make_its_figures_untrue(tmp_path, args, code, words):
    files = [_skab_file(tmp_path / "v" / "0.csv"), _skab_file(tmp_path / "v" / "1.csv", value=2.0)]
    _skab_file(tmp_path / "w" / "0.csv")
    _skab_file(tmp_path / "short" / "0.csv", rows=400)
    (tmp_path / "free").mkdir()
    (tmp_path / "free" / "0.csv").write_text("datetime;a;b\n2020-03-09 10:00:00;1;2\n")
    extra = args[1:] if args[0] == "--files" else []
    opts = args if args[0] != "--files" else []
    r = _valvoja("maintenance", "evaluate", "skab", "--data", str(tmp_path), *opts, "--files", *files, *extra)
    _one_line_error(r, code, *words)


def test_maintenance_evaluate_files_not_in_the_format_name_the_file(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "0.csv").write_text("datetime;a;anomaly;changepoint\n2020-01-01 00:00:00;x;0;0\n")
    (tmp_path / "v" / "1.csv").write_text("datetime;a;anomaly;changepoint\n2020-01-01 00:00:00;1;0;0\n"
                                          "2020-01-01 00:00:01;1\n")
    r = _valvoja("maintenance", "evaluate", "skab", "--data", str(tmp_path), "--files", "v/0.csv", "v/1.csv")
    _one_line_error(r, 1, "v/0.csv: not a SKAB file of numbers", "'x'")
    r = _valvoja("maintenance", "evaluate", "skab", "--data", str(tmp_path), "--files", "v/1.csv", "v/0.csv")
    _one_line_error(r, 1, "v/1.csv, line 3: fewer fields than the header's 4")
    (tmp_path / "train_FD009.txt").write_text("1 1 x" + " 0" * 23 + "\n")
    r = _valvoja("maintenance", "evaluate", "cmapss", "--data", str(tmp_path), "--subset", "FD009")
    _one_line_error(r, 1, "train_FD009.txt: could not convert string 'x'")
    (tmp_path / "train_FD009.txt").write_text("1 2 3\n")  # one row of 3 columns: "found none" it said
    r = _valvoja("maintenance", "evaluate", "cmapss", "--data", str(tmp_path), "--subset", "FD009")
    _one_line_error(r, 1, "train_FD009.txt: expected 26 columns", "found 3")


@pytest.mark.parametrize("args, code, words", [
    (["--folds", "9"], 1, ["9 folds for 8 training engines", "need 2 to 8"]),
    (["--folds", "1"], 2, ["argument --folds", "at least 2"]),
    (["--truncations", "0"], 2, ["argument --truncations"]),
    (["--coverage", "90"], 2, ["argument --coverage", "(0, 1)"]),
    (["--caps", "0"], 2, ["argument --caps", "above 0"]),
])
def test_maintenance_evaluate_cmapss_bad_arguments_are_one_line(args, code, words):
    sample = os.path.join(os.path.dirname(__file__), "data", "cmapss")
    r = _valvoja("maintenance", "evaluate", "cmapss", "--data", sample, "--subset", "FD001", "--no-select",
                 "--max-iter", "5", *args)
    _one_line_error(r, code, *words)


@pytest.mark.parametrize("kind", ["empty", "folder"])
def test_models_train_on_an_empty_file_or_a_folder(tmp_path, kind):
    data = tmp_path / "data.csv"
    data.write_text("") if kind == "empty" else data.mkdir()
    r = _valvoja("models", "train", "--data", str(data), "--model-id", "x", "--registry", str(tmp_path / "reg"))
    _one_line_error(r, 1, str(data), "empty file" if kind == "empty" else "is a folder")


def test_demo_mqtt_not_host_port_is_a_usage_error():
    r = _valvoja("demo", "--mqtt", "localhost", "--no-console", "--duration", "1")
    _one_line_error(r, 2, "argument --mqtt", "HOST:PORT")


def test_simulate_to_a_refusing_broker_is_one_line(tmp_path):
    port = _refused_port()
    r = subprocess.run([sys.executable, "-m", "edge.cli", "simulate", "--no-opcua", "--duration", "2",
                        "--mqtt", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ), stdin=subprocess.DEVNULL)
    _one_line_error(r, 1, f"127.0.0.1:{port}", "did not accept a connection")


def test_no_help_text_shows_a_doubled_percent():
    """argparse %-formats help strings but not descriptions: "90 %%" in a description is printed as is."""
    import argparse

    from edge.cli import build_parser

    def walk(p: argparse.ArgumentParser, path: str):
        yield path, p.format_help()
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    yield from walk(sp, f"{path} {name}")

    wrong = [path for path, text in walk(build_parser(), "valvoja") if "%%" in text]
    assert not wrong, wrong


def test_check_config_of_a_console_file_names_its_problems(tmp_path):
    path = tmp_path / "console.toml"
    path.write_text('[console]\nlisten = "127.0.0.1:8080"\nlisen = "x"\n[database]\nurl = "postgresql://c@h/d"\n'
                    'password = "file:nothing-here"\n')
    r = _valvoja("check-config", "--skip-secrets", str(path))
    _one_line_error(r, 1, "console.lisen: unknown key")
    assert "console: unknown key" not in r.stderr
    path.write_text(path.read_text().replace('lisen = "x"\n', ""))
    r = _valvoja("check-config", "--skip-secrets", str(path))
    assert r.returncode == 0 and "OK (console configuration" in r.stdout, r
    r = _valvoja("check-config", str(path))
    _one_line_error(r, 1, "database.password", "nothing-here")


def test_models_list_of_a_missing_registry_says_so(tmp_path):
    """It said "no models registered", exit 0, and created the mistyped folder."""
    missing = tmp_path / "regsitry"
    r = _valvoja("models", "list", "--registry", str(missing))
    _one_line_error(r, 1, f"no registry folder {missing}", "--registry")
    assert not missing.exists()
    (tmp_path / "empty").mkdir()
    r = _valvoja("models", "list", "--registry", str(tmp_path / "empty"))
    assert r.returncode == 0 and "no models registered" in r.stdout, r


def test_emissions_compute_with_to_not_after_from_says_so(tmp_path):
    """It said "nothing to compute from 2026-01-02: no hour of it has ended yet", sending people to the clock; the
    dates are checked before the database is asked (this one refuses)."""
    site = tmp_path / "site.toml"
    site.write_text('[[stacks]]\nname = "K9"\nregime = "lcp"\ntimezone = "Europe/Helsinki"\n'
                    'pollutants = [{ name = "NOx", tag = "K9.NOx", elv = { month = 200.0 } }]\n')
    db = f"postgresql://x@127.0.0.1:{_refused_port()}/x"
    for start, end in (("2026-01-02", "2026-01-01"), ("2026-01-02", "2026-01-02")):
        r = _valvoja("emissions", "compute", "-c", str(site), "--db", db, "--from", start, "--to", end)
        _one_line_error(r, 1, f"--to {end} is not after --from {start}", "exclusive")
    r = _valvoja("emissions", "compute", "-c", str(site), "--db", db, "--from", "2026-02-30", "--to", "2026-03-01")
    _one_line_error(r, 1, "--from/--to", "YYYY-MM-DD")


def test_review_mark_of_an_unknown_id_is_one_line(plain_pg_dsn):
    import psycopg

    from edge.db.migrate import migrate

    with psycopg.connect(plain_pg_dsn, autocommit=True) as conn:
        migrate(conn)
    r = _valvoja("maintenance", "review", "mark", "--prediction", "99", "--verdict", "right", "--by", "me",
                 "--db", plain_pg_dsn)
    _one_line_error(r, 1, "no prediction 99")


def test_window_help_states_the_exit_codes_a_script_gets(plain_pg_dsn):
    """A CMMS script tells "refused" from "no such window" by the exit code: --help says which is which, and the
    codes are those."""
    import psycopg

    from edge.db.migrate import migrate

    r = _valvoja("maintenance", "window", "--help")
    assert "2 a refused request" in " ".join(r.stdout.split()) and "3 an unknown window" in " ".join(r.stdout.split())
    with psycopg.connect(plain_pg_dsn, autocommit=True) as conn:
        migrate(conn)
    r = _valvoja("maintenance", "window", "end", "999", "--db", plain_pg_dsn)
    _one_line_error(r, 3, "no maintenance window 999")
    r = _valvoja("maintenance", "window", "add", "--asset", "P-1", "--from", "x", "--to", "y", "--reason", "r",
                 "--db", plain_pg_dsn)
    _one_line_error(r, 2, "not an ISO-8601")
    r = _valvoja("maintenance", "window", "list", "--db", f"postgresql://x@127.0.0.1:{_refused_port()}/x")
    _one_line_error(r, 1, "connection")


def test_a_state_folder_that_cannot_be_made_is_a_configuration_problem(tmp_path):
    """check-config said OK and `run` failed with a bare NotADirectoryError/PermissionError traceback (start_failed)
    that did not name the setting; now both name site.state_dir and exit 1."""
    (tmp_path / "afile").write_text("")
    site = tmp_path / "site.toml"
    site.write_text(f'[site]\nstate_dir = "{tmp_path}/afile/state"\n[http]\nenabled = false\n')
    for args in (["check-config", str(site)], ["run", "--config", str(site)]):
        r = _valvoja(*args)
        _one_line_error(r, 1, f"site.state_dir: {tmp_path}/afile/state: cannot be created", "is not a folder")
        assert r.stderr.count("cannot be created") == 1, r.stderr  # the spool is in it: one folder, one problem
    site.write_text(f'[site]\nstate_dir = "{tmp_path}/afile/state"\n[spool]\npath = "{tmp_path}/afile/spool/s.db"\n'
                    '[http]\nenabled = false\n')
    r = _valvoja("check-config", str(site))
    _one_line_error(r, 1, "site.state_dir: ", f"spool.path: {tmp_path}/afile/spool: cannot be created")


def test_check_config_notes_what_a_first_file_leaves_out(tmp_path):
    """An empty file was "OK (0 tags, 0 collectors ...)" and nothing more: `run` then started and did nothing."""
    site = tmp_path / "site.toml"
    site.write_text("")
    r = _valvoja("check-config", "--skip-secrets", str(site))
    assert r.returncode == 0, r
    assert "note: no [[collectors]]" in r.stdout and "note: no database.url" in r.stdout, r.stdout


@pytest.mark.parametrize("args, words", [
    (["--opcua", "notaurl"], ["--opcua 'notaurl'", "opc.tcp://HOST:PORT"]),
    (["--opcua-policy", "Basic256"], ["--opcua-policy 'Basic256'", "Basic256Sha256_SignAndEncrypt"]),
])
def test_simulate_opcua_arguments_are_one_line(args, words):
    r = _valvoja("simulate", "--duration", "1", *args)
    _one_line_error(r, 2, *words)


def test_train_anomaly_from_that_is_not_a_time_names_the_format(tmp_path):
    r = _valvoja("maintenance", "train-anomaly", "-c", str(tmp_path / "x.toml"), "--asset", "P-1", "--from", "monday")
    _one_line_error(r, 2, "argument --from: 'monday' is not an ISO 8601 time")
    assert "_aware" not in r.stderr


@pytest.mark.parametrize("argv", [
    ["maintenance", "review", "list", "--asset", "P-1", "--since", "yesterday"],
    ["maintenance", "review", "precision", "--since", "yesterday"],
    ["models", "evaluate", "feedback", "--until", "yesterday"],
    ["simulate", "--start", "yesterday"],
])
def test_every_time_argument_names_the_format(argv):
    # Each command parsed times its own way; review --since said "invalid fromisoformat value: 'yesterday'".
    r = _valvoja(*argv)
    _one_line_error(r, 2, "'yesterday' is not an ISO 8601 time (e.g. 2026-11-02T06:00:00+02:00 or 2026-11-02)")


def test_a_time_without_an_offset_is_utc_where_the_help_says_so():
    from datetime import UTC, datetime, timedelta, timezone

    from edge.cli import aware_time_arg, build_parser, iso_time_arg

    assert iso_time_arg("2026-11-02") == datetime(2026, 11, 2, tzinfo=UTC)
    assert iso_time_arg("2026-11-02T06:00+02:00") == datetime(2026, 11, 2, 6, tzinfo=timezone(timedelta(hours=2)))
    with pytest.raises(Exception, match="has no time zone"):
        aware_time_arg("2026-11-02T06:00")
    # A naive --since went to the database as a timestamp without zone, read in the server's TimeZone setting.
    args = build_parser().parse_args(["maintenance", "review", "list", "--asset", "P-1", "--since", "2026-11-01"])
    assert args.since == datetime(2026, 11, 1, tzinfo=UTC)


def test_check_config_notes_a_pollutant_without_a_confidence_interval(tmp_path):
    """A pollutant named "NO2" (the IED's CIs are keyed NOx, dust, ...) silently had no CI: its validated averages
    were the measured ones. Valid, so a note, not a problem."""
    site = tmp_path / "site.toml"
    site.write_text('[[stacks]]\nname = "K9"\nregime = "lcp"\npollutants = [\n'
                    '  { name = "NO2", tag = "K9.NO2", elv = { month = 200.0 } },\n'
                    '  { name = "NOx", tag = "K9.NOx", elv = { month = 200.0 } },\n'
                    '  { name = "NH3", tag = "K9.NH3", elv = { month = 10.0 }, ci_percent = 0 }]\n')
    r = _valvoja("check-config", "--skip-secrets", str(site))
    assert r.returncode == 0, r
    notes = [line for line in r.stdout.splitlines() if "no confidence interval" in line]
    assert len(notes) == 1 and "pollutants (NO2)" in notes[0], r.stdout


def _noted_until_set(tmp_path, stack: str, note: str, key: str, fixes: tuple[str, ...]) -> None:
    """check-config of a site with ``stack`` (a format string, its ``{}`` empty) passes with ``note``; with each of
    ``fixes`` in its place it passes without any output naming ``key``."""
    site = tmp_path / "site.toml"
    site.write_text(stack.format(""))
    r = _valvoja("check-config", "--skip-secrets", str(site))
    assert r.returncode == 0, r
    assert f"{site}: note: {note}" in r.stdout, r
    for fix in fixes:
        site.write_text(stack.format(fix))
        r = _valvoja("check-config", "--skip-secrets", str(site))
        assert r.returncode == 0 and key not in r.stdout, r


def test_check_config_notes_a_stack_counting_its_days_in_utc_by_default(tmp_path):
    """Without `timezone` a stack's days run 00:00-24:00 UTC (02:00-02:00 in Finland in winter): valid, and what a
    permit in UTC means, but rarely so; a note, gone once the zone is written (also as "UTC")."""
    _noted_until_set(tmp_path, '[[stacks]]\nname = "K9"\nregime = "lcp"\n{}'
                               'pollutants = [{{ name = "NOx", tag = "K9.NOx", elv = {{ month = 200.0 }} }}]\n',
                     "stacks (K9).timezone is not set: days, months and years are counted in UTC",
                     "timezone", ('timezone = "Europe/Helsinki"\n', 'timezone = "UTC"\n'))


def test_check_config_notes_toc_in_ppm_without_its_calibration_gas(tmp_path):
    """TOC in ppm took the default 12.01 g/mol (carbon, ppm C1): an FID reporting propane equivalents, the usual span
    gas, gave a third of the true TOC, silently. check-config notes it until molar_mass_g_mol is set."""
    _noted_until_set(tmp_path, '[[stacks]]\nname = "K9"\nregime = "lcp"\ntimezone = "UTC"\n'
                               'pollutants = [{{ name = "TOC", tag = "K9.TOC", unit = "ppm"{} }}]\n',
                     "stacks (K9).pollutants (TOC): TOC in ppm is converted as carbon (C1, 12.01 g/mol); an FID "
                     "reporting propane equivalents (ppm C3H8) needs molar_mass_g_mol = 36.03",
                     "TOC", (", molar_mass_g_mol = 36.03",))


def test_who_runs_a_command_is_named_even_without_an_account_name(monkeypatch):
    """Records of a change made from a shell name who made it (`edge.operator.who`): $VALVOJA_USER, else the login
    name; a container's user with no passwd entry (getpass raises) is ``uid N`` rather than a traceback."""
    import getpass
    import os

    from edge.operator import who

    monkeypatch.setenv("VALVOJA_USER", "anna")
    assert who() == "anna"
    monkeypatch.delenv("VALVOJA_USER")
    monkeypatch.setenv("LOGNAME", "pekka")
    assert who() == "pekka"

    def nobody() -> str:
        raise KeyError("getpwuid(): uid not found: 10001")

    monkeypatch.setattr(getpass, "getuser", nobody)
    assert who() == f"uid {os.getuid()}"
