"""The compose stack's files, checked offline: the Compose Specification (check-jsonschema), the stack's
structure (restart policies, named volumes, file secrets, documented ports), the broker configuration and the
certificates + password file from docker/make_certs.py on a real mosquitto, the dependency lock, the systemd unit."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from servers import free_port, mosquitto_bin, port_open, wait_until

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")


def _compose() -> dict:
    yaml = pytest.importorskip("ruamel.yaml", reason="ruamel.yaml comes with check-jsonschema (dev dependency)")
    return yaml.YAML(typ="safe").load(COMPOSE.read_text())


def _validate(path: Path) -> subprocess.CompletedProcess:
    if not CHECK_JSONSCHEMA.exists():
        pytest.skip("check-jsonschema not installed (pip install -e '.[dev]')")
    return subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_compose_file_is_valid_against_the_compose_specification(tmp_path):
    res = _validate(COMPOSE)
    assert res.returncode == 0, res.stdout + res.stderr
    # The validator really checks (offline, its vendored schema): a wrong type is reported.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period: 15s", "stop_grace_period: [15s]"))
    res = _validate(broken)
    assert res.returncode != 0 and "stop_grace_period" in res.stdout + res.stderr


def test_compose_stack_has_the_services_volumes_secrets_and_policies():
    c = _compose()
    services = c["services"]
    assert set(services) == {"timescaledb", "certs", "mosquitto", "gateway", "console", "simulator"}
    assert services["timescaledb"]["image"].startswith("docker.io/timescale/timescaledb:2.")
    assert services["simulator"]["profiles"] == ["simulator"]
    for name, svc in services.items():
        assert svc.get("restart") == ("no" if name == "certs" else "unless-stopped"), name
        assert svc["logging"]["options"]["max-size"], f"{name}: log disk budget"
    gw = services["gateway"]
    assert gw["read_only"] is True and "/tmp" in gw["tmpfs"]
    assert set(gw["secrets"]) == {"db_password", "mqtt_password"}
    assert "spool:/var/lib/valvoja" in gw["volumes"] and "certs:/etc/valvoja/certs:ro" in gw["volumes"]
    assert gw["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    assert int(gw["stop_grace_period"].rstrip("s")) > 10, "longer than the gateway's own stop deadline"
    # The OPC UA certificate's default application URI holds the host name: a container's is its id, new at every
    # recreate (an upgrade), and every OPC UA server would then refuse the gateway's newly made certificate.
    assert gw.get("hostname"), "gateway: a fixed hostname (urn:valvoja:<host>:<collector>)"
    assert set(c["volumes"]) == {"db-data", "spool", "certs", "mqtt-data"}
    for name, secret in c["secrets"].items():
        assert secret["file"] == f"./secrets/{name}"
    # Every published port is documented in the file's header.
    header = COMPOSE.read_text().split("\nname:", 1)[0]
    for name, svc in services.items():
        for mapping in svc.get("ports", []):
            host_port = str(mapping).rsplit(":", 1)[0].split(":")[-1]
            assert re.search(rf"\b{host_port}\b", header), f"{name}: port {host_port} not documented"


def test_stack_config_files_parse():
    gw = tomllib.loads((DOCKER / "gateway.toml").read_text())
    assert gw["site"]["state_dir"] == "/var/lib/valvoja"
    assert gw["database"]["password"] == "file:/run/secrets/db_password"
    assert gw["collectors"][0]["tls"]["ca_file"] == "/etc/valvoja/certs/ca.crt"
    from console.config import parse

    parse(tomllib.loads((DOCKER / "console.toml").read_text()), source="docker/console.toml")


def test_requirements_lock_pins_what_pyproject_pins():
    lock = dict(line.split("==") for line in (DOCKER / "requirements.lock").read_text().splitlines()
                if line and not line.startswith("#"))
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name, version = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", dep).groups()
        key = name.lower().replace("_", "-")
        assert lock.get(key) == version, f"{name}: pyproject {version}, lock {lock.get(key)}; " \
                                         f"run .venv/bin/python docker/localbuild.py lock"


def _make_certs(out: Path, *args: str) -> str:
    res = subprocess.run([sys.executable, str(DOCKER / "make_certs.py"), "--out", str(out), "--owner", "", *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_make_certs_keeps_what_is_valid_and_rotates_on_request(tmp_path):
    from cryptography import x509

    assert "CA created; broker certificate issued" in _make_certs(tmp_path)
    first = x509.load_pem_x509_certificate((tmp_path / "mosquitto.crt").read_bytes())
    assert "CA kept; broker certificate kept" in _make_certs(tmp_path)
    assert "CA kept; broker certificate issued" in _make_certs(tmp_path, "--rotate")
    second = x509.load_pem_x509_certificate((tmp_path / "mosquitto.crt").read_bytes())
    assert second.serial_number != first.serial_number
    assert (tmp_path / "mosquitto.key").stat().st_mode & 0o077 == 0, "the key is private"


@pytest.fixture
def stack_broker(tmp_path):
    """Debian's mosquitto with docker/mosquitto/mosquitto.conf (paths and ports moved into tmp_path)."""
    binary = mosquitto_bin()
    if binary is None:
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    certs = tmp_path / "certs"
    secret = tmp_path / "mqtt_password"
    secret.write_text("s3cret-Pw\n")
    _make_certs(certs, "--mqtt-password-file", str(secret))
    (tmp_path / "data").mkdir()
    ports = {8883: free_port(), 1883: free_port(), 1880: free_port()}
    conf = (DOCKER / "mosquitto/mosquitto.conf").read_text()
    conf = conf.replace("/mosquitto/certs/", f"{certs}/").replace("/mosquitto/data/", f"{tmp_path}/data/")
    conf = conf.replace("/mosquitto/config/", f"{DOCKER}/mosquitto/")
    for old, new in ports.items():
        conf = re.sub(rf"^listener {old}\b", f"listener {new}", conf, flags=re.M)
    conf = re.sub(r"^listener (\d+)$", r"listener \1 127.0.0.1", conf, flags=re.M)
    conf += "\nuser root\n"  # the image's mosquitto user owns its files there; here the test's dirs are root's
    path = tmp_path / "mosquitto.conf"
    path.write_text(conf)
    proc = subprocess.Popen([str(binary), "-c", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: all(port_open(p) for p in ports.values()), 15, "stack mosquitto")
        yield ports, certs, proc
    finally:
        proc.terminate()
        proc.wait(10)


def _connect(port: int, *, ca: Path | None = None, user: str | None = None, pw: str | None = None) -> int:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if ca:
        client.tls_set(ca_certs=str(ca))
    if user:
        client.username_pw_set(user, pw)
    result = {}
    client.on_connect = lambda c, u, f, rc, p: result.setdefault("rc", rc.value)
    client.connect("localhost" if ca else "127.0.0.1", port, 10)
    client.loop_start()
    try:
        wait_until(lambda: "rc" in result, 10, "CONNACK")
    finally:
        client.loop_stop()
        client.disconnect()
    return result["rc"]


def test_stack_broker_config_with_generated_certs_and_password_file(stack_broker):
    ports, certs, _ = stack_broker
    tls = ports[8883]
    assert _connect(tls, ca=certs / "ca.crt", user="valvoja", pw="s3cret-Pw") == 0
    assert _connect(tls, ca=certs / "ca.crt", user="valvoja", pw="wrong") != 0
    assert _connect(tls, ca=certs / "ca.crt") != 0, "no anonymous access on the TLS listener"
    assert _connect(ports[1883], user="valvoja", pw="s3cret-Pw") == 0
    assert _connect(ports[1883]) != 0, "no anonymous access on the internal listener"
    # The compose health check command works on the health listener.
    test = _compose()["services"]["mosquitto"]["healthcheck"]["test"][1:]
    test = [a.replace("$$", "$") for a in test]
    test[test.index("-p") + 1] = str(ports[1880])
    sub = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
    if not Path(sub).exists():
        pytest.skip("mosquitto_sub not installed (mosquitto-clients)")
    res = subprocess.run([sub, *test[1:]], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr


def test_stack_broker_refuses_a_message_over_the_gateways_payload_limit_and_keeps_a_session_whole(stack_broker):
    """Without a broker limit a message of up to 256 MB reached the gateway whole before max_payload_bytes refused
    it. The stack's broker refuses one over the gateway's default at once, acknowledged: the publisher stays
    connected and goes on (with ``max_queued_messages 0`` mosquitto 2.0.11-2.0.21 disconnected it instead). An
    absent subscriber's persistent session still keeps more than mosquitto's default 1,000 messages."""
    import paho.mqtt.client as mqtt

    from collectors.mqtt.config import Config

    ports, _, _ = stack_broker
    [limit] = map(int, re.findall(r"^message_size_limit (\d+)$", (DOCKER / "mosquitto/mosquitto.conf").read_text(),
                                  re.M))
    assert limit == Config.model_fields["max_payload_bytes"].default
    got: list[int] = []
    dropped: list[str] = []  # connections the broker ended (paho connects again by itself)

    def client(name: str, **kw) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, **kw)
        c.username_pw_set("valvoja", "s3cret-Pw")
        c.on_message = lambda c, u, m: got.append(len(m.payload))
        c.on_disconnect = lambda c, u, f, rc, p: dropped.append(name) if rc != 0 else None
        c.connect("127.0.0.1", ports[1883], 30)
        c.loop_start()
        return c

    def close(c: mqtt.Client) -> None:
        c.disconnect()
        c.loop_stop()

    sub = client("size-sub", clean_session=False)
    sub.subscribe("size/#", qos=1)
    time.sleep(0.5)
    pub = client("size-pub")
    try:
        for n in (limit, limit + 1, 10):
            info = pub.publish("size/t", b"x" * n, qos=1)
            info.wait_for_publish(60)
            assert info.is_published(), n
        wait_until(lambda: 10 in got, 30, "the message after the refused one")
        assert got == [limit, 10], "the one over the limit is not delivered"
        assert not dropped, f"the broker disconnected {dropped}"
        close(sub)
        got.clear()
        for _ in range(1500):
            pub.publish("size/t", b"q", qos=1)
        pub.publish("size/t", b"last", qos=1).wait_for_publish(60)
        sub = client("size-sub", clean_session=False)
        wait_until(lambda: 4 in got, 30, "the queued messages")
        assert len(got) == 1501, "the session kept every message while its subscriber was away"
    finally:
        close(pub)
        close(sub)


@pytest.mark.parametrize("name", ["valvoja-gateway.service", "valvoja-console.service"])
def test_systemd_unit_verifies(tmp_path, name):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    unit = (DOCKER / "systemd" / name).read_text()
    # verify checks that the executables exist: point them at this checkout's venv.
    unit = unit.replace("/opt/valvoja/bin/valvoja", str(Path(sys.executable).with_name("valvoja")))
    path = tmp_path / name
    path.write_text(unit)
    res = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (res.stdout + res.stderr).splitlines() if str(path) in line]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr
    if name == "valvoja-gateway.service":
        assert "Type=notify" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit and "WatchdogSec=" in unit


def test_console_unit_runs_the_documented_console_command(tmp_path):
    """The console unit's ExecStart is a command line the CLI takes (a wrong sub-command or option would only show
    on a plant's first start), and the one path it writes is the cache directory the unit gives it."""
    unit = (DOCKER / "systemd/valvoja-console.service").read_text()
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    argv = line.removeprefix("ExecStart=").split()
    assert argv[:3] == ["/opt/valvoja/bin/valvoja", "console", "serve"] and "--config" in argv
    exe = str(Path(sys.executable).with_name("valvoja"))
    res = subprocess.run([exe, *argv[1:], "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--config" in res.stdout, res.stdout + res.stderr
    assert "CacheDirectory=valvoja-console" in unit and "/var/cache/valvoja-console/model-reports" in unit
    assert "file:/run/credentials/valvoja-console.service/db_password" in unit
    assert "LoadCredential=db_password:" in unit
