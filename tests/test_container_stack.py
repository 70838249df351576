"""The whole compose stack, as a site's first `docker compose up` runs it: docker/compose.yaml with podman-compose.

A copy of docker/ gets its secrets from init-secrets.sh; the stack comes up with the simulator profile under a
project name of its own. The only override is what this machine forces: every published port moves to a free
port of the test on 127.0.0.1. Images: ours from docker/localbuild.py; TimescaleDB and mosquitto are the local
stand-ins of docker/standins/ (no registry here), tagged with the compose file's names. Proven end to end:
simulator -> mosquitto (password listener) -> gateway (TLS + password) -> TimescaleDB holds every simulator tag;
the console logs in the admin user made as docs/operations.md says and shows the readings and the gateway; the
broker's log reaches the container log; `podman-compose stop gateway` / `start gateway` loses no second of any tag.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
import urllib.request
from datetime import timedelta
from http.cookiejar import CookieJar

import psycopg
import pytest
from container_support import ComposeProject, Containers, localbuild, podman_compose, project_image
from ops_support import new_run, wait_for
from servers import free_port

pytestmark = [pytest.mark.timeout(900), pytest.mark.xdist_group("podman")]

ROOT = localbuild.ROOT
# Services whose compose healthcheck (or the image's) must pass; certs is a one-shot, the simulator has none.
HEALTHY = ("timescaledb", "mosquitto", "gateway", "console")


def _services() -> dict[str, dict]:
    yaml = pytest.importorskip("ruamel.yaml", reason="ruamel.yaml comes with check-jsonschema (dev dependency)")
    return yaml.YAML(typ="safe").load(localbuild.COMPOSE_FILE.read_text())["services"]


def _published_ports() -> dict[str, list[int]]:
    """Each service's published container ports (host:container or ip:host:container)."""
    return {name: [int(str(p).rsplit(":", 1)[1]) for p in svc.get("ports", [])] for name, svc in _services().items()}


def _docs_user_add() -> list[str]:
    """The first console user's command of docs/operations.md (Install, with containers), after `docker compose`."""
    text = (ROOT / "docs/operations.md").read_text()
    m = re.search(r"^docker compose (run --rm console console user add [^\n]*\\\n[^\n#]*)", text, re.M)
    assert m, "docs/operations.md no longer shows how to add the stack's first console user"
    return shlex.split(m.group(1).replace("\\\n", " "))


def _simulator_tags() -> set[str]:
    from collectors.simulator.plant import PlantConfig
    from collectors.simulator.tags import catalogue

    cfg = PlantConfig()
    return {t.name for t in catalogue(list(cfg.pumps), cfg.stack, cfg.site)}


def _standins() -> None:
    localbuild.build_standins(log=lambda msg: print(f"[localbuild] {msg}"))


class _Console:
    """A browser-like client of the console: session cookie, JSON."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def request(self, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, headers={"Content-Type": "application/json"})
        with self.opener.open(req, timeout=10) as r:
            return json.loads(r.read())


def test_compose_stack_runs_whole_from_a_first_up(tmp_path):
    exe = podman_compose()
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - t0 - sum(timings.values()), 1)

    project_image(_services()["gateway"]["image"])
    _standins()
    lap("images")

    # The site's folder: docker/ as in git, secrets from init-secrets.sh.
    docker = tmp_path / "docker"
    shutil.copytree(ROOT / "docker", docker, ignore=shutil.ignore_patterns(
        "db_password", "mqtt_password", "console_admin_password", "standins", "systemd", "__pycache__"))
    out = subprocess.run(["./init-secrets.sh"], cwd=docker, capture_output=True, text=True, check=True)
    assert out.stdout.count("created secrets/") == 3, out.stdout
    secret = {n: (docker / "secrets" / n).read_text().strip() for n in
              ("db_password", "mqtt_password", "console_admin_password")}

    # What this machine forces: published ports on free ports of the test's own, loopback only.
    ports = {name: {target: free_port() for target in targets} for name, targets in _published_ports().items()}
    override = tmp_path / "ports.override.yaml"
    override.write_text("services:\n" + "".join(
        f"  {name}:\n    ports: !override {json.dumps([f'127.0.0.1:{p}:{t}' for t, p in m.items()])}\n"
        for name, m in ports.items() if m))
    stack = ComposeProject(exe, f"valvoja-stack-{new_run()}", docker, [docker / "compose.yaml", override],
                           ["simulator"])
    containers = Containers()  # only its health polling: the project removes its containers itself
    db_port, http_port = ports["timescaledb"][5432], ports["gateway"][9108]
    try:
        stack.run("up", "-d", "--no-build")
        names = stack.containers()
        assert set(names) == {"timescaledb", "certs", "mosquitto", "gateway", "console", "simulator"}, names
        # No systemd here to schedule health checks, and podman-compose does not wait for service_healthy
        # before podman 4.6: the test runs each check itself.
        for service in HEALTHY:
            containers.wait_healthy(names[service], timeout_s=120)
        certs = containers.state(names["certs"])
        assert not certs["Running"] and certs["ExitCode"] == 0, containers.logs(names["certs"])
        lap("up_healthy")

        dsn = f"host=127.0.0.1 port={db_port} dbname=valvoja user=valvoja password={secret['db_password']}"
        want = _simulator_tags()

        def stored_tags() -> set[str]:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                try:
                    rows = conn.execute("SELECT name FROM tags t WHERE EXISTS "
                                        "(SELECT 1 FROM readings r WHERE r.tag_id = t.id)").fetchall()
                except psycopg.errors.UndefinedTable:
                    return set()
            return {r[0] for r in rows}

        wait_for(lambda: want <= stored_tags(), 60, what=f"readings of all {len(want)} simulator tags")
        lap("readings")

        # The broker's own log reaches the container log (`docker compose logs mosquitto`), connections included.
        wait_for(lambda: "as valvoja-gw-1" in stack.run("logs", "mosquitto").stdout, 15,
                 what="the gateway's connection in mosquitto's log")

        # The console: the admin user as the docs make it, log-in, the readings and the gateway's health.
        res = stack.run(*_docs_user_add())
        assert "user admin (admin) created" in res.stdout + res.stderr, res.stdout + res.stderr
        console = _Console(ports["console"][8080])
        me = console.request("/api/auth/login", {"username": "admin", "password": secret["console_admin_password"]})
        assert me["role"] == "admin"
        assert want <= {t["name"] for t in console.request("/api/tags?limit=1000")["items"]}
        latest = console.request("/api/tags/P-101.vib_de/latest")["reading"]
        assert latest["value"] is not None and latest["time"]
        [gw] = console.request("/api/gateways")["items"]
        assert gw["name"] == "gw-1" and gw["reachable"] and gw["healthy"], gw
        lap("console")

        # Stop and start the gateway: the broker keeps its session meanwhile, the spool is flushed at stop.
        stack.run("stop", "gateway")
        gateway = containers.state(names["gateway"])
        assert gateway["ExitCode"] == 0 and "0 readings left in the spool" in containers.logs(names["gateway"])
        count_sql = "SELECT count(*), max(time) FROM readings WHERE time <= %s"
        with psycopg.connect(dsn, autocommit=True) as conn:
            [stopped_at] = conn.execute("SELECT max(time) FROM readings").fetchone()
            before = conn.execute(count_sql, (stopped_at,)).fetchone()
        time.sleep(5)  # the simulator publishes on: five seconds the gateway must get from its session
        stack.run("start", "gateway")
        containers.wait_healthy(names["gateway"], timeout_s=120)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as r:
            mqtt = json.loads(r.read())["collectors"]["plant-mqtt"]
        assert mqtt["session_present"] is True, mqtt

        def caught_up() -> bool:
            with psycopg.connect(dsn, autocommit=True) as conn:
                newest = conn.execute("SELECT max(time) FROM readings").fetchone()[0]
            return newest > stopped_at + timedelta(seconds=10)

        wait_for(caught_up, 60, what="readings from after the gateway's restart")
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute(count_sql, (stopped_at,)).fetchone() == before, "readings before the stop changed"
            # Every tag the simulator sends each second has one reading per second from its first to its last:
            # nothing lost while the gateway was away, nothing stored twice.
            rows = conn.execute("""
                SELECT t.name, count(*), count(DISTINCT r.time), min(r.time), max(r.time)
                FROM readings r JOIN tags t ON t.id = r.tag_id GROUP BY t.name""").fetchall()
        per_second = {name: (n, distinct, first, last) for name, n, distinct, first, last in rows
                      if not name.endswith((".zero", ".span"))}  # QAL3 checks: every 6 h, once at start
        assert set(per_second) == want - {n for n in want if n.endswith((".zero", ".span"))}
        for name, (n, distinct, first, last) in per_second.items():
            assert n == distinct == (last - first).total_seconds() + 1, (name, n, distinct, first, last)
            assert last > stopped_at + timedelta(seconds=10), name
        lap("stop_start")
    except BaseException:
        for service, name in stack.containers().items():
            print(f"--- {service} ({name}) log:\n{containers.logs(name)[-3000:]}")
        raise
    finally:
        stack.down()
        lap("down")
        print(f"[stack] timings (s): {timings}, total {time.monotonic() - t0:.1f}")
    assert stack.containers() == {}
    assert not localbuild.podman("volume", "ls", "-q", "--filter",
                                 f"label=io.podman.compose.project={stack.project}").stdout.strip()


def test_database_health_check_fails_while_the_server_takes_no_tcp_connections():
    """On a fresh volume the image's entrypoint first runs a server on the Unix socket only (initdb, creating the
    database and extension) and restarts it; the gateway and console connect over TCP. `pg_isready` without a host
    asks the socket and said healthy then, so `service_healthy` let them start into refused connections (the
    console exits). The compose health check must fail in that state (the stack test sees it pass after)."""
    podman_compose()
    _standins()
    svc = _services()["timescaledb"]
    test = [a for a in svc["healthcheck"]["test"] if a != "CMD"]
    containers = Containers()
    try:
        name = containers.run(f"valvoja-pgcheck-{new_run()}", "--network", "none", "-e", "POSTGRES_USER=valvoja",
                              "-e", "POSTGRES_DB=valvoja", "-e", "POSTGRES_PASSWORD=x", svc["image"],
                              "postgres", "-c", "listen_addresses=")
        socket_only = ["pg_isready", "-U", "valvoja", "-d", "valvoja"]
        wait_for(lambda: localbuild.podman("exec", name, *socket_only, check=False).returncode == 0, 60,
                 what="the socket-only server up (as during the entrypoint's initialisation)")
        res = localbuild.podman("exec", name, *test, check=False)
        assert res.returncode != 0, f"healthy without TCP: {res.stdout}{res.stderr}"
    finally:
        containers.cleanup()
