"""The gateway image, really built from docker/Dockerfile with podman and run against the test servers.

Build: docker/localbuild.py (stand-in base image from debootstrap, cached in /var/cache/valvoja-build, so a
second run only rebuilds changed layers). Run: host network, read-only root file system, non-root user,
secrets and the broker CA as mounted files, state in a mounted directory. The test waits for the image's
HEALTHCHECK to pass, publishes to the fixture mosquitto (password listener and TLS listener), sees the
readings in the fixture database, stops the container and checks that it exited 0 after flushing.
"""

from __future__ import annotations

import os
import sqlite3
import time

import pytest
from container_support import GATEWAY_UID, Containers, localbuild, podman, project_image
from ops_support import Publisher, db_url, new_run, site_config, stored, wait_for
from servers import free_port

TAG = "localhost/valvoja:test"
# A cold build (debootstrap of the base, ~550 MB of wheels) takes several minutes; warm ones ~20-40 s.
# One worker under pytest-xdist: the module builds the image once, into podman storage both workers share.
pytestmark = [pytest.mark.timeout(1800), pytest.mark.xdist_group("podman")]

TLS_COLLECTOR = """
[[collectors]]
kind = "mqtt"
name = "plant-tls"
host = "localhost"
port = @TLS_PORT@
client_id = "valvoja-tls-@RUN@"

[collectors.tls]
ca_file = "/etc/valvoja/certs/ca.crt"

[[collectors.subscriptions]]
topic = "tls/@RUN@/+asset/+signal"
tag = "{asset}.{signal}"
"""


@pytest.fixture(scope="module")
def image() -> str:
    return project_image(TAG)


@pytest.fixture
def containers():
    c = Containers()
    yield c
    c.cleanup()


def _run_gateway(containers, name: str, image: str, config, state, http_port: int, ca, secrets: dict) -> str:
    """The gateway container as compose runs it: read-only root, host network, config, CA and secret files
    mounted read-only, state in a volume, the health check pointed at its port."""
    mounts = [f"{config}:/etc/valvoja/gateway.toml:ro", *(f"{path}:/run/secrets/{n}:ro" for n, path in secrets.items()),
              f"{ca}:/etc/valvoja/certs/ca.crt:ro", f"{state}:/var/lib/valvoja"]
    return containers.run(name, "--network", "host", "--read-only", *(a for m in mounts for a in ("-v", m)),
                          "-e", f"VALVOJA_HEALTH_URL=http://127.0.0.1:{http_port}/healthz", image)


def _processes(name: str) -> dict[int, tuple[str, int, str]]:
    """pid -> (state, parent pid, command name) of the processes in a container, from its /proc."""
    script = 'for f in /proc/[0-9]*/stat; do cat "$f" 2>/dev/null; echo; done'
    out = {}
    for line in podman("exec", name, "sh", "-c", script).stdout.splitlines():
        if ")" in line:
            pid, comm = line.split(" (", 1)[0], line[line.index("(") + 1:line.rindex(")")]
            state, ppid = line[line.rindex(")") + 2:].split()[:2]
            out[int(pid)] = (state, int(ppid), comm)
    return out


def _health_ok(port: int) -> dict | bool:
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return False


def test_gateway_image_runs_healthy_stores_readings_and_stops_cleanly(image, containers, tmp_path, pg_dsn,
                                                                       mosquitto):
    run = new_run()
    http_port = free_port()
    # The password listener with the password from a secret file; flush interval 60 s so that the
    # readings are still in the spool when the container is stopped.
    text = site_config(pg_dsn, mosquitto.auth_port, run=run, state_dir="/var/lib/valvoja", flush_s=60)
    text = text.replace("{HTTP_PORT}", str(http_port)).replace(
        'keepalive_s = 5', 'keepalive_s = 5\nusername = "valvoja"\npassword = "file:/run/secrets/mqtt_password"')
    text += TLS_COLLECTOR.replace("@TLS_PORT@", str(mosquitto.tls_port)).replace("@RUN@", run)
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    secret = tmp_path / "mqtt_password"
    secret.write_text(mosquitto.password + "\n")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, GATEWAY_UID, GATEWAY_UID)

    name = _run_gateway(containers, f"valvoja-test-{run}", image, config, state, http_port, mosquitto.ca_path,
                        {"mqtt_password": secret})
    healthy_s = containers.wait_healthy(name)
    assert containers.state(name)["Health"]["Status"] == "healthy"
    wait_for(lambda: all(c.get("connected") for c in (_health_ok(http_port) or {}).get("collectors", {"x": {}})
                         .values()), 30, what="both collectors subscribed")

    auth = Publisher(mosquitto.auth_port, run, username=mosquitto.username, password=mosquitto.password)
    tls = Publisher(mosquitto.tls_port, run, host="localhost", ca=mosquitto.ca_path)
    try:
        auth.publish(300, asset="P-1")
        for i in range(200):  # the TLS collector listens on tls/<run>/...
            tls.client.publish(f"tls/{run}/P-2/flow", f'{{"value": {i}, "time": {1_700_000_000_000 + i}}}',
                               qos=1).wait_for_publish(10)
    finally:
        auth.close()
        tls.close()
    wait_for(lambda: (_health_ok(http_port) or {}).get("spool", {}).get("readings") == 500, 30,
             what="500 readings in the container's spool")
    assert stored(pg_dsn, "P-") == 0

    # PID 1 is tini, the gateway its child: orphans of `podman exec` sessions are left to PID 1, which must collect
    # them (as the gateway itself, PID 1 until December 2026, nothing did: 3 zombies for good).
    procs = _processes(name)
    assert procs[1][::2] == ("S", "tini") and [c for _, p, c in procs.values() if p == 1] == ["valvoja"], procs
    for _ in range(3):
        podman("exec", name, "sh", "-c", "sleep 0.1 & exit 0")
    wait_for(lambda: not [p for p, (state, _, _) in _processes(name).items() if state == "Z"], 30,
             what="no zombie processes left in the container")
    # The broker password came from its secret file: nowhere in the container's configuration or log.
    assert mosquitto.password not in podman("inspect", name).stdout + containers.logs(name)

    t0 = time.monotonic()
    podman("stop", "-t", "20", name, timeout=60)
    stop_s = time.monotonic() - t0
    st = containers.state(name)
    logs = containers.logs(name)
    assert st["ExitCode"] == 0, logs[-4000:]
    assert stored(pg_dsn, "P-1.") == 300 and stored(pg_dsn, "P-2.") == 200, logs[-4000:]
    assert "event=stopped" in logs and "0 readings left in the spool" in logs
    # State only in the volume, written by the non-root user; the spool is empty after the flush.
    spool = state / "spool.db"
    assert spool.stat().st_uid == GATEWAY_UID
    with sqlite3.connect(spool) as db:
        assert db.execute("SELECT count(*) FROM batches").fetchone()[0] == 0
    print(f"[container] healthy after {healthy_s:.1f} s, stopped (exit 0) in {stop_s:.1f} s")


def test_stack_gateway_config_is_valid_inside_the_image(image, tmp_path):
    """docker/gateway.toml as compose mounts it: `valvoja check-config` in the image says OK."""
    from certs import CertificateAuthority

    ca = CertificateAuthority(tmp_path / "ca")
    res = podman("run", "--rm", "--network", "none", "--read-only",
                 "-v", f"{localbuild.ROOT / 'docker/gateway.toml'}:/etc/valvoja/gateway.toml:ro",
                 "-v", f"{ca.cert_path}:/etc/valvoja/certs/ca.crt:ro",
                 image, "check-config", "--skip-secrets", "/etc/valvoja/gateway.toml", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK" in res.stdout


def _compose_service(name: str) -> dict:
    yaml = pytest.importorskip("ruamel.yaml", reason="ruamel.yaml comes with check-jsonschema (dev dependency)")
    return yaml.YAML(typ="safe").load((localbuild.ROOT / "docker/compose.yaml").read_text())["services"][name]


def test_stack_gateway_config_stores_what_the_stack_simulator_publishes(image, containers, tmp_path, pg_dsn,
                                                                         mosquitto):
    """docker/gateway.toml and the compose `simulator` command, run from the image: the simulator publishes
    with the broker password from its secret file, the gateway takes it over TLS with the stack's
    subscriptions and stores it. Only names, ports and the client id are moved onto the test servers."""

    run = new_run()
    http_port, opcua_port = free_port(), free_port()
    text = (localbuild.ROOT / "docker/gateway.toml").read_text()
    for old, new in {'"postgresql://valvoja@timescaledb:5432/valvoja"': f'"{db_url(pg_dsn)}"',
                     'host = "mosquitto"': 'host = "localhost"',
                     "port = 8883": f"port = {mosquitto.tls_port}",
                     '"0.0.0.0:9108"': f'"127.0.0.1:{http_port}"',
                     '"valvoja-gw-1"': f'"valvoja-{run}"'}.items():
        assert old in text, f"docker/gateway.toml no longer has {old}"
        text = text.replace(old, new)
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "db_password").write_text("unused: the test database trusts local connections\n")
    (secrets / "mqtt_password").write_text(mosquitto.password + "\n")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, GATEWAY_UID, GATEWAY_UID)

    command = [str(a) for a in _compose_service("simulator")["command"]]
    command[command.index("--mqtt") + 1] = f"127.0.0.1:{mosquitto.auth_port}"
    command[command.index("--opcua") + 1] = f"opc.tcp://127.0.0.1:{opcua_port}/valvoja/sim"
    command += ["--mqtt-client-id", f"sim-{run}"]
    gateway = _run_gateway(containers, f"valvoja-stackgw-{run}", image, config, state, http_port, mosquitto.ca_path,
                           {n: secrets / n for n in ("db_password", "mqtt_password")})
    containers.wait_healthy(gateway)
    simulator = containers.run(f"valvoja-sim-{run}", "--network", "host", "--read-only",
                               "-v", f"{secrets / 'mqtt_password'}:/run/secrets/mqtt_password:ro",
                               image, *command)
    try:
        wait_for(lambda: stored(pg_dsn, "P-101.") > 0 and stored(pg_dsn, "K1.") > 0, 60,
                 what="simulator readings (pumps and boiler) in the database")
    except TimeoutError:
        raise AssertionError(f"simulator:\n{containers.logs(simulator)[-3000:]}\n"
                             f"gateway:\n{containers.logs(gateway)[-3000:]}") from None
    podman("stop", "-t", "15", simulator, timeout=60)
    podman("stop", "-t", "20", gateway, timeout=60)
    assert containers.state(gateway)["ExitCode"] == 0, containers.logs(gateway)[-4000:]
    assert "stopped" in {e.get("event") for e in _json_lines(containers.logs(gateway))}, "the stack logs JSON lines"


def _json_lines(log: str) -> list[dict]:
    """Every line of a container's log as JSON (podman's own `time="..."` warnings aside); fails on any other."""
    import json

    lines = [line for line in log.splitlines() if line.strip() and not line.startswith('time="')]
    bad = [line for line in lines if not line.startswith("{")]
    assert not bad, f"{len(bad)} of {len(lines)} log lines are not JSON: {bad[:5]}"
    return [json.loads(line) for line in lines]


def test_image_runs_as_non_root_with_a_healthcheck(image):
    import json

    cfg = json.loads(podman("image", "inspect", image).stdout)[0]
    assert cfg["Config"]["User"] == f"{GATEWAY_UID}:{GATEWAY_UID}"
    assert cfg["Config"]["StopSignal"] == "SIGTERM"
    assert "/var/lib/valvoja" in cfg["Config"]["Volumes"]
    assert "VALVOJA_HEALTH_URL" in cfg["Healthcheck"]["Test"][-1]


def test_console_runs_from_the_same_image(image, containers, tmp_path, pg_dsn):
    """The compose `console` service: same image, `console serve`, read-only root, healthy on /login."""

    port = free_port()
    config = tmp_path / "console.toml"
    config.write_text(f'[console]\nlisten = "127.0.0.1:{port}"\n\n[database]\nurl = "{db_url(pg_dsn)}"\n')
    name = containers.run(f"valvoja-console-{new_run()}", "--network", "host", "--read-only",
                          "-v", f"{config}:/etc/valvoja/console.toml:ro",
                          "-e", f"VALVOJA_HEALTH_URL=http://127.0.0.1:{port}/login",
                          image, *_compose_service("console")["command"])
    containers.wait_healthy(name)
    podman("stop", "-t", "15", name, timeout=60)
    assert containers.state(name)["ExitCode"] == 0, containers.logs(name)[-3000:]
    # The stack's console logs as its gateway does: one JSON object per line, uvicorn's lines too (they were text).
    events = _json_lines(containers.logs(name))
    assert any(e["logger"].startswith("uvicorn") for e in events), events


def test_console_waiting_for_its_database_stops_on_sigterm(image, containers, tmp_path):
    """`podman stop` of the console while it waits for an unreachable database (compose starts it before the
    database under podman-compose; a database restarting): as PID 1 a SIGTERM without a handler of the process's
    own is dropped by the kernel, so the stop waited out its timeout and killed it (exit 137). Under tini it is no
    PID 1 and ends as the default action says (143)."""
    port = free_port()
    config = tmp_path / "console.toml"
    # Nothing listens on the database port: the console waits for it (console_db_waiting) before it serves.
    config.write_text(f'[console]\nlisten = "127.0.0.1:{free_port()}"\n\n'
                      f'[database]\nurl = "postgresql://valvoja@127.0.0.1:{port}/valvoja"\n')
    name = containers.run(f"valvoja-consolewait-{new_run()}", "--network", "host", "--read-only",
                          "-v", f"{config}:/etc/valvoja/console.toml:ro",
                          image, "console", "serve", "--config", "/etc/valvoja/console.toml")
    wait_for(lambda: "console_db_waiting" in containers.logs(name), 60, what="the console waiting for its database")
    podman("stop", "-t", "60", name, timeout=120)
    # 143: ended by its SIGTERM (as the default action would elsewhere), not 137: killed at the stop timeout.
    assert containers.state(name)["ExitCode"] == 143, containers.logs(name)[-3000:]


def test_health_check_fails_while_the_spool_is_full_and_recovers(image, containers, tmp_path, pg_dsn, mosquitto):
    """The image's HEALTHCHECK with the database away until the spool (reject_new) is full: unhealthy while new
    readings are refused (it said healthy throughout); after a reload onto a reachable database (`podman kill -s
    HUP`, as docs/operations.md applies a configuration) the spool drains, it is healthy again and every reading
    the broker took is stored once."""
    run = new_run()
    http_port = free_port()
    text = site_config(pg_dsn, mosquitto.port, run=run, state_dir="/var/lib/valvoja")
    text = text.replace("{HTTP_PORT}", str(http_port))
    text += "\n[spool]\nmax_bytes = 1000000\nfull_policy = \"reject_new\"\n"
    config = tmp_path / "gateway.toml"
    good_url = f'url = "{db_url(pg_dsn)}"'
    assert good_url in text
    config.write_text(text.replace(good_url, f'url = "postgresql://valvoja@127.0.0.1:{free_port()}/valvoja"'))
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, GATEWAY_UID, GATEWAY_UID)
    name = _run_gateway(containers, f"valvoja-full-{run}", image, config, state, http_port, mosquitto.ca_path, {})
    containers.wait_healthy(name)

    pub = Publisher(mosquitto.port, run)
    try:
        pub.publish(30_000)  # ~45 bytes each in the spool: well past its 1 MB budget
    finally:
        pub.close()
    wait_for(lambda: podman("healthcheck", "run", name, check=False).returncode != 0, 60,
             what="the health check failing while the spool is full")
    health = _health(http_port)
    assert health["spool"]["full"] and "spool" in health["problems"], health

    config.write_text(text)  # the reachable database
    podman("kill", "-s", "HUP", name)
    containers.wait_healthy(name, timeout_s=120)
    wait_for(lambda: stored(pg_dsn, "P-1.") == 30_000, 120, what="all 30,000 readings stored")
    assert _health(http_port)["problems"] == {}


def _health(port: int) -> dict:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 503: the same JSON
        return json.loads(exc.read())
