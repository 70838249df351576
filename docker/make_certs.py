#!/usr/bin/env python3
"""Certificates and the broker password file for the compose stack (the ``certs`` one-shot service).

    python3 make_certs.py --out /certs --mqtt-password-file /run/secrets/mqtt_password \
        [--hosts mosquitto,localhost] [--days 825] [--rotate]

Writes into ``--out`` (a named volume shared with mosquitto and the gateway):

- ``ca.crt`` / ``ca.key``: the stack's own CA (kept; a new one only with ``--rotate-ca``);
- ``mosquitto.crt`` / ``mosquitto.key``: the broker's server certificate for ``--hosts``, issued again when
  it expires within 30 days or with ``--rotate`` (certificate rotation, see docs/operations.md);
- ``mosquitto.passwd``: mosquitto's password file (PBKDF2-SHA512, mosquitto 2.x format) for the user
  ``--mqtt-user`` with the password read from ``--mqtt-password-file`` (a compose secret), rewritten
  every time so a changed secret takes effect on the next start.

Files for the broker are owned by ``--owner`` (mosquitto's uid:gid, 1883:1883 in the official image) and
not readable by others. Needs only the ``cryptography`` package (in the gateway image). Idempotent.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RENEW_BEFORE = dt.timedelta(days=30)


def mosquitto_password_line(user: str, password: str, iterations: int = 101) -> str:
    """One line of a mosquitto 2.x password file, as ``mosquitto_passwd`` writes it (``$7$``: PBKDF2-SHA512)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return f"{user}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Valvoja"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    if owner is not None and os.geteuid() == 0:
        os.chown(tmp, *owner)
    tmp.replace(path)  # atomic: a broker restarting meanwhile never reads half a file


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_ca(out: Path, days: int, rotate: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    crt_path, key_path = out / "ca.crt", out / "ca.key"
    if crt_path.exists() and key_path.exists() and not rotate:
        cert = x509.load_pem_x509_certificate(crt_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        return cert, key, False
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("Valvoja stack CA")).issuer_name(_name("Valvoja stack CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=days * 2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(key_path, _key_pem(key), 0o600, None)
    _write(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, None)
    return cert, key, True


def ensure_server(out: Path, ca_cert, ca_key, hosts: list[str], days: int, force: bool,
                  owner: tuple[int, int] | None) -> bool:
    crt_path, key_path = out / "mosquitto.crt", out / "mosquitto.key"
    if crt_path.exists() and key_path.exists() and not force:
        cert = x509.load_pem_x509_certificate(crt_path.read_bytes())
        fresh = cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE
        if fresh and cert.issuer == ca_cert.subject:
            return False
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(key_path, _key_pem(key), 0o600, owner)
    _write(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, owner)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--hosts", default="mosquitto,localhost,127.0.0.1", help="broker names for the certificate")
    p.add_argument("--days", type=int, default=825, help="server certificate lifetime (CA: twice this)")
    p.add_argument("--mqtt-user", default="valvoja")
    p.add_argument("--mqtt-password-file", type=Path, help="file holding the broker password (a compose secret)")
    p.add_argument("--owner", default="1883:1883", help="uid:gid for the broker's files")
    p.add_argument("--rotate", action="store_true", help="issue a new server certificate now")
    p.add_argument("--rotate-ca", action="store_true", help="new CA and server certificate (clients need the new CA)")
    args = p.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    owner = tuple(int(x) for x in args.owner.split(":")) if args.owner else None
    ca_cert, ca_key, new_ca = ensure_ca(out, args.days, args.rotate_ca)
    issued = ensure_server(out, ca_cert, ca_key, [h.strip() for h in args.hosts.split(",") if h.strip()],
                           args.days, args.rotate or new_ca, owner)
    print(f"CA {'created' if new_ca else 'kept'}; broker certificate {'issued' if issued else 'kept'} in {out}")
    if args.mqtt_password_file:
        password = args.mqtt_password_file.read_text().rstrip("\r\n")
        if not password:
            print(f"{args.mqtt_password_file} is empty", file=sys.stderr)
            return 1
        _write(out / "mosquitto.passwd", (mosquitto_password_line(args.mqtt_user, password) + "\n").encode(),
               0o600, owner)
        print(f"password file written for user {args.mqtt_user}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
