"""OPC UA collector configuration and DataValue conversion (no network)."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asyncua import ua
from pydantic import ValidationError

from collectors.base import CollectorContext
from collectors.opcua import Config, NodeConfig, build
from collectors.opcua.convert import overflowed, quality_of, status_name, to_reading
from edge.errors import ConfigError
from edge.metrics import Metrics
from edge.records import Flag, Quality

SAMPLE = Path(__file__).resolve().parents[1] / "collectors" / "opcua" / "sample.toml"
NODES = [{"node_id": "ns=2;s=P-101.vib_de", "tag": "P-101.vib_de"}]


def make(**kw) -> Config:
    return Config.model_validate({"endpoint": "opc.tcp://127.0.0.1:4840", "nodes": NODES, **kw})


def errors(**kw) -> str:
    with pytest.raises(ValidationError) as exc:
        make(**kw)
    return str(exc.value)


def test_sample_config_validates_and_documents_the_real_defaults():
    data = tomllib.loads(SAMPLE.read_text())
    for entry in data["collectors"]:
        body = {k: v for k, v in entry.items() if k not in ("kind", "name")}
        Config.model_validate(body)
    # Every commented "# key = value" line must show the code's default (style notes: Telegraf's drift).
    section, checked = Config, 0
    for line in SAMPLE.read_text().splitlines():
        if line.startswith("[[collectors.nodes]]"):
            section = NodeConfig
        m = re.match(r"#\s*(\w+)\s*=\s*(\S+)", line)
        if not m or m.group(1) not in section.model_fields:
            continue
        default = section.model_fields[m.group(1)].default
        if default is None:
            continue  # an example value for an optional key
        assert tomllib.loads(f"v = {m.group(2)}")["v"] == default, line
        checked += 1
    assert checked >= 12


def test_literal_password_is_refused_and_references_resolve(tmp_path, monkeypatch):
    assert "never put a secret in the config file" in errors(username="u", password="hunter2")
    assert "go together" in errors(username="u")
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    ctx = CollectorContext(name="c", state_dir=tmp_path, metrics=Metrics())
    assert build(make(username="u", password=f"file:{secret}"), ctx).opener.secrets.password == "s3cret"
    monkeypatch.setenv("OPCUA_PW", "from-env")
    assert build(make(username="u", password="env:OPCUA_PW"), ctx).opener.secrets.password == "from-env"
    monkeypatch.delenv("OPCUA_PW")
    with pytest.raises(ConfigError, match="OPCUA_PW is not set"):
        build(make(username="u", password="env:OPCUA_PW"), ctx)


def test_each_mistake_has_its_own_message():
    assert "opc.tcp://" in errors(endpoint="http://x")
    # Accepted before, then retried for ever at run time: port 0 ("Connect call failed ('plc1', 0)"), a ValueError.
    assert "no port: write opc.tcp://plc1:4840" in errors(endpoint="opc.tcp://plc1")
    assert "no port: write opc.tcp://plc1:4840/ua" in errors(endpoint="opc.tcp://plc1/ua")
    assert "port 70000 is not 1-65535" in errors(endpoint="opc.tcp://plc1:70000")
    assert "no host" in errors(endpoint="opc.tcp://:4840/x")
    assert "no host" in errors(endpoint="opc.tcp://plc 1:4840")
    for good in ("opc.tcp://plc1:4840", "opc.tcp://10.0.2.15:4840/path", "opc.tcp://[fe80::1]:4840"):
        make(endpoint=good)
    assert "not an OPC UA node id" in errors(nodes=[{"node_id": "ns=x;q=1", "tag": "a"}])
    # asyncua drops svr= (the node was looked for on this server) and keeps ns= beside nsu=
    assert "svr= names another server" in errors(nodes=[{"node_id": "svr=1;ns=2;s=x", "tag": "a"}])
    assert "no ns= beside it" in errors(nodes=[{"node_id": "nsu=urn:plant;ns=3;s=x", "tag": "a"}])
    assert "give a URI" in errors(nodes=[{"node_id": "nsu=;s=x", "tag": "a"}])
    make(nodes=[{"node_id": "nsu=urn:plant;s=P-101;svr=1", "tag": "a"}])  # svr= inside a string identifier
    one = {"node_id": "ns=2;i=1", "tag": "a"}
    assert "duplicate tag a" in errors(nodes=[one, {"node_id": "ns=2;i=2", "tag": "a"}])
    assert "duplicate node_id ns=2;i=1" in errors(nodes=[one, {"node_id": "ns=2;i=1", "tag": "b"}])
    assert "Extra inputs" in errors(timeout=3)
    assert "security_policy" in errors(security_policy="Basic256Sha256")
    assert "greater than 0" in errors(connect_timeout_s=0)
    assert "at least 1 item" in errors(nodes=[])


def dv(value, code=0, source=None, server=None) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value), ua.StatusCode(code), source, server)


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC)
NOW = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)


def test_status_codes_become_quality_with_their_names():
    assert quality_of(0) is Quality.GOOD
    assert quality_of(0x40930000) is Quality.UNCERTAIN
    assert quality_of(0x808C0000) is Quality.BAD
    assert quality_of(0xC0000000) is Quality.BAD  # reserved severity counts as bad
    assert status_name(0x808C0000) == "BadSensorFailure"
    assert status_name(0x808C0000 | 0x0400) == "BadSensorFailure"  # info bits (limit, overflow) ignored
    assert status_name(0x80FE0000).startswith("Bad_0x")

    r = to_reading("t", ua.DataValue(ua.Variant(None, ua.VariantType.Null), ua.StatusCode(0x808C0000), T0, T1), NOW)
    assert (r.quality, r.status, r.status_name, r.value) == (Quality.BAD, 0x808C0000, "BadSensorFailure", None)
    assert r.flags & Flag.SOURCE_STATUS
    r = to_reading("t", dv(4.5, 0x40930000, T0, T1), NOW)
    assert (r.quality, r.value, r.status_name) == (Quality.UNCERTAIN, 4.5, "UncertainSensorNotAccurate")
    r = to_reading("t", dv(7, 0, T0, T1), NOW)
    assert (r.quality, r.flags, r.status, r.status_name, r.value) == (Quality.GOOD, 0, 0, "", 7)


def test_a_bad_value_is_never_turned_into_text():
    r = to_reading("t", dv(3.25, 0x80000000, T0), NOW)
    assert r.value == 3.25 and r.quality is Quality.BAD


def test_timestamps_source_then_server_then_receive_time():
    r = to_reading("t", dv(1.0, 0, T0, T1), NOW)
    assert (r.time, r.server_time, r.receive_time) == (T0, T1, NOW)
    r = to_reading("t", dv(1.0, 0, None, T1), NOW)
    assert r.time == T1 and not r.flags & Flag.NO_SOURCE_TIME
    r = to_reading("t", dv(1.0, 0, None, None), NOW)
    assert r.time == NOW and r.flags & Flag.NO_SOURCE_TIME and r.server_time is None
    # OPC UA's "no timestamp" (0) decodes as 1601-01-01: treated as absent.
    r = to_reading("t", dv(1.0, 0, datetime(1601, 1, 1, tzinfo=UTC), T1), NOW)
    assert r.time == T1
    # So is the encoding's other end (Part 6 §5.2.2.5: MaxInt64, decoded as 9999-12-31 23:59:59), which devices send
    # for "unknown" (.NET's DateTime.MaxValue): as a time every value of the tag had the same (tag, time) key and
    # the database kept only the first.
    r = to_reading("t", dv(1.0, 0, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), T1), NOW)
    assert r.time == T1 and not r.flags & Flag.NO_SOURCE_TIME
    r = to_reading("t", dv(1.0, 0, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), None), NOW)
    assert r.time == NOW and r.flags & Flag.NO_SOURCE_TIME


def test_value_types():
    assert to_reading("t", dv(True), NOW).value is True
    assert to_reading("t", dv("running"), NOW).value == "running"
    assert to_reading("t", dv(ua.LocalizedText("auto")), NOW).value == "auto"
    assert to_reading("t", ua.DataValue(ua.Variant(2**40, ua.VariantType.Int64)), NOW).value == 2**40
    assert to_reading("t", dv(T0), NOW).value == T0.isoformat()
    r = to_reading("t", dv([1.0, 2.0]), NOW)  # arrays are not readings yet
    assert r.value is None and r.quality is Quality.BAD and r.flags & Flag.TYPE_MISMATCH


def test_the_overflow_bit_counts_only_with_info_type_data_value():
    assert overflowed(0x00000480) and overflowed(0x408F0480) and overflowed(0x808C0480)
    assert not overflowed(0x00000080)  # bit 7 without InfoType DataValue means nothing
    assert not overflowed(0x00000400) and not overflowed(0)
    r = to_reading("t", dv(2.5, 0x00000480, T0), NOW)
    assert (r.quality, r.status, r.value) == (Quality.GOOD, 0x0480, 2.5)


def test_redundant_endpoints_are_checked_and_a_single_endpoint_reads_as_before():
    from collectors.opcua.session_state import config_key

    pair = ["opc.tcp://dcs-a:4840", "opc.tcp://dcs-b:4840/ua"]
    cfg = Config.model_validate({"endpoints": pair, "nodes": NODES})
    assert cfg.endpoint == pair[0] and [c.endpoint for c in cfg.servers()] == pair
    # Each server keeps every other setting; its session is keyed by its own URL.
    assert [config_key(c)["endpoint"] for c in cfg.servers()] == pair
    assert config_key(cfg.servers()[1])["nodes"] == config_key(cfg.servers()[0])["nodes"]

    def refused(**kw) -> str:
        with pytest.raises(ValidationError) as exc:
            Config.model_validate({"nodes": NODES, **kw})
        return str(exc.value)

    assert "no port: write opc.tcp://dcs-b:4840" in refused(endpoints=[pair[0], "opc.tcp://dcs-b"])
    assert "[1]: opc.tcp://DCS-A:4840/ is the same server as [0]" in refused(endpoints=[pair[0], "opc.tcp://DCS-A:4840/"])
    assert "no servers" in refused(endpoints=[])
    assert "not both" in refused(endpoint="opc.tcp://dcs-c:4840", endpoints=pair)
    assert "give endpoint (one server" in refused()
    assert "contains a password" in refused(endpoints=["opc.tcp://u:pw@dcs-a:4840"])
    # A file with endpoint only: the same model (no servers besides itself) and the same session key as before.
    one = make()
    assert one.endpoints is None and one.servers() == [one]
    assert config_key(one)["endpoint"] == "opc.tcp://127.0.0.1:4840"
    assert Config.model_validate(one.model_dump()) == one
    assert Config.model_validate(cfg.model_dump()) == cfg  # the filled-in endpoint round-trips
