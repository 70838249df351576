"""TLS towards an MQTT broker, one way for every client of the gateway: the MQTT collector
(``[collectors.tls]``) and the alert notifier (``[maintenance.notify.mqtt.tls]``).

`Tls` is the configuration (a CA file, an optional client certificate and key, the key's password as a secret
reference, the host-name check); `tls_context` reads the files and builds the client's `ssl.SSLContext` when the
client is built (at start-up, by ``check-config`` and before a reload is accepted), so a file that is missing,
unreadable or not what it should be is a `ConfigError` naming its key, not a failed connection later.

The server's certificate chain is always verified (against ``ca_file``, or the system's CAs without one), the
broker's host name is checked against it unless ``insecure``, and nothing older than TLS 1.2 is spoken.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.errors import ConfigError
from edge.paths import ConfigPath
from edge.secrets import SecretRef, resolve_secret

log = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2  # Python's default too; written here so that it cannot drift


class Tls(BaseModel):
    """TLS towards the broker. The server certificate is always verified against ``ca_file``
    (or the system's CAs when it is not given)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ca_file: ConfigPath | None = Field(None, description="PEM CA bundle; None = the system trust store")
    cert_file: ConfigPath | None = Field(None, description="client certificate (PEM) for mutual TLS")
    key_file: ConfigPath | None = Field(None, description="client private key (PEM)")
    key_password: SecretRef | None = Field(None, description="env:NAME / file:PATH holding the password of an "
                                                             "encrypted key_file")
    insecure: bool = Field(False, description="skip the host-name check (the chain is still verified)")

    @model_validator(mode="after")
    def _files(self) -> Tls:
        # The files themselves are read when the client is built (`tls_context`), not here: `check-config
        # --skip-secrets` checks a file on a machine that has neither secrets nor certificates.
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (give both or neither)")
        if self.key_password is not None and self.key_file is None:
            raise ValueError("key_password without key_file")
        return self


def _unreadable(key: str, path: str) -> str | None:
    p = Path(path)
    if not p.exists():
        return f"{key}: no such file {path}"
    try:
        with p.open("rb") as f:
            f.read(1)
    except OSError as exc:  # a directory, no permission (a key readable by root only, the gateway not root)
        return f"{key}: cannot read {path}: {exc.strerror}"
    return None


def _encrypted(key_file: str) -> bool:
    try:
        head = Path(key_file).read_bytes()[:4096]
    except OSError:
        return False
    return b"ENCRYPTED" in head  # PKCS#8 "BEGIN ENCRYPTED PRIVATE KEY", or a legacy "Proc-Type: 4,ENCRYPTED"


def tls_context(t: Tls | None, where: str = "tls") -> ssl.SSLContext | None:
    """The client TLS context of ``t`` (None: plain TCP); ``where`` is the table's key in the configuration
    (``tls``, ``maintenance.notify.mqtt.tls``). `ConfigError` listing every file that cannot be read or loaded and
    a key password that cannot be resolved, each named by its key (never showing a secret)."""
    if t is None:
        return None
    problems = [p for key in ("ca_file", "cert_file", "key_file")
                if (path := getattr(t, key)) is not None and (p := _unreadable(f"{where}.{key}", path))]
    password = None
    if t.key_password is not None:
        try:
            password = resolve_secret(t.key_password, where=f"{where}.key_password")
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    ctx = ssl.create_default_context()
    ctx.minimum_version = MINIMUM_VERSION
    try:
        if t.ca_file:
            ctx.load_verify_locations(cafile=t.ca_file)
    except (OSError, ssl.SSLError) as exc:
        problems.append(f"{where}.ca_file: cannot load the CA certificates of {t.ca_file}: {exc}")
    if t.cert_file:
        try:
            # A callable, never None: with None OpenSSL asks for the password of an encrypted key on the terminal
            # (check-config run by hand waited for it). An empty one fails to decrypt, which is reported.
            ctx.load_cert_chain(t.cert_file, t.key_file, password=lambda: password or "")
        except (OSError, ssl.SSLError) as exc:
            hint = ""
            if _encrypted(t.key_file):  # OpenSSL says only "PEM lib" for a missing or a wrong password
                hint = (f" (wrong {where}.key_password?)" if password
                        else f" (an encrypted key needs {where}.key_password)")
            problems.append(f"{where}.cert_file / {where}.key_file: cannot load the client certificate and key "
                            f"{t.cert_file}, {t.key_file}: {exc}{hint}")
    if problems:
        raise ConfigError(problems)
    ctx.check_hostname = not t.insecure
    return ctx


def warn_insecure_login(who: str, host: str, port: int, t: Tls | None, password: str | None) -> None:
    """Log (event ``mqtt_password_in_clear``) when ``who`` (a collector, the alert notifier) sends a password to a
    broker on another host without TLS: it travels in the CONNECT packet, readable by anyone on the network between
    them. Called when the client is built (start-up, reload); silent with TLS, without a password, or for a broker
    on this host (loopback). ``tls.insecure`` is said too (``mqtt_tls_insecure``): it is a choice to make knowingly,
    not one to forget in a file."""
    if t is not None and t.insecure:
        log.warning("%s: tls.insecure = true: the MQTT broker's host name (%s) is not checked against its "
                    "certificate, so any certificate its CA signed is taken for the broker's", who, host,
                    extra={"event": "mqtt_tls_insecure"})
    if not password or t is not None or _loopback(host):
        return
    log.warning("%s: logs in to the MQTT broker %s:%d with a password but without TLS: the password crosses the "
                "network readable by anyone on it; give the broker a TLS listener and the client a [tls] table",
                who, host, port, extra={"event": "mqtt_password_in_clear"})


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
