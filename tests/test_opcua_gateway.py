"""End to end: the simulator's OPC UA server (a process) -> `valvoja run` (a process) -> PostgreSQL.

Covers what the unit-level collector tests cannot: the gateway's own reconnect loop around
`collectors.opcua`, status codes stored as quality/status columns, and a server restart.
"""

from __future__ import annotations

from gateway_proc import GatewayProcess
from opcua_support import SimProcess, free_port
from ops_support import db_url, rows, wait_for

SIM_ARGS = ("--interval", "0.2", "--fault", "P-103.vib_de:sensor_failure@2")
TAGS = ["P-101.vib_de", "P-101.bearing_temp", "P-103.vib_de", "K1.NOx", "K1.state", "P-102.running"]

SITE = """\
[site]
name = "opcua-e2e"
gateway_id = "gw-opcua"
state_dir = "var"

[database]
url = "@DB_URL@"
flush_interval_s = 0.2
connect_timeout_s = 3

[http]
listen = "127.0.0.1:{HTTP_PORT}"

[logging]
level = "INFO"
format = "text"

[[collectors]]
kind = "opcua"
name = "sim"
endpoint = "@ENDPOINT@"
publishing_interval_ms = 200.0
connect_timeout_s = 3.0
watchdog_interval_s = 0.5
nodes = [@NODES@]
"""


def per_tag(dsn: str) -> dict[str, int]:
    return dict(rows(dsn, "SELECT t.name, count(*) FROM readings r JOIN tags t ON t.id = r.tag_id GROUP BY t.name"))


def test_simulator_to_database_through_the_gateway_with_a_server_restart(tmp_path, pg_dsn):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/valvoja/sim"
    nodes = ", ".join(f'{{ node_id = "ns=2;s={t}", tag = "{t}" }}' for t in TAGS)
    config = SITE.replace("@DB_URL@", db_url(pg_dsn)).replace("@ENDPOINT@", endpoint).replace("@NODES@", nodes)
    sim = SimProcess(endpoint, tmp_path, *SIM_ARGS).start()
    gw = GatewayProcess(tmp_path / "gw", config).start()
    try:
        wait_for(lambda: gw.health().get("collectors", {}).get("sim", {}).get("connected"), what="collector up")
        wait_for(lambda: set(per_tag(pg_dsn)) == set(TAGS), timeout_s=60, what="every tag stored")

        def bad() -> list[tuple]:
            return rows(pg_dsn, "SELECT r.value, r.quality, r.status, r.flags FROM readings r JOIN tags t "
                                "ON t.id = r.tag_id WHERE t.name = 'P-103.vib_de' AND r.quality = 2")

        wait_for(lambda: bad(), timeout_s=30, what="the failed sensor's bad reading")
        value, _, status, flags = bad()[0]
        assert value is None and status == 0x808C0000 and flags & 32  # Flag.SOURCE_STATUS
        assert rows(pg_dsn, "SELECT count(*) FROM readings r JOIN tags t ON t.id = r.tag_id "
                            "WHERE t.name = 'P-101.vib_de' AND r.quality <> 0")[0][0] == 0

        sim.stop()
        wait_for(lambda: not gw.health()["collectors"]["sim"]["connected"], timeout_s=30, what="loss noticed")
        before = per_tag(pg_dsn)["P-101.vib_de"]
        sim = SimProcess(endpoint, tmp_path, *SIM_ARGS).start()
        wait_for(lambda: per_tag(pg_dsn)["P-101.vib_de"] > before + 5, timeout_s=60, what="collection resumed")
        assert gw.health()["collectors"]["sim"]["connected"]
        assert "valvoja_collector_reconnects_total" in gw.metrics()
        # Source timestamps are unique per tag (the primary key): nothing was stored twice.
        dup = rows(pg_dsn, "SELECT count(*) - count(DISTINCT (tag_id, time)) FROM readings")[0][0]
        assert dup == 0
        assert gw.terminate() == 0
    finally:
        gw.kill()
        sim.stop()
