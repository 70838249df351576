"""OPC UA security against real asyncua servers on loopback: policies, trust list, own certificate, identity."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from opcua_support import RsaCa, Sink, free_port, running, server_certificate, serving, until

from collectors.base import CollectorContext
from collectors.opcua import Config, build
from collectors.opcua.security import load_cert, thumbprint
from collectors.simulator.tags import synthetic_tags
from edge.errors import NotConnectedError
from edge.metrics import Metrics

TAGS = synthetic_tags(5)


def collector(endpoint: str, state: Path, **kw):
    cfg = Config.model_validate({
        "endpoint": endpoint, "publishing_interval_ms": 100, "sampling_interval_ms": 0,
        "connect_timeout_s": 8, "watchdog_interval_s": 0.5, **kw,
        "nodes": [{"node_id": f"ns=2;s={t.name}", "tag": t.name} for t in TAGS]})
    return build(cfg, CollectorContext(name="secure", state_dir=state, metrics=Metrics()))


async def collects(col) -> Sink:
    """Values over the secure session; or, when an earlier collector on the same state folder kept its session
    (session.json), that session resumed over the new secure channel: it sends changes only, not the values the
    earlier one already had."""
    sink = Sink()
    async with running(col, sink.emit):
        await until(lambda: len(sink.by_tag()) == len(TAGS) or (col.connected and col.session == "resumed"),
                    timeout_s=20, what="values over the secure session")
    return sink


async def refused(col) -> str:
    with pytest.raises(NotConnectedError) as info:
        await asyncio.wait_for(col.run(Sink().emit), 20)
    await col.aclose()
    return str(info.value)


@pytest.mark.parametrize("policy,mode", [("Basic256Sha256", "Sign"), ("Basic256Sha256", "SignAndEncrypt"),
                                         ("Aes128_Sha256_RsaOaep", "SignAndEncrypt")])
async def test_secure_policies_with_a_trusted_server_certificate(tmp_path, policy, mode):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    cert, key = server_certificate(tmp_path / "server", "srv")
    (tmp_path / "gw" / "pki" / "trusted").mkdir(parents=True)
    shutil.copy(cert, tmp_path / "gw" / "pki" / "trusted")
    server_policy = f"{policy.replace('_', '')}_{mode}"
    async with serving(TAGS, endpoint, certificate=cert, private_key=key, policies=[server_policy]):
        col = collector(endpoint, tmp_path / "gw", security_policy=policy, security_mode=mode)
        await collects(col)
        st = col.status()
        assert st["security"] == f"{policy}/{mode}"
        assert st["server_certificate"] == thumbprint(load_cert(Path(cert)))


async def test_sign_and_encrypt_with_username_own_certificate_made_once_and_kept(tmp_path, monkeypatch):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    cert, key = server_certificate(tmp_path / "server", "srv")
    pki = tmp_path / "gw" / "pki"
    (pki / "trusted").mkdir(parents=True)
    shutil.copy(cert, pki / "trusted")
    clients = tmp_path / "server" / "trusted-clients"
    clients.mkdir()
    monkeypatch.setenv("OPCUA_PW", "s3cret")
    kw = dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt", username="gateway",
              password="env:OPCUA_PW", application_uri="urn:valvoja:test:secure")
    server_kw = dict(certificate=cert, private_key=key, policies=["Basic256Sha256_SignAndEncrypt"],
                     users={"gateway": "s3cret"}, trusted_clients=str(clients))
    # The server does not trust the gateway yet: refused, and the message says which certificate.
    async with serving(TAGS, endpoint, **server_kw):
        msg = await refused(collector(endpoint, tmp_path / "gw", **kw))
    own = pki / "own" / "cert.der"
    own_cert = load_cert(own)
    assert "does not trust the gateway's certificate" in msg and str(own) in msg and thumbprint(own_cert) in msg
    from collectors.opcua.security import application_uris
    assert application_uris(own_cert) == ["urn:valvoja:test:secure"]
    assert (pki / "own" / "key.pem").stat().st_mode & 0o777 == 0o600

    # The server's administrator trusts it: works, and the gateway kept the same certificate.
    shutil.copy(own, clients / "valvoja.der")
    async with serving(TAGS, endpoint, **server_kw):
        await collects(collector(endpoint, tmp_path / "gw", **kw))
    assert thumbprint(load_cert(own)) == thumbprint(own_cert)

    # A wrong password over the secure channel is refused too (not retried insecurely).
    monkeypatch.setenv("OPCUA_PW", "wrong")
    async with serving(TAGS, endpoint, **server_kw):
        assert "Bad" in await refused(collector(endpoint, tmp_path / "gw", **kw))


async def test_untrusted_server_certificate_is_refused_with_where_to_put_it_then_trusted(tmp_path):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    cert, key = server_certificate(tmp_path / "server", "srv")
    pki = tmp_path / "gw" / "pki"
    kw = dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt")
    async with serving(TAGS, endpoint, certificate=cert, private_key=key,
                       policies=["Basic256Sha256_SignAndEncrypt"]):
        msg = await refused(collector(endpoint, tmp_path / "gw", **kw))
        tp = thumbprint(load_cert(Path(cert)))
        rejected = list((pki / "rejected").iterdir())
        assert len(rejected) == 1 and tp in rejected[0].name
        assert "is not trusted: refused" in msg and tp in msg and "Valvoja test server srv" in msg
        assert str(rejected[0]) in msg and str(pki / "trusted") in msg
        print(msg)
        shutil.move(rejected[0], pki / "trusted")
        await collects(collector(endpoint, tmp_path / "gw", **kw))


async def test_expired_server_certificate_is_refused_even_with_trust_on_first_use(tmp_path):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    cert, key = server_certificate(tmp_path / "server", "old", expired=True)
    pki = tmp_path / "gw" / "pki"
    (pki / "trusted").mkdir(parents=True)
    shutil.copy(cert, pki / "trusted")  # trusted, but expired
    async with serving(TAGS, endpoint, certificate=cert, private_key=key,
                       policies=["Basic256Sha256_SignAndEncrypt"]):
        msg = await refused(collector(endpoint, tmp_path / "gw", security_policy="Basic256Sha256",
                                      security_mode="SignAndEncrypt", trust_on_first_use=True))
    assert "outside its validity period" in msg and thumbprint(load_cert(Path(cert))) in msg


async def test_trust_on_first_use_pins_the_first_certificate(tmp_path):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    first, key1 = server_certificate(tmp_path / "server", "first")
    other, key2 = server_certificate(tmp_path / "server", "other")
    kw = dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt", trust_on_first_use=True)
    policies = ["Basic256Sha256_SignAndEncrypt"]
    async with serving(TAGS, endpoint, certificate=first, private_key=key1, policies=policies):
        await collects(collector(endpoint, tmp_path / "gw", **kw))
    assert [thumbprint(load_cert(p)) for p in (tmp_path / "gw" / "pki" / "trusted").iterdir()] == \
        [thumbprint(load_cert(Path(first)))]
    # TOFU trusts a first certificate, not any certificate: a replaced one is still refused.
    async with serving(TAGS, endpoint, certificate=other, private_key=key2, policies=policies):
        assert "is not trusted" in await refused(collector(endpoint, tmp_path / "gw", **kw))


async def test_trust_on_first_use_is_decided_per_endpoint_not_by_the_application_uri(tmp_path):
    """Once an endpoint's first certificate is pinned, another self-signed certificate at that endpoint is refused,
    even one naming the right host with a new application URI that its server announces (the peer chooses its
    URI; a man in the middle would), and it is never added to trusted/. A renewed certificate is accepted once
    an operator moves it into trusted/ by hand; the pin then follows it."""
    import json

    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    pki = tmp_path / "gw" / "pki"
    first, key1 = server_certificate(tmp_path / "server", "first")
    evil, key2 = server_certificate(tmp_path / "server", "evil", uri="urn:evil")
    renewed, key3 = server_certificate(tmp_path / "server", "renewed")
    tp_first, tp_evil, tp_renewed = (thumbprint(load_cert(Path(c))) for c in (first, evil, renewed))
    kw = dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt", trust_on_first_use=True)
    policies = ["Basic256Sha256_SignAndEncrypt"]

    def trusted() -> list[str]:
        return sorted(thumbprint(load_cert(p)) for p in (pki / "trusted").iterdir())

    async with serving(TAGS, endpoint, certificate=first, private_key=key1, policies=policies):
        await collects(collector(endpoint, tmp_path / "gw", **kw))
    assert trusted() == [tp_first]

    async with serving(TAGS, endpoint, certificate=evil, private_key=key2, policies=policies,
                       application_uri="urn:evil"):
        msg = await refused(collector(endpoint, tmp_path / "gw", **kw))
    assert "is not trusted: refused" in msg and f"Endpoint {endpoint} was trusted on first use" in msg, msg
    assert tp_first in msg and tp_evil in msg and str(pki / "pins.json") in msg and "by hand" in msg
    assert trusted() == [tp_first], "a certificate at a pinned endpoint must never be trusted on first use"
    assert [p for p in (pki / "rejected").iterdir() if tp_evil in p.name]
    pins = json.loads((pki / "pins.json").read_text())["endpoints"]
    assert list(pins) == [endpoint] and pins[endpoint]["thumbprint"] == tp_first

    # The server's certificate is renewed: refused like the stranger, until an operator trusts it by hand.
    async with serving(TAGS, endpoint, certificate=renewed, private_key=key3, policies=policies):
        msg = await refused(collector(endpoint, tmp_path / "gw", **kw))
        assert tp_first in msg and tp_renewed in msg
        [copy] = [p for p in (pki / "rejected").iterdir() if tp_renewed in p.name]
        shutil.move(copy, pki / "trusted")
        col = collector(endpoint, tmp_path / "gw", **kw)
        await collects(col)
        assert col.status()["server_certificate"] == tp_renewed
    assert json.loads((pki / "pins.json").read_text())["endpoints"][endpoint]["thumbprint"] == tp_renewed


def test_an_operator_trusted_certificate_pins_its_endpoint_and_a_bad_pin_file_refuses(tmp_path):
    """With trust on first use, an endpoint whose certificate an operator put in trusted/ is pinned when it is
    first seen, so it is never first-used afterwards; an unreadable pins.json refuses rather than trusting."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from collectors.opcua.security import (
        Pki,
        SecurityError,
        UntrustedCertificate,
        check_server_certificate,
        make_certificate,
        new_key,
    )

    pki = Pki(tmp_path / "pki")
    pki.ensure()
    endpoint = "opc.tcp://PLC1.site:4840/"
    real = make_certificate(new_key(), "urn:plant:plc1", "plc1", client=False, dns=("plc1.site",))
    (pki.trusted / "plc1.der").write_bytes(real.public_bytes(Encoding.DER))
    check_server_certificate(pki, real.public_bytes(Encoding.DER), endpoint=endpoint, trust_on_first_use=True)
    stranger = make_certificate(new_key(), "urn:evil", "plc1", client=False, dns=("plc1.site",))
    with pytest.raises(UntrustedCertificate, match=thumbprint(real)):  # the same endpoint, spelt differently
        check_server_certificate(pki, stranger.public_bytes(Encoding.DER), endpoint="opc.tcp://plc1.site:4840",
                                 trust_on_first_use=True)
    assert [p.name for p in pki.trusted.iterdir()] == ["plc1.der"]
    pki.pins.write_text("{not json")
    with pytest.raises(SecurityError, match=r"pins\.json: cannot be read"):
        check_server_certificate(pki, stranger.public_bytes(Encoding.DER), endpoint="opc.tcp://other:4840",
                                 trust_on_first_use=True)
    assert [p.name for p in pki.trusted.iterdir()] == ["plc1.der"]


async def test_a_ca_in_the_trust_list_trusts_the_certificates_it_issues(tmp_path):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    ca = RsaCa(tmp_path / "ca")
    pki = tmp_path / "gw" / "pki"
    (pki / "trusted").mkdir(parents=True)
    shutil.copy(ca.cert_path, pki / "trusted")
    kw = dict(security_policy="Basic256Sha256", security_mode="Sign")
    for name in ("one", "two"):  # e.g. the server's certificate renewed by the plant's CA
        cert, key = server_certificate(tmp_path / "server", name, ca=ca)
        async with serving(TAGS, endpoint, certificate=cert, private_key=key, policies=["Basic256Sha256_Sign"]):
            await collects(collector(endpoint, tmp_path / "gw", **kw))
    other = RsaCa(tmp_path / "other-ca", "other")
    cert, key = server_certificate(tmp_path / "server", "foreign", ca=other)
    async with serving(TAGS, endpoint, certificate=cert, private_key=key, policies=["Basic256Sha256_Sign"]):
        assert "is not trusted" in await refused(collector(endpoint, tmp_path / "gw", **kw))


async def test_a_server_certificate_in_the_trust_list_never_issues_another_servers(tmp_path):
    """Self-signed application certificates carry CA:TRUE and keyCertSign (asyncua's, most stacks', the gateway's
    own), and one in trusted/ counted as a CA: whoever holds that server's key could issue a certificate any other
    server's collector sharing the folder accepted. With trust on first use, a stranger answering one endpoint's
    first connection got its certificate into trusted/ and could then stand in for every server, even one trusted
    by hand without trust on first use. A trust anchor must be a CA certificate that is not an application's (no
    application URI); an application certificate in trusted/ trusts itself only."""
    from types import SimpleNamespace

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    pki = tmp_path / "pki"
    first_use, strict = (f"opc.tcp://127.0.0.1:{free_port()}/sim" for _ in range(2))
    kw = dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt", pki_dir=str(pki))
    policies = ["Basic256Sha256_SignAndEncrypt"]
    stranger, stranger_key = server_certificate(tmp_path / "server", "stranger", uri="urn:stranger")
    async with serving(TAGS, first_use, certificate=stranger, private_key=stranger_key, policies=policies,
                       application_uri="urn:stranger"):
        await collects(collector(first_use, tmp_path / "a", trust_on_first_use=True, **kw))
    assert [thumbprint(load_cert(p)) for p in (pki / "trusted").iterdir()] == [thumbprint(load_cert(Path(stranger)))]

    issuer = SimpleNamespace(cert=load_cert(Path(stranger)),
                             key=load_pem_private_key(await asyncio.to_thread(Path(stranger_key).read_bytes), None))
    forged, forged_key = server_certificate(tmp_path / "server", "forged", ca=issuer)
    async with serving(TAGS, strict, certificate=forged, private_key=forged_key, policies=policies):
        assert "is not trusted" in await refused(collector(strict, tmp_path / "b", **kw))
    # The CA of the plant still issues (test_a_ca_in_the_trust_list_trusts_the_certificates_it_issues).


async def test_never_falls_back_to_less_security(tmp_path):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    cert, key = server_certificate(tmp_path / "server", "srv")
    # The server offers only None / only Sign: a gateway configured for SignAndEncrypt refuses.
    for offered in (["NoSecurity"], ["Basic256Sha256_Sign"]):
        async with serving(TAGS, endpoint, certificate=cert, private_key=key, policies=offered):
            msg = await refused(collector(endpoint, tmp_path / "gw", security_policy="Basic256Sha256",
                                          security_mode="SignAndEncrypt", trust_on_first_use=True))
        assert "offers no Basic256Sha256/SignAndEncrypt endpoint" in msg and "not connecting with less" in msg


def test_security_configuration_mistakes():
    from pydantic import ValidationError

    base = {"endpoint": "opc.tcp://h:4840", "nodes": [{"node_id": "ns=2;i=1", "tag": "a"}]}
    for bad, text in [({"security_policy": "Basic256Sha256"}, "policy None goes with mode None"),
                      ({"security_mode": "Sign"}, "policy None goes with mode None"),
                      ({"security_policy": "Basic128Rsa15", "security_mode": "Sign"}, "security_policy"),
                      ({"certificate": "/x.der"}, "certificate and private_key go together"),
                      ({"private_key_password": "env:PW"}, "give private_key too"),
                      ({"user_certificate": "/u.der"}, "user_certificate and user_private_key go together"),
                      ({"user_certificate": "/u.der", "user_private_key": "/u.pem", "username": "u",
                        "password": "env:PW"}, "one user identity"),
                      ({"user_private_key_password": "env:PW"}, "give it too"),
                      ({"certificate": "/x.der", "private_key": "/k.pem", "private_key_password": "s3cret"},
                       "must be a reference")]:
        with pytest.raises(ValidationError, match=text):
            Config.model_validate({**base, **bad})


async def test_security_without_a_state_directory_or_pki_dir_is_an_error(tmp_path):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    cfg = Config.model_validate({"endpoint": endpoint, "security_policy": "Basic256Sha256",
                                 "security_mode": "Sign", "connect_timeout_s": 3,
                                 "nodes": [{"node_id": "ns=2;i=1", "tag": "a"}]})
    col = build(cfg, CollectorContext(name="x", state_dir=None, metrics=Metrics()))
    assert "needs pki_dir" in await refused(col)


def test_server_identity_host_names_and_application_uri():
    from collectors.opcua.security import CertificateMismatch, check_server_identity, make_certificate, new_key

    key = new_key()
    uri = "urn:site:plc1"
    cert = make_certificate(key, uri, "plc1", client=False, dns=("plc1.site.example", "*.cell.site.example"),
                            ips=("10.0.0.7", "::1"))
    ok = ["opc.tcp://plc1.site.example:4840", "opc.tcp://PLC1.Site.Example.:4840/ua", "opc.tcp://10.0.0.7:4840",
          "opc.tcp://[::1]:4840", "opc.tcp://press.cell.site.example:4840"]
    for endpoint in ok:
        check_server_identity(cert, endpoint=endpoint, server_uri=uri)
    for endpoint in ("opc.tcp://127.0.0.1:4840", "opc.tcp://plc2.site.example:4840",
                     "opc.tcp://a.press.cell.site.example:4840", "opc.tcp://cell.site.example:4840",
                     "opc.tcp://10.0.0.8:4840"):
        with pytest.raises(CertificateMismatch) as info:
            check_server_identity(cert, endpoint=endpoint, server_uri=uri)
        msg = str(info.value)
        assert "is not among its host names (plc1.site.example, *.cell.site.example, 10.0.0.7, ::1)" in msg, msg
        assert "check_host_name = false" in msg and thumbprint(cert) in msg
        check_server_identity(cert, endpoint=endpoint, server_uri=uri, check_host_name=False)
    # The application URI is always checked (when the server announces one).
    with pytest.raises(CertificateMismatch, match="application URI \\(urn:site:plc1\\) is not the server's urn:x"):
        check_server_identity(cert, endpoint=ok[0], server_uri="urn:x", check_host_name=False)
    check_server_identity(cert, endpoint=ok[0], server_uri="")


async def test_a_trusted_certificate_of_another_host_is_refused_and_never_pinned(tmp_path):
    """A server showing a certificate made for another host name is refused even when that certificate is in the
    trust list; trust on first use does not pin it; ``check_host_name = false`` accepts it."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    cert, key = server_certificate(tmp_path / "server", "elsewhere", dns=("plc9.other.example",), ips=())
    kw = dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt")
    pki = tmp_path / "gw" / "pki"
    async with serving(TAGS, endpoint, certificate=cert, private_key=key, policies=["Basic256Sha256_SignAndEncrypt"]):
        msg = await refused(collector(endpoint, tmp_path / "gw", trust_on_first_use=True, **kw))
        assert "is not this server's" in msg and "127.0.0.1 is not among its host names (plc9.other.example)" in msg
        assert not list((pki / "trusted").iterdir()), "trust on first use must not pin another host's certificate"
        shutil.copy(cert, pki / "trusted")
        msg = await refused(collector(endpoint, tmp_path / "gw", **kw))
        assert "is not this server's" in msg and thumbprint(load_cert(Path(cert))) in msg
        await collects(collector(endpoint, tmp_path / "gw", check_host_name=False, **kw))


def test_a_collector_that_does_not_check_the_host_name_says_so_at_start(caplog):
    """``check_host_name = false`` (a server whose certificate cannot carry its address) takes a certificate trusted
    for any other server, or issued by any CA in trusted/, for this one; it was silent once written in the file.
    Said when the collector is built (start-up, reload); not without security (nothing is checked then)."""
    import logging

    from collectors.opcua.config import Connection
    from collectors.opcua.connection import ClientOpener

    caplog.set_level(logging.WARNING)
    secure = dict(endpoint="opc.tcp://plc1.site:4840", security_policy="Basic256Sha256", security_mode="Sign")
    ClientOpener(Connection(**secure, check_host_name=False), name="plc1")
    ClientOpener(Connection(**secure), name="plc2")
    ClientOpener(Connection(endpoint="opc.tcp://plc3.site:4840", check_host_name=False), name="plc3")
    said = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "opcua_host_name_unchecked"]
    assert len(said) == 1 and said[0].startswith("plc1: check_host_name = false") and "plc1.site" in said[0], said


def test_a_remade_own_key_is_the_owners_alone_whatever_the_file_before(tmp_path):
    """The gateway's own key is made again when its certificate no longer fits (another application URI, expiry).
    It was written into the existing file (O_TRUNC): the file kept its mode, so a key.pem an operator or a backup
    restore had left readable by others stayed so with the new key in it. Now it is a new file, 0600."""
    from collectors.opcua.security import Pki, ensure_own_certificate

    pki = Pki(tmp_path / "pki")
    _, key_path = ensure_own_certificate(pki, "urn:valvoja:test:one", "gw")
    first = key_path.read_bytes()
    key_path.chmod(0o644)
    _, key_path = ensure_own_certificate(pki, "urn:valvoja:test:two", "gw")  # the URI changed: a new pair
    assert key_path.read_bytes() != first
    assert key_path.stat().st_mode & 0o777 == 0o600


def write_crl(path: Path, ca: RsaCa, serials: list[int], *, next_update_days: float = 7, key=None) -> Path:
    """A revocation list issued in ``ca``'s name listing ``serials``, signed with ``key`` (default the CA's)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
         .last_update(now - dt.timedelta(days=1)).next_update(now + dt.timedelta(days=next_update_days)))
    for n in serials:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(n)
                                      .revocation_date(now - dt.timedelta(hours=2)).build())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b.sign(key or ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


async def test_a_certificate_revoked_by_its_trusted_ca_is_refused(tmp_path, caplog):
    """A revocation list signed by a CA of the trust list refuses the certificates it lists (taking effect at the
    next connection, no restart); a list signed by anyone else is ignored and logged."""
    import logging

    from collectors.opcua.security import new_key

    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    ca = RsaCa(tmp_path / "ca")
    cert, key = server_certificate(tmp_path / "server", "issued", ca=ca)
    serial = load_cert(Path(cert)).serial_number
    pki = tmp_path / "gw" / "pki"
    (pki / "trusted").mkdir(parents=True)
    shutil.copy(ca.cert_path, pki / "trusted")
    kw = dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt")
    async with serving(TAGS, endpoint, certificate=cert, private_key=key, policies=["Basic256Sha256_SignAndEncrypt"]):
        write_crl(pki / "crl" / "forged.crl", ca, [serial], key=new_key())  # in the CA's name, not its key
        with caplog.at_level(logging.WARNING, logger="collectors.opcua.security"):
            await collects(collector(endpoint, tmp_path / "gw", **kw))
        assert "forged.crl" in caplog.text and "not signed by a CA" in caplog.text
        write_crl(pki / "crl" / "ca.crl", ca, [serial + 1])  # lists another certificate only
        await collects(collector(endpoint, tmp_path / "gw", **kw))
        write_crl(pki / "crl" / "ca.crl", ca, [serial + 1, serial])
        msg = await refused(collector(endpoint, tmp_path / "gw", **kw))
    assert f"serial {serial:X}) was revoked by CN=Valvoja test opcua-ca" in msg and "ca.crl" in msg, msg


def test_a_late_revocation_list_still_applies_and_is_logged_once(tmp_path, caplog):
    import logging

    from collectors.opcua.security import Pki, RevokedCertificate, check_server_certificate

    ca = RsaCa(tmp_path / "ca")
    revoked, _ = server_certificate(tmp_path / "server", "revoked", ca=ca)
    good, _ = server_certificate(tmp_path / "server", "good", ca=ca)
    pki = Pki(tmp_path / "pki")
    pki.ensure()
    shutil.copy(ca.cert_path, pki.trusted)
    (pki.crl / "notes.txt").write_text("not a revocation list")
    write_crl(pki.crl / "late.crl", ca, [load_cert(Path(revoked)).serial_number], next_update_days=-1)
    with caplog.at_level(logging.WARNING, logger="collectors.opcua.security"):
        for _ in range(3):
            check_server_certificate(pki, Path(good).read_bytes(), endpoint="opc.tcp://x", trust_on_first_use=False)
            with pytest.raises(RevokedCertificate, match="was revoked"):
                check_server_certificate(pki, Path(revoked).read_bytes(), endpoint="opc.tcp://x",
                                         trust_on_first_use=False)
    assert sum("due for renewal" in r.getMessage() for r in caplog.records) == 1
    assert "notes.txt is not a CRL" in caplog.text


async def test_site_issued_client_certificate_with_an_encrypted_key(tmp_path, monkeypatch):
    """The plant's own client certificate and its password-protected key (password from a reference): the
    server that trusts that certificate accepts the session; a missing or wrong password is an error at start-up
    naming the key file and the setting, never the password."""
    from cryptography.hazmat.primitives import serialization

    from collectors.opcua.security import make_certificate, new_key
    from edge.errors import ConfigError

    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    cert, key = server_certificate(tmp_path / "server", "srv")
    pki = tmp_path / "gw" / "pki"
    (pki / "trusted").mkdir(parents=True)
    shutil.copy(cert, pki / "trusted")
    site = tmp_path / "site"
    site.mkdir()
    client_key = new_key()
    client_cert = make_certificate(client_key, "urn:plant:valvoja:gw1", "gw1", client=True)
    (site / "gw1.der").write_bytes(client_cert.public_bytes(serialization.Encoding.DER))
    (site / "gw1.key.pem").write_bytes(client_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"k3y-pass")))
    clients = tmp_path / "server" / "trusted-clients"
    clients.mkdir()
    shutil.copy(site / "gw1.der", clients)
    kw = dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt", certificate=str(site / "gw1.der"),
              private_key=str(site / "gw1.key.pem"))
    monkeypatch.setenv("GW1_KEY_PW", "k3y-pass")
    async with serving(TAGS, endpoint, certificate=cert, private_key=key, policies=["Basic256Sha256_SignAndEncrypt"],
                       trusted_clients=str(clients)):
        col = collector(endpoint, tmp_path / "gw", private_key_password="env:GW1_KEY_PW", **kw)
        await collects(col)
        assert not (pki / "own").exists() or not list((pki / "own").iterdir()), "no certificate of its own made"
    monkeypatch.setenv("GW1_KEY_PW", "wrong")
    with pytest.raises(ConfigError) as info:
        collector(endpoint, tmp_path / "gw", private_key_password="env:GW1_KEY_PW", **kw)
    assert "collectors (secure).private_key" in str(info.value) and "wrong password" in str(info.value)
    assert "gw1.key.pem" in str(info.value) and "wrong" not in str(info.value).replace("wrong password", "")
    with pytest.raises(ConfigError, match="is encrypted: give private_key_password"):
        collector(endpoint, tmp_path / "gw", **kw)


async def test_x509_user_identity(tmp_path, monkeypatch):
    """The session is activated with a user certificate (X.509 identity token, signed with the user's encrypted
    key); the server maps it to its user. A certificate the server does not know is refused."""
    from cryptography.hazmat.primitives import serialization

    from collectors.opcua.security import make_certificate, new_key

    def user(name: str) -> tuple[Path, Path]:
        key = new_key()
        cert = make_certificate(key, f"urn:plant:user:{name}", name, client=True)
        c, k = tmp_path / "users" / f"{name}.der", tmp_path / "users" / f"{name}.key.pem"
        c.parent.mkdir(exist_ok=True)
        c.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.BestAvailableEncryption(b"op-pass")))
        return c, k

    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    cert, key = server_certificate(tmp_path / "server", "srv")
    pki = tmp_path / "gw" / "pki"
    (pki / "trusted").mkdir(parents=True)
    shutil.copy(cert, pki / "trusted")
    operator, stranger = user("operator"), user("stranger")
    monkeypatch.setenv("USER_KEY_PW", "op-pass")
    kw = dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt",
              user_private_key_password="env:USER_KEY_PW")
    async with serving(TAGS, endpoint, certificate=cert, private_key=key, policies=["Basic256Sha256_SignAndEncrypt"],
                       users={}, user_certificates={"operator": str(operator[0])}) as srv:
        await collects(collector(endpoint, tmp_path / "gw", user_certificate=str(operator[0]),
                                 user_private_key=str(operator[1]), **kw))
        assert srv.activated == ["operator"]  # the session's user is the certificate's
        msg = await refused(collector(endpoint, tmp_path / "gw", user_certificate=str(stranger[0]),
                                      user_private_key=str(stranger[1]), **kw))
    assert "BadUserAccessDenied" in msg or "BadIdentityToken" in msg, msg


async def test_the_gateways_own_certificate_near_or_past_its_expiry_is_named(tmp_path, caplog):
    """A site-issued client certificate runs out (a year is common): 30 days ahead a warning names the file and the
    date (once a day); once expired, the server's refusal says so instead of "add it to the server's trusted
    certificates" (it is trusted: an operator would chase the wrong cause)."""
    import datetime as dt

    from cryptography.hazmat.primitives import serialization

    from collectors.opcua.security import make_certificate, new_key, write_key

    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    cert, key = server_certificate(tmp_path / "server", "srv")
    for gw in ("gw", "gw2"):
        (tmp_path / gw / "pki" / "trusted").mkdir(parents=True)
        shutil.copy(cert, tmp_path / gw / "pki" / "trusted")
    clients = tmp_path / "server" / "trusted-clients"
    clients.mkdir()
    now = dt.datetime.now(dt.UTC)

    def site_certificate(name: str, not_before: dt.datetime, days: int) -> dict:
        client_key = new_key()
        c = make_certificate(client_key, "urn:plant:valvoja:gw1", "gw1", client=True, not_before=not_before, days=days)
        path = tmp_path / "site" / f"{name}.der"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(c.public_bytes(serialization.Encoding.DER))
        write_key(client_key, tmp_path / "site" / f"{name}.key.pem")
        shutil.copy(path, clients)  # the server trusts it
        return dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt", certificate=str(path),
                    private_key=str(tmp_path / "site" / f"{name}.key.pem"))

    soon = site_certificate("soon", now - dt.timedelta(days=360), 365)
    expired = site_certificate("expired", now - dt.timedelta(days=40), 30)
    async with serving(TAGS, endpoint, certificate=cert, private_key=key, policies=["Basic256Sha256_SignAndEncrypt"],
                       trusted_clients=str(clients)):
        await collects(collector(endpoint, tmp_path / "gw", **soon))
        warned = [r.getMessage() for r in caplog.records if "soon.der" in r.getMessage()]
        assert warned and "expires on" in warned[0] and f"{now + dt.timedelta(days=5):%Y-%m-%d}" in warned[0], warned
        msg = await refused(collector(endpoint, tmp_path / "gw2", **expired))
    assert "expired.der" in msg and "expired on" in msg and "trusted certificates" not in msg, msg


def test_a_server_certificate_not_valid_yet_points_at_the_clocks(tmp_path):
    """A certificate whose validity starts in the future is almost always a clock: the gateway's behind (an OT
    network without NTP) or the server's ahead when it made its certificate. The refusal said the certificate
    expired and "the server needs a new one"; it must say when it becomes valid and to check the clocks."""
    import datetime as dt

    from cryptography.hazmat.primitives import serialization

    from collectors.opcua.security import Pki, UntrustedCertificate, check_server_certificate, make_certificate, new_key

    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    cert = make_certificate(new_key(), "urn:plant:srv", "srv", client=False, not_before=start, days=365)
    der = cert.public_bytes(serialization.Encoding.DER)
    pki = Pki(tmp_path / "pki")
    pki.ensure()
    (pki.trusted / "srv.der").write_bytes(der)  # trusted: only its validity is wrong
    with pytest.raises(UntrustedCertificate) as info:
        check_server_certificate(pki, der, endpoint="opc.tcp://plc1:4840", trust_on_first_use=False)
    msg = str(info.value)
    assert f"not valid before {start:%Y-%m-%d %H:%M}" in msg and "clock" in msg, msg
    assert "expired" not in msg and "needs a new one" not in msg, msg


def test_the_rejected_folder_keeps_only_the_newest_certificates(tmp_path, monkeypatch):
    """Every refused server certificate was copied to rejected/, one file per thumbprint and never removed: a man in
    the middle presenting a new certificate at each reconnect (every few seconds) filled the disk. The folder now
    keeps the newest `REJECTED_MAX_FILES` within `REJECTED_MAX_BYTES` (a certificate refused again counts as new);
    files that are not such copies are left alone."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from collectors.opcua import security
    from collectors.opcua.security import Pki, UntrustedCertificate, check_server_certificate, make_certificate, new_key

    monkeypatch.setattr(security, "REJECTED_MAX_FILES", 3)
    pki = Pki(tmp_path / "pki")
    pki.ensure()
    (pki.rejected / "README.txt").write_text("an operator's note")
    key = new_key()
    ders = [make_certificate(key, f"urn:evil:{i}", f"evil{i}", client=False).public_bytes(Encoding.DER)
            for i in range(6)]
    tps = [thumbprint(load_cert(d)) for d in ders]

    def refuse(der: bytes) -> None:
        with pytest.raises(UntrustedCertificate):
            check_server_certificate(pki, der, endpoint="opc.tcp://plc1:4840", trust_on_first_use=False)

    def kept() -> set[str]:
        return {tp for tp in tps if any(tp in p.name for p in pki.rejected.iterdir())}

    for der in ders[:4]:
        refuse(der)
    assert kept() == set(tps[1:4])
    refuse(ders[1])  # refused again: the newest now
    refuse(ders[4])
    refuse(ders[5])
    assert kept() == {tps[1], tps[4], tps[5]}
    assert (pki.rejected / "README.txt").exists() and len(list(pki.rejected.iterdir())) == 4
    monkeypatch.setattr(security, "REJECTED_MAX_BYTES", len(ders[0]) * 2 + 1)  # and a size bound: two fit
    refuse(ders[0])
    assert kept() == {tps[0], tps[5]}


async def test_collectors_sharing_a_pki_dir_keep_each_their_own_certificate(tmp_path):
    """Several collectors may share one pki_dir (one trust list), each with its own application URI (the default
    names the collector). The first made own/cert.der for its URI; the second found another URI there and made a
    new pair over it, and the first did the same at its next connect: each connect of one threw away the
    certificate a server had been given to trust for the other (refused: "does not trust the gateway's
    certificate"). Each URI now has its own pair in own/."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    cert, key = server_certificate(tmp_path / "server", "srv")
    shared = tmp_path / "shared-pki"
    (shared / "trusted").mkdir(parents=True)
    shutil.copy(cert, shared / "trusted")
    clients = tmp_path / "server" / "trusted-clients"
    clients.mkdir()
    server_kw = dict(certificate=cert, private_key=key, policies=["Basic256Sha256_SignAndEncrypt"],
                     trusted_clients=str(clients))

    def named(name: str):
        cfg = Config.model_validate({
            "endpoint": endpoint, "publishing_interval_ms": 100, "sampling_interval_ms": 0, "connect_timeout_s": 8,
            "watchdog_interval_s": 0.5, "security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
            "pki_dir": str(shared), "nodes": [{"node_id": f"ns=2;s={t.name}", "tag": t.name} for t in TAGS]})
        return build(cfg, CollectorContext(name=name, state_dir=tmp_path / name, metrics=Metrics()))

    async with serving(TAGS, endpoint, **server_kw):
        for name in ("line1", "line2"):  # each refused, its certificate named: the administrator trusts it
            col = named(name)
            await refused(col)
            shutil.copy(col.opener.own_cert, clients / f"{name}.der")
    async with serving(TAGS, endpoint, **server_kw):  # the server reads its trust list at start
        for name in ("line1", "line2", "line1"):
            await collects(named(name))
    owns = {p.name for p in (shared / "own").iterdir()}
    assert len([p for p in owns if p.endswith(".der")]) == 2, owns


async def test_an_own_key_that_is_not_the_certificates_is_made_anew(tmp_path):
    """The own key is written before the certificate: a gateway stopped between the two (power, SIGKILL at the
    first start or at a renewal) left a new key beside the old certificate. The pair was kept (the certificate still
    carried the URI and was valid), and every secure session signed with the wrong key was refused, at each
    reconnect, for ever. Such a pair is now made anew."""
    from cryptography.hazmat.primitives import serialization

    from collectors.opcua.security import new_key, write_key

    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    cert, key = server_certificate(tmp_path / "server", "srv")
    pki = tmp_path / "gw" / "pki"
    (pki / "trusted").mkdir(parents=True)
    shutil.copy(cert, pki / "trusted")
    kw = dict(security_policy="Basic256Sha256", security_mode="SignAndEncrypt")
    server_kw = dict(certificate=cert, private_key=key, policies=["Basic256Sha256_SignAndEncrypt"])  # any client
    async with serving(TAGS, endpoint, **server_kw):
        await collects(collector(endpoint, tmp_path / "gw", **kw))
        shutil.rmtree(tmp_path / "gw" / "collectors", ignore_errors=True)
        (tmp_path / "gw" / "session.json").unlink(missing_ok=True)
        write_key(new_key(), pki / "own" / "key.pem")  # the certificate's key is gone
        col = collector(endpoint, tmp_path / "gw", **kw)
        sink = await collects(col)
    assert len(sink.by_tag()) == len(TAGS)
    own = load_cert(pki / "own" / "cert.der")
    key_now = serialization.load_pem_private_key((pki / "own" / "key.pem").read_bytes(), None)
    assert key_now.public_key().public_numbers() == own.public_key().public_numbers()
