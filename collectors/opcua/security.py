"""OPC UA security for the collector: the gateway's own certificate and the server trust list.

Folder layout (``pki_dir``, by default ``<state_dir>/pki`` of the collector)::

    own/cert.der          the gateway's application instance certificate (made on first start, kept)
    own/key.pem           its private key (mode 0600)
    own/<URI> [<hash>].der, .key.pem   the same for another application URI (collectors sharing the folder)
    trusted/              server certificates, or the CAs that issued them, the operator trusts (PEM or DER)
    rejected/             server certificates that were refused, named by thumbprint: move one to
                          trusted/ to trust it (the newest REJECTED_MAX_FILES are kept)
    crl/                  certificate revocation lists (PEM or DER) of the CAs in trusted/
    pins.json             with trust_on_first_use: the certificate (thumbprint) each endpoint URL was first
                          trusted with

A server certificate is trusted when it is byte-for-byte one in ``trusted/``, or was issued directly
by a CA certificate in ``trusted/``; and it must be inside its validity period either way. Anything
else is refused with `UntrustedCertificate`, whose message names the certificate (subject,
thumbprint, validity) and says where to put it. ``trust_on_first_use`` copies an unknown (but
currently valid) certificate into ``trusted/`` on the first connection to an endpoint and pins it to that
endpoint in ``pins.json`` (endpoint URL -> thumbprint, written atomically): first use is decided per
endpoint, the server the collector is configured for, never by what the peer says about itself (its
application URI is its own choice). Any other certificate at a pinned endpoint is refused like an unknown
one, naming both thumbprints; a renewed certificate is accepted once an operator moves it into
``trusted/`` (the pin then follows it), or after the endpoint's pin is removed. A trusted certificate
seen at an endpoint without a pin also pins it (with ``trust_on_first_use``), so an endpoint whose
certificate an operator put in ``trusted/`` is never first-used again. For folders from before pins, an
endpoint without one is not first-used either while a trusted certificate carries the presented
certificate's application URI.
The certificate must also be this server's (OPC UA Part 4 §6.1.3, `check_server_identity`, checked first so
trust on first use never pins another's): its
subject alternative names must hold the endpoint's host (an IP address for an IP literal, else a DNS name,
``*.`` for one left-most label; ``check_host_name = false`` turns this off for a server whose certificate
cannot carry its address), and its application URI must be the one the server announces in its endpoint.
Either mismatch is refused with `CertificateMismatch`.
A certificate listed in a revocation list in ``crl/`` is refused (`RevokedCertificate`), however it is trusted.
A list counts only when a CA in ``trusted/`` signed it (others are logged and ignored); a list past its
next-update time is still applied, and logged, so a late CRL never takes a plant's data collection down but
a revocation it holds still stands. A CA without a list in ``crl/`` is not checked for revocation.
Nothing here ever falls back to an insecure connection: a refusal is an error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from asyncua import ua
from asyncua.crypto import security_policies
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.files import write_atomic

log = logging.getLogger(__name__)

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES = {"None": ua.MessageSecurityMode.None_, "Sign": ua.MessageSecurityMode.Sign,
         "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}
OWN_DAYS = 3650  # an unattended gateway: ten years, renewed by deleting own/ (or by the site's own PKI)
# Refused server certificates kept in rejected/, the newest: whoever answers at a server's address may present a new
# certificate at every connection attempt, every few seconds, and each was a file of its own for ever.
REJECTED_MAX_FILES = 100
REJECTED_MAX_BYTES = 10 << 20


class SecurityError(Exception):
    """A secure connection cannot be made as configured (never answered by connecting insecurely)."""


class UntrustedCertificate(SecurityError):
    pass


class RevokedCertificate(SecurityError):
    """A server certificate listed in a revocation list of a trusted CA."""


class CertificateMismatch(SecurityError):
    """A trusted server certificate that is not the certificate of this endpoint (host name, application URI)."""


@dataclass(frozen=True, slots=True)
class Pki:
    root: Path

    @property
    def own_cert(self) -> Path:
        return self.root / "own" / "cert.der"

    @property
    def own_key(self) -> Path:
        return self.root / "own" / "key.pem"

    @property
    def trusted(self) -> Path:
        return self.root / "trusted"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    @property
    def crl(self) -> Path:
        return self.root / "crl"

    @property
    def pins(self) -> Path:
        return self.root / "pins.json"

    def ensure(self) -> None:
        for d in (self.own_cert.parent, self.trusted, self.rejected, self.crl):
            d.mkdir(parents=True, exist_ok=True)


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 of the DER bytes, upper-case hex: what OPC UA tools show as the thumbprint."""
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


def subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def application_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def load_cert(data_or_path: bytes | Path) -> x509.Certificate:
    data = Path(data_or_path).read_bytes() if isinstance(data_or_path, Path) else data_or_path
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def make_certificate(key: rsa.RSAPrivateKey, application_uri: str, common_name: str, *, client: bool = True,
                     dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), days: int = OWN_DAYS,
                     not_before: dt.datetime | None = None,
                     issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None) -> x509.Certificate:
    """An OPC UA application instance certificate (Part 6 §6.2.2): URI in the SAN, RSA/SHA-256.

    Self-signed unless ``issuer`` (a CA certificate and its key) is given.
    """
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Valvoja")])
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    san += [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    sign_key = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        # Self-signed: CA true, like asyncua's and most stacks' own certificates (a trust list may then
        # hold it as an anchor); issued by a CA: an end-entity certificate.
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=0 if issuer is None else None),
                       critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                     data_encipherment=True, key_agreement=False, key_cert_sign=issuer is None,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                              else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return builder.sign(sign_key, hashes.SHA256())


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    """Write ``key`` (PEM, unencrypted) as a new file of mode 0600: written into an existing file, a re-made key
    kept that file's mode (readable by others if it was) and a crash left half a key."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    write_atomic(path, data, mode=0o600)


def check_private_key(path: Path, password: str | None, *, setting: str = "private_key_password") -> None:
    """Raise `SecurityError` unless ``path`` is a private key readable with ``password`` (None: unencrypted).
    The message names the file and the configuration key (``setting``), never the password."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecurityError(f"private key {path}: {exc.strerror or exc}") from None
    load = (serialization.load_pem_private_key if data.lstrip().startswith(b"-----BEGIN")
            else serialization.load_der_private_key)
    try:
        load(data, password.encode() if password is not None else None)
    except TypeError:  # encrypted without a password, or a password for a key that is not encrypted
        if password is None:
            raise SecurityError(f"private key {path} is encrypted: give {setting} (env:NAME or "
                                "file:/path)") from None
        raise SecurityError(f"private key {path} is not encrypted: remove {setting}") from None
    except ValueError:
        raise SecurityError(f"private key {path}: cannot be read" + (f" with {setting} (wrong password?)"
                                                                     if password is not None else "")) from None


def own_paths(pki: Pki, application_uri: str) -> tuple[Path, Path]:
    """Where the certificate and key of ``application_uri`` are kept: ``own/cert.der`` and ``own/key.pem`` unless
    those carry another application's URI (a collector sharing the folder: each has its own URI, by default naming
    it), then ``own/<URI as a file name> [<hash>].der`` and ``.key.pem``."""
    cert_path = pki.own_cert
    try:
        if not cert_path.is_file() or application_uri in application_uris(load_cert(cert_path)):
            return cert_path, pki.own_key
    except ValueError:  # not a certificate: re-made in place, as before
        return cert_path, pki.own_key
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in application_uri)[:60]
    label += f" [{hashlib.sha256(application_uri.encode()).hexdigest()[:8]}]"
    return cert_path.parent / f"{label}.der", cert_path.parent / f"{label}.key.pem"


def ensure_own_certificate(pki: Pki, application_uri: str, common_name: str) -> tuple[Path, Path]:
    """The gateway's certificate and key for ``application_uri``, made on first start and kept afterwards.

    An existing pair is kept until it expires; then a new pair is made and the old certificate is logged, since
    every server that trusted it must now trust the new one. Each application URI has its own pair
    (`own_paths`): collectors sharing a folder never replace each other's certificate, which a server was given
    to trust (servers compare its URI with the session's application URI). Made under the folder's lock, so two
    collectors starting at once do not write the same files.
    """
    pki.ensure()
    with _pins_locked(pki):
        cert_path, key_path = own_paths(pki, application_uri)
        if cert_path.is_file() and key_path.is_file():
            cert = load_cert(cert_path)
            now = dt.datetime.now(dt.UTC)
            fits = application_uri in application_uris(cert) and cert.not_valid_after_utc > now
            if fits and _key_of(cert, key_path):
                return cert_path, key_path
            why = "its key is not the certificate's" if fits else \
                f"URI {application_uris(cert)}, valid until {cert.not_valid_after_utc.isoformat()}"
            log.warning("own OPC UA certificate %s (thumbprint %s) does not fit any more (%s): making a new one; "
                        "servers must trust the new certificate", cert_path, thumbprint(cert), why)
        return _make_own(cert_path, key_path, application_uri, common_name)


def _key_of(cert: x509.Certificate, key_path: Path) -> bool:
    """Whether the (unencrypted PEM) key at ``key_path`` is ``cert``'s. The key is written before the certificate: a
    process stopped between the two left a new key beside the old certificate, kept for ever since the certificate
    still fitted, and every server refused the session signed with it ("does not trust the gateway's
    certificate")."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (OSError, ValueError, TypeError):
        return False
    return key.public_key().public_numbers() == cert.public_key().public_numbers()


def _make_own(cert_path: Path, key_path: Path, application_uri: str, common_name: str) -> tuple[Path, Path]:
    key = new_key()
    host = socket.gethostname()
    cert = make_certificate(key, application_uri, common_name, client=True, dns=(host,) if host else ())
    write_key(key, key_path)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.DER))  # never a half certificate
    log.info("made the gateway's OPC UA certificate %s (thumbprint %s, URI %s): give it to the servers to trust",
             cert_path, thumbprint(cert), application_uri, extra={"event": "opcua_own_certificate"})
    return cert_path, key_path


def _trusted_certs(folder: Path) -> list[x509.Certificate]:
    out = []
    if not folder.is_dir():
        return out
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".der", ".pem", ".crt", ".cer"):
            continue
        try:
            out.append(load_cert(path))
        except ValueError as exc:
            log.warning("trust list: %s is not a certificate (%s); ignored", path, exc)
    return out


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if not _is_issuer(ca):
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    now = dt.datetime.now(dt.UTC)
    return ca.not_valid_before_utc <= now <= ca.not_valid_after_utc


def _crls(pki: Pki, trusted: list[x509.Certificate]) -> list[tuple[Path, x509.CertificateRevocationList]]:
    """The revocation lists in ``crl/`` that a CA in the trust list signed; the others are logged, not used."""
    out = []
    if not pki.crl.is_dir():
        return out
    cas = [t for t in trusted if _is_issuer(t)]
    for path in sorted(pki.crl.iterdir()):
        if not path.is_file():
            continue
        data = path.read_bytes()
        try:
            crl = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----BEGIN")
                   else x509.load_der_x509_crl(data))
        except ValueError as exc:
            log.warning("revocation lists: %s is not a CRL (%s); ignored", path, exc,
                        extra={"event": "opcua_crl_ignored"})
            continue
        if not any(ca.subject == crl.issuer and _signed_by(crl, ca) for ca in cas):
            log.warning("revocation lists: %s (issuer %s) is not signed by a CA in %s; ignored", path,
                        crl.issuer.rfc4514_string(), pki.trusted, extra={"event": "opcua_crl_ignored"})
            continue
        out.append((path, crl))
    return out


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _is_issuer(cert: x509.Certificate) -> bool:
    """Whether a certificate of the trust list vouches for the certificates it signs: a CA's, not an application's.
    Self-signed application certificates carry CA:TRUE too (asyncua's, most stacks', the gateway's own): one in
    trusted/ (put there by hand, or by trust on first use, where a stranger may have answered) counted as a CA, and
    whoever held its key could make a certificate every collector sharing the folder accepted for any server. An
    application certificate carries its application URI; a CA's does not."""
    return _is_ca(cert) and not application_uris(cert)


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())
    except (TypeError, ValueError):
        return False


_STALE: set[tuple[Path, dt.datetime]] = set()


def _check_revocation(pki: Pki, cert: x509.Certificate, trusted: list[x509.Certificate], where: str) -> None:
    now = dt.datetime.now(dt.UTC)
    for path, crl in _crls(pki, trusted):
        if crl.issuer != cert.issuer:
            continue
        if crl.next_update_utc is not None and crl.next_update_utc < now and (path, crl.next_update_utc) not in _STALE:
            _STALE.add((path, crl.next_update_utc))  # once per list, not at every reconnect
            log.warning("revocation list %s of %s was due for renewal on %s UTC; still applied: put a current one "
                        "in %s", path, crl.issuer.rfc4514_string(), f"{crl.next_update_utc:%Y-%m-%d %H:%M}",
                        pki.crl, extra={"event": "opcua_crl_stale"})
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            raise RevokedCertificate(
                f"{where}, serial {cert.serial_number:X}) was revoked by {crl.issuer.rfc4514_string()} on "
                f"{entry.revocation_date_utc:%Y-%m-%d %H:%M} UTC (revocation list {path}): refused. The server "
                "needs a new certificate.")


def check_server_certificate(pki: Pki, der: bytes, *, endpoint: str, trust_on_first_use: bool) -> x509.Certificate:
    """Return the server certificate if trusted; raise `UntrustedCertificate` naming it otherwise."""
    cert = load_cert(der)
    tp = thumbprint(cert)
    where = f"{endpoint}: server certificate '{subject(cert)}' (thumbprint {tp}"
    now = dt.datetime.now(dt.UTC)
    if now < cert.not_valid_before_utc:
        # Not valid yet: nearly always a clock (this machine's behind, an OT network without NTP; or the server's
        # ahead when it made its certificate), not a certificate to replace.
        saved = _save_rejected(pki.rejected, cert)
        raise UntrustedCertificate(
            f"{where}) is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (it is {now:%Y-%m-%d %H:%M} "
            "UTC here): refused. Check this machine's clock and the server's (it made the certificate with its "
            f"clock then); it is accepted from that time if trusted. A copy is in {saved}")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        saved = _save_rejected(pki.rejected, cert)
        raise UntrustedCertificate(
            f"{where}) is outside its validity period {cert.not_valid_before_utc:%Y-%m-%d %H:%M} .. "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: refused (expired certificates are never trusted; "
            f"the server needs a new one). A copy is in {saved}")
    trusted = _trusted_certs(pki.trusted)
    if any(t == cert for t in trusted) or any(_issued_by(cert, t) for t in trusted):
        _check_revocation(pki, cert, trusted, where)
        if trust_on_first_use:
            _follow_pin(pki, endpoint, cert)
        return cert
    uris = set(application_uris(cert))
    known = [t for t in trusted if uris & set(application_uris(t))]  # a folder from before pins.json
    with _pins_locked(pki) if trust_on_first_use else contextlib.nullcontext():
        pins = _read_pins(pki) if trust_on_first_use else {}
        pin = pins.get(endpoint_key(endpoint))
        if trust_on_first_use and pin is None and not known:
            saved = _save(pki.trusted, cert)
            _write_pin(pki, pins, endpoint, cert)
            log.warning("%s) trusted on first use and saved as %s, pinned to this endpoint in %s; from now on only "
                        "this certificate (or one in %s, or issued by a CA there) is accepted here", where, saved,
                        pki.pins, pki.trusted, extra={"event": "opcua_trust_on_first_use"})
            return cert
    saved = _save_rejected(pki.rejected, cert)
    if pin is not None and pin.get("thumbprint") != tp:
        raise UntrustedCertificate(
            f"{where}, valid until {cert.not_valid_after_utc:%Y-%m-%d}) is not trusted: refused. Endpoint "
            f"{endpoint} was trusted on first use with certificate {pin.get('thumbprint')} "
            f"('{pin.get('subject', '?')}', pinned {pin.get('pinned', '?')}); it now presents {tp}: a renewed "
            "certificate, or another machine answering at this address. If the server's administrator confirms "
            f"thumbprint {tp}, move {saved} into {pki.trusted}/ by hand; or delete the entry for {endpoint} from "
            f"{pki.pins} (and the old certificate from {pki.trusted}/) to trust the next certificate it presents "
            "on first use.")
    changed = (f" The server's certificate changed: {', '.join(thumbprint(t) for t in known)} was trusted for "
               f"{', '.join(sorted(uris))}." if known else "")
    raise UntrustedCertificate(
        f"{where}, valid until {cert.not_valid_after_utc:%Y-%m-%d}) is not trusted: refused. "
        f"To trust it, check the thumbprint with the server's administrator and move {saved} into "
        f"{pki.trusted}/ (or put the CA that issued it there)"
        + ("" if known or pin is not None else "; or set trust_on_first_use = true") + "." + changed
        + (f" It was pinned to {endpoint} in {pki.pins} but is no longer in {pki.trusted}/." if pin else ""))


def endpoint_key(endpoint: str) -> str:
    """The endpoint URL as pins.json keys it: scheme and host in lower case, no trailing slash."""
    url = urlparse(endpoint.strip())
    return url._replace(scheme=url.scheme.lower(), netloc=url.netloc.lower()).geturl().rstrip("/")


@contextlib.contextmanager
def _pins_locked(pki: Pki) -> Iterator[None]:
    """Hold an exclusive lock on the PKI folder: a gateway and ``valvoja opcua browse`` sharing one folder never
    both decide a first use, nor lose each other's pins."""
    pki.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(pki.root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_pins(pki: Pki) -> dict[str, dict]:
    """Endpoint key -> {thumbprint, subject, pinned}; a file that cannot be read refuses (never a first use)."""
    try:
        pins = json.loads(pki.pins.read_text())["endpoints"]
        if not isinstance(pins, dict) or not all(isinstance(p, dict) and isinstance(p.get("thumbprint"), str)
                                                 for p in pins.values()):
            raise TypeError("not an object of endpoints with thumbprints")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SecurityError(f"{pki.pins}: cannot be read ({exc}); it records which certificate each endpoint was "
                            "trusted on first use with: repair it, or remove it to trust each endpoint's next "
                            "certificate on first use") from None
    return pins


def _write_pin(pki: Pki, pins: dict[str, dict], endpoint: str, cert: x509.Certificate) -> None:
    """Pin ``cert`` to ``endpoint``: written to a temporary file, synced and renamed over pins.json."""
    pins = {**pins, endpoint_key(endpoint): {
        "thumbprint": thumbprint(cert), "subject": subject(cert),
        "pinned": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}}
    write_atomic(pki.pins, json.dumps({"version": 1, "endpoints": dict(sorted(pins.items()))}, indent=2) + "\n")


def _follow_pin(pki: Pki, endpoint: str, cert: x509.Certificate) -> None:
    """A trusted certificate at ``endpoint``: pin it there (first use decided) or move the pin to it (an operator
    trusted a renewed certificate); nothing is written while the pin already names it."""
    with _pins_locked(pki):
        pins = _read_pins(pki)
        old = pins.get(endpoint_key(endpoint))
        if old is not None and old.get("thumbprint") == thumbprint(cert):
            return
        _write_pin(pki, pins, endpoint, cert)
    if old is not None:
        log.info("%s: the pinned server certificate %s was replaced by %s, which is in %s", endpoint,
                 old.get("thumbprint"), thumbprint(cert), pki.trusted, extra={"event": "opcua_pin_moved"})


def _host_matches(host: str, dns: list[str], ips: list) -> bool:
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        addr = None
    if addr is not None:
        return addr in ips
    host = host.rstrip(".").lower()
    for name in (d.rstrip(".").lower() for d in dns):
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:] and host.split(".", 1)[0]:
            return True
    return False


def check_server_identity(cert: x509.Certificate, *, endpoint: str, server_uri: str | None,
                          check_host_name: bool = True) -> None:
    """Raise `CertificateMismatch` when ``cert`` is not this endpoint's: the endpoint URL's
    host missing from its DNS / IP subject alternative names (with ``check_host_name``), or its application
    URI not the ``server_uri`` the server announces (when it announces one)."""
    problems = []
    host = urlparse(endpoint).hostname
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns, ips = san.get_values_for_type(x509.DNSName), san.get_values_for_type(x509.IPAddress)
    except x509.ExtensionNotFound:
        dns, ips = [], []
    if check_host_name and host and not _host_matches(host, dns, ips):
        names = ", ".join([*dns, *map(str, ips)]) or "none"
        problems.append(f"the endpoint's host {host} is not among its host names ({names}); connect by a name the "
                        "certificate holds, have the server's certificate re-issued with this one, or set "
                        "check_host_name = false for this server")
    uris = application_uris(cert)
    if server_uri and server_uri not in uris:
        problems.append(f"its application URI ({', '.join(uris) or 'none'}) is not the server's {server_uri}")
    if problems:
        raise CertificateMismatch(f"{endpoint}: server certificate '{subject(cert)}' (thumbprint {thumbprint(cert)}) "
                                  f"is not this server's: {'; '.join(problems)}: refused.")


def _save(folder: Path, cert: x509.Certificate) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in (str(cn[0].value) if cn else "server"))[:40]
    path = folder / f"{label} [{thumbprint(cert)}].der"
    if not path.exists():
        path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return path


def _save_rejected(folder: Path, cert: x509.Certificate) -> Path:
    """Copy a refused certificate to ``folder`` (rejected/) as the newest, and remove the oldest copies beyond
    `REJECTED_MAX_FILES` or `REJECTED_MAX_BYTES`; never the one just refused (its path is in the error message)."""
    path = _save(folder, cert)
    # The time is set, not left to the write: a file system's clock can be coarser than two refusals apart, and a
    # certificate refused again is new again (the renewed one an operator is about to move to trusted/).
    now = time.time_ns()
    os.utime(path, ns=(now, now))
    copies = []
    for p in folder.iterdir():
        if p.name.endswith("].der") and " [" in p.name and p != path:  # a copy `_save` made, not an operator's file
            with contextlib.suppress(FileNotFoundError):  # another collector sharing the folder removed it
                st = p.stat()
                copies.append((st.st_mtime_ns, st.st_size, p))
    kept, total = 1, path.stat().st_size
    for _, size, p in sorted(copies, key=lambda c: c[0], reverse=True):
        kept, total = kept + 1, total + size
        if kept > REJECTED_MAX_FILES or total > REJECTED_MAX_BYTES:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return path


def select_endpoint(endpoints: list[ua.EndpointDescription], policy: str, mode: str,
                    endpoint: str) -> ua.EndpointDescription:
    """The server's endpoint with exactly this policy and mode; SecurityError listing what it offers."""
    uri = POLICIES[policy].URI
    want = MODES[mode]
    for ep in endpoints:
        if ep.SecurityPolicyUri == uri and ep.SecurityMode == want:
            return ep
    offered = sorted({f"{ep.SecurityPolicyUri.rsplit('#', 1)[-1]}/{ep.SecurityMode.name}" for ep in endpoints})
    raise SecurityError(f"{endpoint}: the server offers no {policy}/{mode} endpoint (it offers "
                        f"{', '.join(offered) or 'nothing'}); not connecting with less security")
