"""Configuration: each kind of mistake gives its own clear message naming file and key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge import settings
from edge.errors import ConfigError

GOOD = """
[site]
name = "t"
gateway_id = "gw-t"

[database]
url = "postgresql://valvoja@127.0.0.1:5432/valvoja"
password = "env:VALVOJA_TEST_PW"

[[assets]]
name = "P-101"

[[tags]]
name = "P-101.vib"
asset = "P-101"
unit = "mm/s"
range = [0, 50]
[tags.calibration]
certificate = "KAL-1"
date = 2026-01-13
uncertainty = 0.1
"""


MQTT = '[[collectors]]\nkind = "mqtt"\nname = "mq"\nclient_id = "gw"\n{}\n[[collectors.subscriptions]]\ntopic = "a/#"\n'


def problems(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "site.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        settings.load(p)
    assert all(line.startswith(str(p)) for line in err.value.problems), "every problem names the file"
    return err.value.problems


def test_good_config_loads(tmp_path):
    p = tmp_path / "site.toml"
    p.write_text(GOOD)
    cfg = settings.load(p)
    assert cfg.tags[0].calibration.certificate == "KAL-1"
    assert cfg.site.state_dir == tmp_path / "var"  # relative to the file


@pytest.mark.parametrize("change, expected", [
    ('[site]\ngateway_id = "has space"', "site.gateway_id: String should match pattern"),
    ('[database]\nurl = "postgresql://u:pw@h/db"', "database.url: contains a password"),
    ('[database]\nurl = "postgresql://u@h/db?sslmode=require&password=pw"', "database.url: contains a password"),
    ('[http]\nlisten = "127.0.0.1:70000"', "http.listen: port 70000 is not a TCP port"),
    ('[database]\npassword = "hunter2"', "database.password: must be a reference"),
    ('[database]\nbatchrows = 5', "database.batchrows: unknown key"),
    ('[database]\nbatch_rows = -1', "database.batch_rows: Input should be greater than or equal to 1"),
    ('[database]\nalerts_retention_days = 30', "database.alerts_retention_days: must be 0 (keep them all) or at "
                                                "least 92 days, got 30"),
    ('[database]\nalerts_retention_days = -1', "database.alerts_retention_days: Input should be greater than or equal"),
    ('[database]\nalerts_retention_days = "5y"', "database.alerts_retention_days: Input should be a valid integer"),
    ('[database]\nretention_days = 90\nrollups_1m_retention_days = 30',
     "database.rollups_1m_retention_days: must be at least database.retention_days (90): 1-minute rollups are what "
     "is left of the raw readings that retention removes, got 30"),
    ('[database]\nrollups_1m_retention_days = 400', "database.rollups_1m_retention_days: 400 days would remove "
                                                      "1-minute rollups of raw readings kept for good"),
    ('[database]\nretention_days = 90\nrollups_1m_retention_days = 0',
     "database.rollups_1m_retention_days: Input should be greater than 0"),
    ('[spool]\nfull_policy = "explode"', "spool.full_policy: Input should be 'reject_new' or 'drop_oldest'"),
    ('[[tags]]\nname = "x"\nrange = [5, 1]', "tags[0] (x).range: must be [low, high] with low < high"),
    ('[[tags]]\nname = "x"\nrange = [0.0, inf]', "tags[0] (x).range: both limits must be finite numbers (no inf or "
                                                "nan: for a side without a limit give one far beyond any real value), "
                                                "got [0.0, inf]"),
    ('[[tags]]\nunit = "C"', "tags[0].name: is required"),
    ('[[collectors]]\nkind = "modbus"', "collectors[0] (modbus-0).kind: must be one of"),
    # What one reading and one message may weigh: a whole number of bytes, never a quoted or boolean one.
    ('[validation]\nmax_text_bytes = "64k"', "validation.max_text_bytes: Input should be a valid integer"),
    ('[validation]\nmax_text_bytes = "4096"', "validation.max_text_bytes: Input should be a valid integer"),
    ('[validation]\nmax_text_bytes = true', "validation.max_text_bytes: Input should be a valid integer"),
    ('[validation]\nmax_text_bytes = 4096.0', "validation.max_text_bytes: Input should be a valid integer"),
    ('[validation]\nmax_text_bytes = 0', "validation.max_text_bytes: Input should be greater than or equal to 1"),
    ('[validation]\nmax_text_bytes = -1', "validation.max_text_bytes: Input should be greater than or equal to 1"),
    ('[validation]\nmax_text_bytes = 16777217', "validation.max_text_bytes: Input should be less than or equal to "
                                                 "16777216"),
    ('[validation]\nmax_tag_bytes = "512"', "validation.max_tag_bytes: Input should be a valid integer"),
    ('[validation]\nmax_tag_bytes = 0', "validation.max_tag_bytes: Input should be greater than or equal to 1"),
    ('[validation]\nmax_tag_bytes = 2049', "validation.max_tag_bytes: must be at most 2048: a longer tag name does "
                                           "not fit the database's index of tag names (2,704 bytes an entry), got "
                                           "2049"),
    # A tag name written in the file over max_tag_bytes: every reading of it would be a dead letter at run time.
    ('[[tags]]\nname = "' + "T" * 513 + '"',
     "tags[0].name: the name is 513 bytes (UTF-8), over validation.max_tag_bytes (512): its readings would all be "
     "dead letters; shorten it or raise the limit"),
    ('[validation]\nmax_tag_bytes = 2048\n[[tags]]\nname = "' + "ä" * 1025 + '"',
     "tags[0].name: the name is 2050 bytes (UTF-8), over validation.max_tag_bytes (2048): its readings would all be "
     "dead letters; shorten it"),
    ('[validation]\nmax_tag_bytes = 20\n[[collectors]]\nkind = "opcua"\nname = "ua"\n'
     'endpoint = "opc.tcp://127.0.0.1:4840"\n[[collectors.nodes]]\nnode_id = "ns=2;s=A"\ntag = "short"\n'
     '[[collectors.nodes]]\nnode_id = "ns=2;s=B"\ntag = "a-much-longer-tag-name"',
     "collector ua: nodes[1].tag: the name is 22 bytes (UTF-8), over validation.max_tag_bytes (20)"),
    (MQTT.format("max_payload_bytes = true"), "collectors[0] (mq).max_payload_bytes: Input should be a valid integer"),
    (MQTT.format('max_payload_bytes = "16M"'), "collectors[0] (mq).max_payload_bytes: Input should be a valid "
                                               "integer"),
    (MQTT.format('max_payload_bytes = "65536"'), "collectors[0] (mq).max_payload_bytes: Input should be a valid "
                                                 "integer"),
    (MQTT.format("max_payload_bytes = 0"), "collectors[0] (mq).max_payload_bytes: Input should be greater than or "
                                           "equal to 1024"),
    (MQTT.format("max_payload_bytes = -1"), "collectors[0] (mq).max_payload_bytes: Input should be greater than or "
                                            "equal to 1024"),
    (MQTT.format("max_payload_bytes = 268435456"), "collectors[0] (mq).max_payload_bytes: Input should be less than "
                                                   "or equal to 268435455"),
])
def test_each_mistake_has_its_own_message(tmp_path, change, expected):
    found = problems(tmp_path, change)
    assert any(expected in line for line in found), found


def test_rollups_1m_retention_is_kept_for_good_unless_set_at_least_as_long_as_the_raw_one(tmp_path):
    p = tmp_path / "site.toml"
    p.write_text(GOOD)
    assert settings.load(p).database.rollups_1m_retention_days is None
    p.write_text(GOOD.replace("[database]\n", "[database]\nretention_days = 90\nrollups_1m_retention_days = 90\n"))
    assert settings.load(p).database.rollups_1m_retention_days == 90


def test_all_problems_reported_at_once(tmp_path):
    found = problems(tmp_path, '[site]\ngateway_id = "a b"\n[database]\npassword = "x"\nbogus = 1\n')
    assert len(found) == 3


def test_toml_syntax_error_names_line(tmp_path):
    found = problems(tmp_path, "[site\nname = 1\n")
    assert "not valid TOML" in found[0] and "line 1" in found[0]


def test_unknown_asset_reference(tmp_path):
    found = problems(tmp_path, '[[assets]]\nname = "A"\n[[tags]]\nname = "t"\nasset = "B"\n')
    assert any("asset 'B' is not in [[assets]]" in line for line in found)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration"):
        settings.load(tmp_path / "nope.toml")


def test_check_config_command_exit_codes(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.toml"
    bad.write_text('[spool]\nmax_bytes = 1\n[http]\nlisten = "nowhere"\n')
    env = {**os.environ, "VALVOJA_TEST_PW": "pw"}
    ok = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", str(good)], capture_output=True, text=True,
                        env=env)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    # Secret references are resolved as `run` would (the unit's ExecStartPre relies on it) ...
    env.pop("VALVOJA_TEST_PW")
    unset = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", str(good)], capture_output=True,
                           text=True, env=env)
    assert unset.returncode == 1 and unset.stderr.startswith(f"{good}: database.password:"), unset.stderr
    assert "VALVOJA_TEST_PW" in unset.stderr
    # ... unless asked not to (a machine without the secrets)
    skip = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", "--skip-secrets", str(good)],
                          capture_output=True, text=True, env=env)
    assert skip.returncode == 0, skip.stderr
    ko = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", str(bad)], capture_output=True, text=True)
    assert ko.returncode == 1
    assert "spool.max_bytes" in ko.stderr and "http.listen" in ko.stderr and "2 problem(s)" in ko.stderr
    assert "has no effect" not in ok.stdout and "is not read" not in ok.stdout  # no unused-key notes


def test_keys_that_change_nothing_are_named(tmp_path):
    """`spool.group_commit_ms` and a `[models]` table are accepted (older files stay valid) but not acted on:
    check-config says so (still OK), and the gateway logs it at start (event config_key_unused)."""
    p = tmp_path / "site.toml"
    p.write_text(GOOD + '\n[spool]\ngroup_commit_ms = 5.0\n\n[models]\nregistry = "models"\n')
    notes = settings.load(p).unused_keys()
    assert [n.split(":")[0] for n in notes] == ["spool.group_commit_ms", "models"]
    out = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", "--skip-secrets", str(p)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"{p}: note: spool.group_commit_ms: has no effect" in out.stdout
    assert f"{p}: note: models: this table is not read" in out.stdout
    p.write_text(GOOD + '\n[spool]\nqueue_batches = 8\n')
    assert settings.load(p).unused_keys() == []



def test_a_frozen_window_on_a_tag_an_opcua_subscription_reads_is_named(tmp_path):
    """An OPC UA subscription reports a value when it changes (DataChangeTrigger StatusValue: measured, 11 writes of
    the same value with new source times gave 1 notification), so a stuck sensor sends nothing and its
    ``frozen_after_s`` never flagged anything, with no word of it. check-config and the start (config_key_unused)
    say so; a polled node and a tag from MQTT are not named."""
    opcua = ('\n[[collectors]]\nkind = "opcua"\nname = "plc"\nendpoint = "opc.tcp://127.0.0.1:4840"\n'
             '[[collectors.nodes]]\nnode_id = "ns=2;s=vib"\ntag = "P-101.vib"\n'
             '[[collectors.nodes]]\nnode_id = "ns=2;s=temp"\ntag = "P-101.temp"\nmode = "poll"\n')
    tags = "".join(f'\n[[tags]]\nname = "{n}"\nfrozen_after_s = 600\n' for n in ("P-101.temp", "P-101.flow"))
    p = tmp_path / "site.toml"
    p.write_text(GOOD.replace("range = [0, 50]", "range = [0, 50]\nfrozen_after_s = 600") + tags + opcua)
    out = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", "--skip-secrets", str(p)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stdout.splitlines() if "frozen_after_s" in line]
    assert notes == [f"{p}: note: tags[0] (P-101.vib): frozen_after_s never flags a tag that OPC UA collector 'plc' "
                     "reads through its subscription, which sends a value only when it changes: a stuck one sends "
                     "nothing (the maintenance 'no data' sensor alert comes after no_data_after_s instead). Poll the "
                     'node (mode = "poll": a repeated value is read again when the server gives it a new source time) '
                     "or remove the key"], out.stdout


def test_collector_problems_name_the_entry_once(tmp_path):
    """A rule across a collector's keys names the entry, not "(top level)"; an unset secret of a collector names its
    setting once (it read "collectors (plant): collectors (plant).password")."""
    entry = ('[[collectors]]\nkind = "mqtt"\nname = "plant"\nhost = "127.0.0.1"\nusername = "u"\n'
             'password = "env:VALVOJA_TEST_UNSET_PW"\n[[collectors.subscriptions]]\ntopic = "a/#"\ntag = "{field}"\n')
    found = problems(tmp_path, entry)
    assert any(line.endswith("collectors[0] (plant): client_id is required for a persistent session "
                             "(clean_session = false): the broker keeps queued messages under that id")
               for line in found), found
    path = tmp_path / "secret.toml"
    path.write_text(entry.replace('username = "u"', 'client_id = "c"\nusername = "u"'))
    env = {k: v for k, v in os.environ.items() if k != "VALVOJA_TEST_UNSET_PW"}
    out = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", str(path)], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 1
    assert f"{path}: collectors (plant).password: environment variable VALVOJA_TEST_UNSET_PW is not set" in out.stderr
    assert out.stderr.count("collectors (plant)") == 1, out.stderr


def test_relative_paths_and_file_secrets_are_taken_from_the_config_files_folder(tmp_path, monkeypatch):
    """state_dir and spool.path were taken from the configuration file's folder, but a relative ``file:`` secret,
    an MQTT CA file, an OPC UA pki_dir / certificate / private key, a RUL model_dir and a PEMS registry were taken
    from the working directory: a gateway started by systemd or docker in another folder failed on them, or read
    another file of the same name."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from certs import CertificateAuthority

    from edge.gateway import database_conninfo
    from edge.service import preflight

    site = tmp_path / "etc"
    (site / "secrets").mkdir(parents=True)
    (site / "secrets" / "db").write_text("db-secret\n")
    (site / "secrets" / "mqtt").write_text("mqtt-secret\n")
    for f in (site / "secrets").iterdir():
        f.chmod(0o600)
    ca = CertificateAuthority(site / "certs")
    client = ca.issue("opc", client=True)
    (site / "models" / "rul").mkdir(parents=True)
    (site / "models" / "rul" / "model.onnx").write_bytes(b"x")
    (site / "models" / "rul" / "card.json").write_text("{}")
    (site / "site.toml").write_text(f"""
[site]
state_dir = "var"

[database]
url = "postgresql://valvoja@127.0.0.1:5432/valvoja"
password = "file:secrets/db"

[[collectors]]
kind = "mqtt"
name = "plant"
username = "gw"
client_id = "gw-1"
password = "file:secrets/mqtt"
tls = {{ ca_file = "certs/{ca.cert_path.name}" }}
[[collectors.subscriptions]]
topic = "plant/#"

[[collectors]]
kind = "opcua"
name = "line"
endpoint = "opc.tcp://127.0.0.1:4840"
pki_dir = "pki"
security_policy = "Basic256Sha256"
security_mode = "Sign"
certificate = "certs/{client.cert.name}"
private_key = "certs/{client.key.name}"
[[collectors.nodes]]
node_id = "ns=2;s=X"
tag = "X"

[[maintenance.assets]]
name = "ENG-1"
[maintenance.assets.rul]
model_dir = "models/rul"
sensors = ["ENG-1.s1"]
cycle_s = 60.0
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # where systemd or docker start the process
    cfg = settings.load(Path("..") / "etc" / "site.toml")  # a relative path to the file itself, too
    assert cfg.site.state_dir == site / "var" and cfg.spool_path == site / "var" / "spool.db"
    assert "password=db-secret" in database_conninfo(cfg)
    preflight(cfg)  # reads the MQTT secret and CA file, the OPC UA private key
    by_name = {name: c for _, name, c in cfg.collector_configs}
    assert by_name["plant"].password == f"file:{site / 'secrets' / 'mqtt'}"
    assert by_name["plant"].tls.ca_file == str(ca.cert_path)
    line = by_name["line"]
    assert (line.pki_dir, line.certificate, line.private_key) == (str(site / "pki"), str(client.cert),
                                                                  str(client.key))
    assert cfg.maintenance["assets"][0]["rul"]["model_dir"] == str(site / "models" / "rul")


def test_a_relative_pems_registry_and_its_default_are_taken_from_the_config_files_folder(tmp_path, monkeypatch):
    from emissions.config import StackConfig

    sample = (Path(__file__).parents[1] / "emissions" / "sample.toml").read_text()
    (tmp_path / "site.toml").write_text(sample)
    monkeypatch.chdir("/")
    cfg = settings.load(tmp_path / "site.toml")
    links = [p.pems for s in cfg.stacks for p in StackConfig.model_validate(s).pollutants if p.pems is not None]
    assert links, "emissions/sample.toml has a pems link"
    for link in links:
        assert Path(link.registry).is_absolute() and Path(link.registry).is_relative_to(tmp_path), link.registry


STACK = ('\n[[stacks]]\nname = "K1"\nregime = "lcp"\ntimezone = "Europe/Helsinki"\n{late}pollutants = '
         '[{{ name = "NOx", tag = "K1.NOx", elv = {{ month = 200.0 }} }}]\n')


def test_raw_retention_shorter_than_the_emissions_year_is_refused_where_stacks_are_computed(tmp_path):
    """The emissions job's hourly year run recomputes each stack's year from raw readings (from 1 January in its
    time zone; at New Year the whole year before) and stores what it computes over the averages stored. With
    `retention_days = 90`, from April on it replaced every stored average of January with "no value (invalid)"
    each hour (measured on a real database: 48 half-hours, 24 hours and the day of 10 February went from valid
    300 mg/Nm3 to invalid once their raw readings were removed). Refused, naming the file, the key and the days."""
    with_retention = GOOD.replace("[database]\n", "[database]\nretention_days = {days}\n") + STACK
    found = problems(tmp_path, with_retention.format(days=90, late=""))
    assert any("database.retention_days: 90 days" in line and "at least 398" in line and "[[stacks]]" in line
               for line in found), found
    # The margin after the year's end is the stacks' late_data_days (the year before is recomputed that long).
    found = problems(tmp_path, with_retention.format(days=398, late="late_data_days = 60\n"))
    assert any("at least 427" in line for line in found), found
    p = tmp_path / "site.toml"
    p.write_text(with_retention.format(days=398, late=""))
    assert settings.load(p).database.retention_days == 398
    p.write_text(GOOD.replace("[database]\n", "[database]\nretention_days = 30\n"))  # no stacks: any retention
    assert settings.load(p).database.retention_days == 30
