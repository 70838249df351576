"""Secrets by reference (edge/secrets.py) and the database URL: every problem is a `ConfigError` naming the key, never
an exception that escapes (check-config printed a traceback; a SIGHUP with such a file ended the running gateway:
tests/test_ops_reload.py), and no message repeats a secret."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from gateway_proc import GatewayProcess
from ops_support import wait_for

from edge import settings
from edge.errors import ConfigError
from edge.gateway import database_conninfo
from edge.secrets import resolve_secret


def test_a_secret_file_that_is_not_utf8_is_a_config_error(tmp_path):
    """A password saved as Latin-1 (an editor on a Finnish Windows desktop: "pässi") raised UnicodeDecodeError."""
    f = tmp_path / "db_password"
    f.write_bytes("pässi\n".encode("latin-1"))
    f.chmod(0o600)
    with pytest.raises(ConfigError) as err:
        resolve_secret(f"file:{f}", where="database.password")
    msg = str(err.value)
    assert msg.startswith("database.password: ") and str(f) in msg and "UTF-8" in msg, msg


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_an_empty_secret_file_is_a_config_error(tmp_path, content):
    """An empty file (a secret written on a full disk, `init-secrets.sh` interrupted) was used as an empty password:
    check-config said OK and the gateway then failed to log in over and over, far from the cause."""
    f = tmp_path / "mqtt_password"
    f.write_bytes(content)
    f.chmod(0o600)
    with pytest.raises(ConfigError, match=r"^collectors \(plant\)\.password: secret file .* is empty"):
        resolve_secret(f"file:{f}", where="collectors (plant).password")


def test_an_empty_environment_variable_is_a_config_error(monkeypatch):
    monkeypatch.setenv("VALVOJA_TEST_EMPTY_PW", "")
    with pytest.raises(ConfigError, match=r"^database\.password: environment variable VALVOJA_TEST_EMPTY_PW is empty"):
        resolve_secret("env:VALVOJA_TEST_EMPTY_PW", where="database.password")


def test_a_secret_keeps_inner_and_leading_white_space_and_loses_only_the_line_end(tmp_path):
    f = tmp_path / "pw"
    f.write_text(" a b\t\n")
    f.chmod(0o600)
    assert resolve_secret(f"file:{f}") == " a b\t"


def test_a_database_url_libpq_cannot_parse_is_named_by_check_config(tmp_path):
    """`url = "postgresql://valvoja@db/valvoja?sslmod=require"` (a misspelt parameter) passed the file's validation;
    with a password set, building the connection string raised psycopg.ProgrammingError out of check-config and out
    of a SIGHUP reload; without one, the gateway started and retried the connection for ever."""
    p = tmp_path / "site.toml"
    p.write_text('[database]\nurl = "postgresql://valvoja@db/valvoja?sslmod=require"\n')
    with pytest.raises(ConfigError) as err:
        settings.load(p)
    assert any(line.startswith(f"{p}: database.url: ") and "sslmod" in line for line in err.value.problems), \
        err.value.problems


def test_a_malformed_database_url_from_a_reference_is_named_without_its_password(tmp_path, monkeypatch):
    """``url = "env:..."`` may hold a password (that is what the reference is for); libpq's message quotes the whole
    URL, so it must not reach the log or check-config's output."""
    monkeypatch.setenv("VALVOJA_TEST_DB_URL", "postgresql://valvoja:s3cr3t-pw@[::1/valvoja")
    p = tmp_path / "site.toml"
    p.write_text('[database]\nurl = "env:VALVOJA_TEST_DB_URL"\n')
    cfg = settings.load(p)
    with pytest.raises(ConfigError) as err:
        database_conninfo(cfg)
    msg = str(err.value)
    assert msg.startswith("database.url: ") and "VALVOJA_TEST_DB_URL" in msg, msg
    assert "s3cr3t-pw" not in msg, msg


def test_check_config_names_a_non_utf8_secret_without_a_traceback(tmp_path):
    secret = tmp_path / "db_password"
    secret.write_bytes("pässi".encode("latin-1"))
    secret.chmod(0o600)
    p = tmp_path / "site.toml"
    p.write_text(f'[database]\nurl = "postgresql://valvoja@127.0.0.1:5432/valvoja"\npassword = "file:{secret}"\n')
    out = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", str(p)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 1
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"{p}: database.password: "), out.stderr


def test_check_config_resolves_the_alert_notification_password(tmp_path):
    """`maintenance.notify.mqtt.password` was resolved only inside the running analytics task: check-config (and the
    checks of a SIGHUP reload) said OK for an unset variable, then live analytics (every rule and alert, not just the
    notifications) died at start and was restarted by the watchdog every interval, a traceback each time."""
    p = tmp_path / "site.toml"
    p.write_text('[[rules]]\nname = "hot"\ntag = "P-1.temp"\nkind = "threshold"\nhigh = 90.0\n\n'
                 '[maintenance.notify.mqtt]\nhost = "127.0.0.1"\nusername = "n"\n'
                 'password = "env:VALVOJA_TEST_UNSET_NOTIFY_PW"\n')
    env = {k: v for k, v in os.environ.items() if k != "VALVOJA_TEST_UNSET_NOTIFY_PW"}
    out = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", str(p)], capture_output=True, text=True,
                         env={**env, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 1, out.stdout
    assert out.stderr.startswith(f"{p}: maintenance.notify.mqtt.password: environment variable "
                                 "VALVOJA_TEST_UNSET_NOTIFY_PW is not set"), out.stderr


def test_an_opcua_endpoint_with_a_password_in_it_is_refused(tmp_path):
    """asyncua takes ``user:password@`` from the endpoint URL and logs in with it, so a literal password was accepted in
    the configuration (which must never hold one) and then shown in /healthz (``collectors.<name>.endpoint``) and in
    every connection error message."""
    p = tmp_path / "site.toml"
    p.write_text('[[collectors]]\nkind = "opcua"\nname = "plc"\nendpoint = "opc.tcp://op:s3cr3t@127.0.0.1:4840/x"\n'
                 '[[collectors.nodes]]\ntag = "P-1.flow"\nnode_id = "ns=2;s=Flow"\n')
    with pytest.raises(ConfigError) as err:
        settings.load(p)
    found = [line for line in err.value.problems if "collectors[0] (plc).endpoint: " in line]
    assert found and "password" in found[0], err.value.problems
    assert not any("s3cr3t" in line for line in err.value.problems), err.value.problems


def test_file_reference_without_a_path_says_so():
    """`file:` alone read the current folder: "cannot read secret file .: Is a directory"."""
    with pytest.raises(ConfigError, match=r"^database\.url: 'file:' needs a path"):
        resolve_secret("file:", where="database.url")


# Secret files' permissions: a database password in a 0644 file (umask 022, `echo pw > file`) was taken silently,
# readable by every local user. Now refused as libpq refuses such a ~/.pgpass, with the fix in the message.

def _secret_file(tmp_path, mode: int, text: str = "s3cret\n"):
    f = tmp_path / "db_password"
    f.write_text(text)
    f.chmod(mode)
    return f


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=oct)
def test_a_secret_file_only_its_owner_can_read_is_taken(tmp_path, mode):
    f = _secret_file(tmp_path, mode)
    assert resolve_secret(f"file:{f}", where="database.password") == "s3cret"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666], ids=oct)
def test_a_secret_file_of_the_own_user_that_others_can_read_is_refused(tmp_path, mode):
    f = _secret_file(tmp_path, mode)
    with pytest.raises(ConfigError) as err:
        resolve_secret(f"file:{f}", where="database.password")
    assert str(err.value) == (f"database.password: secret file {f} can be read by other users (mode {mode:04o}, "
                              f"owned by this process's user): run chmod 600 {f}")
    assert "s3cret" not in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file of another user needs root")
@pytest.mark.parametrize("mode,taken", [(0o444, True), (0o644, True), (0o640, True), (0o400, True),
                                        (0o664, False), (0o646, False)], ids=str)
def test_a_secret_file_of_another_user_may_be_readable_but_not_writable_by_others(tmp_path, mode, taken):
    """How container secrets look to the gateway (uid 10001): compose bind-mounts the host's file (root's, 0644 from
    init-secrets.sh in a 0700 folder), Docker and Kubernetes secret mounts are root's 0444 / 0644. Reading them through
    the group or other bits is how the gateway reads them at all; a file others can write is still refused (anyone
    could put their own password there). Here the roles are swapped: root reads a file of uid 10001."""
    f = _secret_file(tmp_path, mode)
    os.chown(f, 10001, 10001)
    if taken:
        assert resolve_secret(f"file:{f}", where="database.password") == "s3cret"
        return
    with pytest.raises(ConfigError) as err:
        resolve_secret(f"file:{f}", where="database.password")
    assert str(err.value) == (f"database.password: secret file {f} can be changed by other users (mode {mode:04o}, "
                              f"owned by uid 10001): run chmod go-w {f}")


@pytest.mark.parametrize("command", ["check-config site.toml", "run --config site.toml",
                                     "db migrate --config site.toml", "check-config console.toml",
                                     "console serve --config console.toml"])
def test_gateway_console_and_cli_refuse_a_secret_file_others_can_read_at_start(tmp_path, command):
    """One line naming the key, the file, its mode and the fix; exit 1 before anything is connected or started."""
    f = _secret_file(tmp_path, 0o644)
    db = '[database]\nurl = "postgresql://valvoja@127.0.0.1:9/valvoja"\npassword = "file:db_password"\n'
    (tmp_path / "site.toml").write_text('[site]\nstate_dir = "state"\n' + db)
    (tmp_path / "console.toml").write_text('[console]\nlisten = "127.0.0.1:0"\n' + db)
    out = subprocess.run([sys.executable, "-m", "edge.cli", *command.split()], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=60)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert (f"database.password: secret file {f} can be read by other users (mode 0644, owned by this process's "
            f"user): run chmod 600 {f}") in out.stderr.splitlines()[0], out.stderr
    f.chmod(0o600)
    if command.startswith("check-config"):  # the same file with the fixed mode passes
        ok = subprocess.run([sys.executable, "-m", "edge.cli", *command.split()], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=60)
        assert ok.returncode == 0, (ok.stdout, ok.stderr)


@pytest.mark.parametrize("password", ["S3c@RETpw", "S3c/RETpw"])
def test_a_database_url_with_an_unencoded_at_or_slash_in_its_password_never_shows_a_piece_of_it(tmp_path, password):
    """``url = "env:..."`` holding ``postgresql://valvoja:S3c@RETpw@host/db``: libpq reads host "RETpw@host" (or, for
    a '/', host "valvoja" and port "S3c"), so the gateway started and put "failed to resolve host 'RETpw@127.0.0.1'"
    in the log and in the unauthenticated /healthz (database.last_error). Now a configuration problem at start that
    names the key and the fix, and repeats nothing of the value."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http_port = s.getsockname()[1]
    (tmp_path / "site.toml").write_text(f'[site]\nstate_dir = "state"\n[database]\nurl = "env:VALVOJA_TEST_DB_URL"\n'
                                        f'[http]\nlisten = "127.0.0.1:{http_port}"\n')
    env = {**os.environ, "PYTHONPATH": os.getcwd(),
           "VALVOJA_TEST_DB_URL": f"postgresql://valvoja:{password}@127.0.0.1:9/valvoja"}
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", "site.toml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    health = ""
    try:
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline and "last_error\": \"" not in health:
            time.sleep(0.2)
            with contextlib.suppress(OSError):
                health = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=2).read().decode()
    finally:
        if proc.poll() is None:
            proc.terminate()
        out, err = proc.communicate(timeout=30)
    for piece in ("RETpw", "S3c"):
        assert piece not in health, health
        assert piece not in out + err, out + err
    assert proc.returncode == 1, (out, err)
    assert err.startswith("site.toml: database.url: the value of env:VALVOJA_TEST_DB_URL has an '@' that is not the "
                          "one between the user and the host: an '@' or '/' in the password must be "
                          "percent-encoded"), err


def test_a_password_from_a_variable_loses_its_line_end_as_one_from_a_file_does(tmp_path, mosquitto, monkeypatch):
    """A variable filled from a file written by `echo` (Kubernetes' secretKeyRef of a secret made --from-file) ends
    in a line end, which a `file:` secret loses: the MQTT collector logged in with it and the broker refused the
    password that looked right (collector never connected). Against the broker's password listener."""
    monkeypatch.setenv("VALVOJA_TEST_MQTT_PW", mosquitto.password + "\n")
    gw = GatewayProcess(tmp_path, f"""\
[site]
state_dir = "var"
[http]
listen = "127.0.0.1:{{HTTP_PORT}}"
[logging]
format = "text"
[[collectors]]
kind = "mqtt"
name = "plant"
host = "127.0.0.1"
port = {mosquitto.auth_port}
username = "{mosquitto.username}"
password = "env:VALVOJA_TEST_MQTT_PW"
client_id = "valvoja-secrets-test"
connect_timeout_s = 3
[[collectors.subscriptions]]
topic = "secrets/+signal"
tag = "{{signal}}"
""").start()
    try:
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], timeout_s=20,
                 what="the collector logged in")
        assert gw.terminate() == 0
    finally:
        gw.kill()
