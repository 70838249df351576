"""edge/tls.py: the TLS settings shared by the MQTT collector and the alert notifier, read at start-up."""

import ssl

import pytest
from certs import CertificateAuthority
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from edge.errors import ConfigError
from edge.tls import Tls, tls_context


def _encrypted(key_path, password: bytes):
    """``key_path`` rewritten encrypted with ``password`` (PKCS#8, as ``openssl pkcs8 -topk8`` writes)."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(password)))
    return key_path


def test_a_context_verifies_the_server_checks_its_name_and_speaks_tls_1_2_or_later(tmp_path):
    ca = CertificateAuthority(tmp_path)
    ctx = tls_context(Tls(ca_file=str(ca.cert_path)))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    insecure = tls_context(Tls(ca_file=str(ca.cert_path), insecure=True))
    assert insecure.verify_mode == ssl.CERT_REQUIRED and not insecure.check_hostname  # the chain still is
    assert tls_context(None) is None


def test_an_encrypted_client_key_is_opened_with_its_password_reference(tmp_path, monkeypatch):
    """The key's password is a secret reference; without it (or a wrong one) the start says which key to set, and
    never asks on the terminal (OpenSSL's default for an encrypted key: check-config run by hand waited there)."""
    ca = CertificateAuthority(tmp_path)
    client = ca.issue("gw1", client=True)
    _encrypted(client.key, b"s3cret-pass")
    monkeypatch.setenv("GW1_KEY_PW", "s3cret-pass")
    files = {"ca_file": str(ca.cert_path), "cert_file": str(client.cert), "key_file": str(client.key)}
    assert tls_context(Tls(**files, key_password="env:GW1_KEY_PW"), "maintenance.notify.mqtt.tls") is not None

    with pytest.raises(ConfigError) as err:
        tls_context(Tls(**files), "maintenance.notify.mqtt.tls")
    (problem,) = err.value.problems
    assert problem.startswith("maintenance.notify.mqtt.tls.cert_file / maintenance.notify.mqtt.tls.key_file: cannot "
                              "load the client certificate and key")
    assert "an encrypted key needs maintenance.notify.mqtt.tls.key_password" in problem

    monkeypatch.setenv("GW1_KEY_PW", "wrong")
    with pytest.raises(ConfigError, match=r"wrong tls.key_password\?"):
        tls_context(Tls(**files, key_password="env:GW1_KEY_PW"))
    monkeypatch.delenv("GW1_KEY_PW")
    with pytest.raises(ConfigError) as err:
        tls_context(Tls(**files, key_password="env:GW1_KEY_PW"))
    assert err.value.problems == ["tls.key_password: environment variable GW1_KEY_PW is not set"]


def test_every_file_that_cannot_be_read_is_named_by_its_key(tmp_path):
    ca = CertificateAuthority(tmp_path)
    client = ca.issue("gw1", client=True)
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(ConfigError) as err:
        tls_context(Tls(ca_file=str(tmp_path / "a-folder"), cert_file=str(client.cert),
                        key_file=str(tmp_path / "gone.key")), "x.tls")
    assert err.value.problems == [f"x.tls.ca_file: cannot read {tmp_path / 'a-folder'}: Is a directory",
                                  f"x.tls.key_file: no such file {tmp_path / 'gone.key'}"]
    (tmp_path / "garbage.pem").write_text("not a certificate")
    with pytest.raises(ConfigError) as err:
        tls_context(Tls(ca_file=str(tmp_path / "garbage.pem"), cert_file=str(ca.cert_path),
                        key_file=str(client.key)), "x.tls")
    ca_problem, cert_problem = err.value.problems
    assert ca_problem.startswith(f"x.tls.ca_file: cannot load the CA certificates of {tmp_path / 'garbage.pem'}")
    # The CA's certificate with the client's key: they do not belong together.
    assert cert_problem.startswith("x.tls.cert_file / x.tls.key_file: cannot load the client certificate and key")


def test_a_key_password_is_a_reference_and_needs_a_key():
    with pytest.raises(ValidationError, match="never put a secret in the config file"):
        Tls(cert_file="/c.pem", key_file="/k.pem", key_password="hunter2")
    with pytest.raises(ValidationError, match="key_password without key_file"):
        Tls(key_password="env:X")


def test_a_password_sent_to_a_broker_off_this_host_without_tls_is_said_at_start(tmp_path, caplog, monkeypatch):
    """An MQTT password goes in the CONNECT packet: without TLS anyone on the plant network between the gateway
    and the broker reads it. OPC UA said so for its password on security_policy None; MQTT (the collector and the
    alert notifier) said nothing. Said once when each is built (start-up, reload); not for a broker on this host,
    nor without a password, nor with TLS."""
    import logging

    from collectors.base import CollectorContext
    from collectors.mqtt import Config, build
    from edge.metrics import Metrics
    from maintenance.notify_mqtt import MqttNotifier, MqttNotifyConfig

    subs = [{"topic": "p/#"}]
    monkeypatch.setenv("MQTT_PASSWORD", "pw")

    def collector(host: str, **kw) -> None:
        cfg = Config.model_validate({"host": host, "client_id": "c", "subscriptions": subs, **kw})
        build(cfg, CollectorContext(name="plant", state_dir=tmp_path, metrics=Metrics()))

    caplog.set_level(logging.WARNING)
    collector("192.0.2.10", username="gw", password="env:MQTT_PASSWORD")
    MqttNotifier(MqttNotifyConfig(host="broker.example", username="gw", password="env:X"), password="pw")
    said = [r for r in caplog.records if getattr(r, "event", None) == "mqtt_password_in_clear"]
    assert [r.getMessage().split(":")[0] for r in said] == ["collector plant", "maintenance.notify.mqtt"]
    assert "192.0.2.10:1883" in said[0].getMessage() and "TLS" in said[0].getMessage()
    assert "pw" not in " ".join(r.getMessage() for r in said).replace("password", "")

    caplog.clear()
    collector("127.0.0.1", username="gw", password="env:MQTT_PASSWORD")  # this host: nothing crosses a network
    collector("localhost", username="gw", password="env:MQTT_PASSWORD")
    collector("192.0.2.10")  # no password
    MqttNotifier(MqttNotifyConfig(host="::1", username="gw", password="env:X"), password="pw")
    assert not [r for r in caplog.records if getattr(r, "event", None) == "mqtt_password_in_clear"]

    # tls.insecure (no host-name check) is said as well, with or without a password.
    ca = CertificateAuthority(tmp_path / "ca")
    collector("192.0.2.10", tls={"ca_file": str(ca.cert_path), "insecure": True})
    said = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "mqtt_tls_insecure"]
    assert len(said) == 1 and said[0].startswith("collector plant: tls.insecure = true"), said
    assert not [r for r in caplog.records if getattr(r, "event", None) == "mqtt_password_in_clear"]
