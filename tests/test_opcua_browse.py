"""``valvoja opcua browse`` against the plant simulator's OPC UA server (a real asyncua server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from datetime import UTC, datetime

from asyncua import ua
from opcua_support import ROOT, SimProcess, free_port, server_certificate, serving

from collectors.opcua.browse import browse, table, toml_section
from collectors.opcua.config import Config, Connection
from collectors.opcua.connection import ClientOpener
from collectors.simulator.tags import synthetic_tags
from edge import settings


def valvoja(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", "opcua", "browse", *args], cwd=ROOT, timeout=timeout,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


async def browsed(endpoint: str, root: str) -> list:
    """The variables `browse` finds under ``root`` of the server at ``endpoint`` (no security)."""
    client = ClientOpener(Connection(endpoint=endpoint), name="browse").new_client()
    await client.connect()
    try:
        variables, _ = await browse(client, root)
    finally:
        await client.disconnect()
    return variables


def test_browse_prints_types_units_ranges_access_and_writes_a_valid_tag_section(tmp_path):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    sim = SimProcess(endpoint, tmp_path).start()
    try:
        out = tmp_path / "tags.toml"
        res = valvoja(endpoint, "--toml", str(out), "--name", "plant", "--pki-dir", str(tmp_path / "pki"))
        assert res.returncode == 0, res.stderr
        line = next(ln for ln in res.stdout.splitlines() if ln.startswith("ns=2;s=P-101.vib_de "))
        assert "P-101.vib_de" in line and "Double" in line and "mm/s" in line and "read" in line
        assert "0 .. 50" in line or "0 .. " in line
        assert "Server" not in res.stdout  # the standard Server object is skipped by default

        # The written section is a valid site configuration: tags and a collector reading them.
        site = tmp_path / "site.toml"
        site.write_text(out.read_text())
        cfg = settings.load(site)
        tags = {t.name: t for t in cfg.tags}
        assert tags["P-101.vib_de"].unit == "mm/s" and tags["P-101.vib_de"].kind == "float"
        assert tags["P-101.vib_de"].range is not None and tags["P-101.vib_de"].asset == "P-101"
        data = tomllib.loads(out.read_text())
        body = {k: v for k, v in data["collectors"][0].items() if k not in ("kind", "name")}
        col = Config.model_validate(body)
        assert {n.tag for n in col.nodes} == set(tags)
        # By namespace URI: the index 2 is the server's numbering of this start (collectors/opcua/README.md).
        assert {n.node_id for n in col.nodes} == {f"nsu=urn:valvoja:simulator;s={t}" for t in tags}

        res = valvoja(endpoint, "--json", "--root", "ns=2;s=K1", "--pki-dir", str(tmp_path / "pki"))
        assert res.returncode == 0, res.stderr
        listed = json.loads(res.stdout)
        # The same folder by its namespace URI (it was sent as written: "the server has no such node")
        res = valvoja(endpoint, "--json", "--root", "nsu=urn:valvoja:simulator;s=K1", "--pki-dir",
                      str(tmp_path / "pki"))
        assert res.returncode == 0 and json.loads(res.stdout) == listed, res.stderr
        assert listed and all(v["node_id"].startswith("ns=2;s=K1.") for v in listed)
        assert all(v["path"][0] == "K1" and v["tag"] == v["node_id"][len("ns=2;s="):] for v in listed)
        # A --root that is a variable lists that variable (it listed nothing: a variable has no variables below).
        res = valvoja(endpoint, "--json", "--root", listed[0]["node_id"], "--pki-dir", str(tmp_path / "pki"))
        assert res.returncode == 0, res.stderr
        assert [(v["node_id"], v["unit"]) for v in json.loads(res.stdout)] == [(listed[0]["node_id"],
                                                                                 listed[0]["unit"])]
    finally:
        sim.stop()


def test_browse_refuses_an_untrusted_server_and_names_the_certificate(tmp_path):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    cert, key = server_certificate(tmp_path / "server", "srv")
    pki = tmp_path / "pki"
    # The secure server runs in this process; the CLI in a child process (asyncio subprocess, so the
    # server keeps serving while the CLI runs). After the refusal the operator moves the certificate.
    import asyncio

    async def scenario() -> tuple[int, str]:
        async with serving(synthetic_tags(3), endpoint, certificate=cert, private_key=key,
                           policies=["Basic256Sha256_SignAndEncrypt"]):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge.cli", "opcua", "browse", endpoint, "--security-policy", "Basic256Sha256",
                "--security-mode", "SignAndEncrypt", "--pki-dir", str(pki), cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            first = (proc.returncode, err.decode())
            shutil.move(next((pki / "rejected").iterdir()), pki / "trusted")
            conn = Connection(endpoint=endpoint, security_policy="Basic256Sha256", security_mode="SignAndEncrypt",
                              pki_dir=str(pki))
            opener = ClientOpener(conn, name="browse")
            client = opener.new_client()
            await opener.connect(client)
            try:
                variables, truncated = await browse(client)
            finally:
                await client.disconnect()
            assert not truncated and {v.tag for v in variables} >= {"SYN-00.SYN.00001"}
            return first

    code, err = asyncio.run(scenario())
    assert code == 1 and "is not trusted: refused" in err and str(pki / "trusted") in err


def test_toml_section_comments_out_arrays_and_unreadable_variables():
    from collectors.opcua.browse import Variable

    vs = [Variable("ns=2;i=1", ["Line", "Speed"], "Double", -1, ["read"], "m/s", (0.0, 5.0)),
          Variable("ns=2;i=2", ["Line", "Profile"], "Float", 1, ["read"]),
          Variable("ns=2;i=3", ["Line", "Secret"], "Int32", -1, [])]
    text = toml_section(vs, endpoint="opc.tcp://h:4840", name="x")
    data = tomllib.loads(text)
    assert [t["name"] for t in data["tags"]] == ["Line.Speed"]
    assert [n["node_id"] for n in data["collectors"][0]["nodes"]] == ["ns=2;i=1"]
    assert "# Line.Profile: Float[]" in text and "# Line.Secret: Int32, access none" in text
    assert ua.NodeId.from_string(data["collectors"][0]["nodes"][0]["node_id"])


def test_written_node_ids_name_the_namespace_by_its_uri_where_they_can():
    from collectors.opcua.browse import Variable

    def written(node_id: str, uri: str | None) -> str:
        text = toml_section([Variable(node_id, ["L", "x"], "Double", -1, ["read"], namespace_uri=uri)],
                            endpoint="opc.tcp://h:4840", name="x")
        return tomllib.loads(text)["collectors"][0]["nodes"][0]["node_id"]

    assert written("ns=3;i=7", "urn:plant") == "nsu=urn:plant;i=7"
    assert written("ns=2;g=09087e75-8e5e-499b-954f-f2a9603db28a", "urn:p") == \
        "nsu=urn:p;g=09087e75-8e5e-499b-954f-f2a9603db28a"
    assert written("i=2258", "http://opcfoundation.org/UA/") == "i=2258"  # namespace 0 is fixed by the standard
    assert written("ns=3;i=7", "urn:a;b") == "ns=3;i=7"  # a ';' would end the URI early
    assert written("ns=3;i=7", None) == "ns=3;i=7"  # not in the server's NamespaceArray


def test_browse_checks_an_encrypted_key_before_connecting(tmp_path):
    from cryptography.hazmat.primitives import serialization

    from collectors.opcua.security import make_certificate, new_key

    key = new_key()
    cert = make_certificate(key, "urn:plant:browse", "browse", client=True)
    (tmp_path / "c.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.BestAvailableEncryption(b"right")))
    common = ["opc.tcp://127.0.0.1:9/none", "--security-policy", "Basic256Sha256", "--security-mode", "Sign",
              "--pki-dir", str(tmp_path / "pki"), "--certificate", str(tmp_path / "c.der"),
              "--private-key", str(tmp_path / "k.pem")]
    r = valvoja(*common)
    assert r.returncode == 2 and "--private-key" in r.stderr and "is encrypted" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "edge.cli", "opcua", "browse", *common, "--private-key-password",
                        "env:BROWSE_KEY_PW"], cwd=ROOT, timeout=60, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "BROWSE_KEY_PW": "wrong"})
    assert r.returncode == 2 and "wrong password" in r.stderr and "wrong\n" not in r.stderr, r.stderr


def test_browse_gives_derived_and_enumerated_types_the_kind_of_their_base_type():
    """A variable's DataType is often a subtype: Duration (Double), Counter (UInt32), UtcTime (DateTime), a standard
    or a server's own enumeration (values arrive as Int32). The tag's kind must be the base type's, else every
    reading the collector stores for it is flagged TYPE_MISMATCH and Bad by validation."""
    import asyncio

    from asyncua.common.structures104 import new_enum

    from collectors.opcua.browse import Variable
    from edge.validate import _type_ok

    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"

    async def scenario() -> dict[str, Variable]:
        async with serving(synthetic_tags(1), endpoint) as sim:
            ns = sim.ns
            folder = await sim.server.nodes.objects.add_folder(ua.NodeId("Types", ns), "Types")
            mode = await new_enum(sim.server, ns, "PumpMode", ["Off", "Auto", "Manual"])
            specs = {
                "Duration": (ua.Variant(1.5, ua.VariantType.Double), ua.NodeId(ua.ObjectIds.Duration)),
                "Counter": (ua.Variant(7, ua.VariantType.UInt32), ua.NodeId(ua.ObjectIds.Counter)),
                "UtcTime": (ua.Variant(datetime(2026, 5, 1, tzinfo=UTC), ua.VariantType.DateTime),
                            ua.NodeId(ua.ObjectIds.UtcTime)),
                "State": (ua.Variant(0, ua.VariantType.Int32), ua.NodeId(ua.ObjectIds.ServerState)),
                "Mode": (ua.Variant(1, ua.VariantType.Int32), mode.nodeid),
                "Plain": (ua.Variant(2.0, ua.VariantType.Double), ua.NodeId(ua.ObjectIds.Double)),
            }
            for name, (value, dtype) in specs.items():
                await folder.add_variable(ua.NodeId(f"Types.{name}", ns), name, value, datatype=dtype)
            variables = await browsed(endpoint, f"ns={ns};s=Types")
            return {v.path[-1]: v for v in variables}

    got = asyncio.run(scenario())
    assert {n: (v.data_type, v.kind) for n, v in got.items()} == {
        "Duration": ("Duration", "float"), "Counter": ("Counter", "int"), "UtcTime": ("UtcTime", "string"),
        "State": ("ServerState", "int"), "Mode": ("PumpMode", "int"), "Plain": ("Double", "float")}
    # What the collector delivers for them passes validation with that kind.
    assert _type_ok(got["Mode"].kind, 1) and _type_ok(got["Duration"].kind, 1.5)


def test_browse_names_a_root_the_server_does_not_have_and_refuses_a_malformed_one(tmp_path):
    """A mistyped --root listed "0 variables" with exit 0 (read as an empty server); a malformed one was asyncua's
    UaStringParsingError traceback."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    sim = SimProcess(endpoint, tmp_path).start()
    try:
        res = valvoja(endpoint, "--root", "ns=2;s=P-999", "--pki-dir", str(tmp_path / "pki"))
        assert res.returncode == 1 and "--root ns=2;s=P-999: the server has no such node" in res.stderr, res
        assert "Traceback" not in res.stderr
    finally:
        sim.stop()
    res = valvoja(endpoint, "--root", "P-101")  # refused before connecting
    assert res.returncode == 2 and "argument --root: 'P-101' is not a node id" in res.stderr, res
    res = valvoja(endpoint, "--depth", "0")
    assert res.returncode == 2 and "argument --depth" in res.stderr, res


def test_browse_writes_a_section_a_server_cannot_add_settings_to():
    """What the server says goes into the written TOML: browse names, descriptions, units, its data types' names. A
    description over two lines (common) made a file TOML cannot read; a data type's name with a line break went
    into a comment as it was, so the server could write configuration lines (here a collector of its own, or a
    webhook that would get every alert) into the file an engineer pastes into the site configuration."""
    import asyncio

    from asyncua.common.structures104 import new_enum

    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    injected = 'Mode\x1b[8m\n[[collectors]]\nkind = "mqtt"\nname = "evil"\nhost = "203.0.113.9"\n#'

    async def scenario() -> str:
        async with serving(synthetic_tags(1), endpoint) as sim:
            ns = sim.ns
            folder = await sim.server.nodes.objects.add_folder(ua.NodeId("Odd", ns), "Odd")
            mode = await new_enum(sim.server, ns, injected, ["Off", "Auto"])
            var = await folder.add_variable(ua.NodeId("Odd.Mode", ns), "Mode", ua.Variant(1, ua.VariantType.Int32),
                                            datatype=mode.nodeid)
            await var.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(
                ua.LocalizedText("Pump mode.\r\nSet by the PLC; \x07 \u2028 see \"manual\" \\ p. 4"),
                ua.VariantType.LocalizedText)))
            variables = await browsed(endpoint, f"ns={ns};s=Odd")
            return toml_section(variables, endpoint=endpoint, name="plant"), table(variables)

    text, listing = asyncio.run(scenario())
    data = tomllib.loads(text)
    assert [c["name"] for c in data["collectors"]] == ["plant"], text
    assert data["tags"][0]["description"] == "Pump mode.\r\nSet by the PLC; \x07 \u2028 see \"manual\" \\ p. 4"
    assert [n["tag"] for n in data["collectors"][0]["nodes"]] == ["Odd.Mode"]
    # The table printed for a terminal has one line per variable and no control character from the server.
    assert len(listing.splitlines()) == 2 and not any(c < " " for c in listing.replace("\n", "")), listing
