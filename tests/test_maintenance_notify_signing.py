"""Signed webhooks (Standard Webhooks 1.0, ``signing_secret``) to a real local HTTP receiver, verified as a receiver
would: with the standard's reference library (``standardwebhooks``) and with the lines maintenance/README.md gives."""

import base64
import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from test_maintenance_notify import _raised, _Receiver

from edge import cli, settings
from edge.errors import ConfigError
from edge.service import preflight
from maintenance.notify import WebhookConfig, WebhookNotifier, notification_id, payload

ROOT = Path(__file__).resolve().parents[1]


def _secret(n: int = 32) -> str:
    return "whsec_" + base64.b64encode(os.urandom(n)).decode()


@contextlib.contextmanager
def _receiver(fail_first: int = 0) -> Iterator[str]:
    """The URL of a local receiver recording each POST in ``_Receiver.requests``; it answers 503 to the first
    ``fail_first``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.bodies, _Receiver.requests, _Receiver.fail_first = [], [], fail_first
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def _documented_verify() -> Callable[..., bool]:
    """The receiver's ``verify`` of maintenance/README.md ("Signed webhooks"), run as it is written there."""
    text = (ROOT / "maintenance" / "README.md").read_text(encoding="utf-8")
    (code,) = [b for b in re.findall(r"^```python\n(.*?)^```", text, re.M | re.S) if "def verify(" in b]
    namespace: dict = {}
    exec(code, namespace)
    return namespace["verify"]


def _verifies(secret: str, headers, body: bytes) -> bool:
    """Whether both receivers take the request; fails the test when they disagree."""
    try:
        Webhook(secret).verify(body, dict(headers.items()))
        library = True
    except WebhookVerificationError:
        library = False
    assert _documented_verify()(secret, headers, body) is library, "the README's verify disagrees with the library"
    return library


async def test_a_signed_webhook_verifies_and_a_retry_is_signed_again(monkeypatch):
    """A receiver could not tell the gateway's POSTs from anybody's, nor a replayed or altered one. Now each carries
    the Standard Webhooks headers: the signature verifies with the receiver's secret; a retry keeps ``webhook-id``
    (the notification id) and is signed again with its own timestamp; a body, id or timestamp changed on the way, or
    another secret, fails verification."""
    secret = _secret()
    monkeypatch.setenv("HOOK_SIGNING", secret)
    monkeypatch.setattr(WebhookNotifier, "RETRY_BASE_S", 1.1)  # the timestamp is in whole seconds
    ch = _raised()
    with _receiver(fail_first=1) as url:
        n = WebhookNotifier(WebhookConfig(url=url, attempts=2, signing_secret="env:HOOK_SIGNING"))
        try:
            ok, detail = await n.send(ch)
        finally:
            await n.aclose()
    assert ok, detail
    (h1, b1), (h2, b2) = _Receiver.requests
    assert b1 == b2 == payload(ch)
    assert h1["webhook-id"] == h2["webhook-id"] == h2["idempotency-key"] == notification_id(ch)
    assert abs(int(h1["webhook-timestamp"]) - time.time()) < 10
    assert int(h2["webhook-timestamp"]) > int(h1["webhook-timestamp"])  # the retry's own time
    assert h1["webhook-signature"] != h2["webhook-signature"]
    for headers, body in _Receiver.requests:
        assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", headers["webhook-signature"]), headers["webhook-signature"]
        assert _verifies(secret, headers, body)
        assert not _verifies(_secret(), headers, body)
        assert not _verifies(secret, headers, body.replace(b'"warning"', b'"info"'))
    # Each signature binds its id and timestamp: the first attempt's signature does not pass with the second's
    # timestamp (a recorded request given a fresh time), nor with another id.
    stale = {**dict(h1.items()), "webhook-timestamp": h2["webhook-timestamp"]}
    assert not _verifies(secret, stale, b1)
    other_id = {**dict(h2.items()), "webhook-id": "0" * 32}
    assert not _verifies(secret, other_id, b2)


async def test_two_secrets_sign_during_a_rotation(monkeypatch):
    """While a secret is rotated the gateway signs with the new and the previous one (the standard's space-separated
    list): a receiver holding either verifies, one holding neither does not."""
    new, old = _secret(), _secret(24)
    monkeypatch.setenv("HOOK_SIGNING", new)
    monkeypatch.setenv("HOOK_SIGNING_OLD", old)
    with _receiver() as url:
        n = WebhookNotifier(WebhookConfig(url=url, signing_secret="env:HOOK_SIGNING",
                                          signing_secret_previous="env:HOOK_SIGNING_OLD"))
        try:
            ok, detail = await n.send(_raised())
        finally:
            await n.aclose()
    assert ok, detail
    ((headers, body),) = _Receiver.requests
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert _verifies(new, headers, body) and _verifies(old, headers, body)
    assert not _verifies(_secret(), headers, body)


async def test_a_webhook_without_a_signing_secret_is_sent_as_before():
    ch = _raised()
    with _receiver() as url:
        n = WebhookNotifier(WebhookConfig(url=url))
        try:
            ok, detail = await n.send(ch)
        finally:
            await n.aclose()
    assert ok, detail
    ((headers, body),) = _Receiver.requests
    assert body == payload(ch) and headers["idempotency-key"] == notification_id(ch)
    assert not [k for k in headers if k.lower().startswith("webhook-")], headers.items()


def _site(tmp_path: Path, webhook: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(f"""
[[maintenance.assets]]
name = "P-1"
process_tags = ["P-1.t"]

[[maintenance.notify.webhooks]]
url = "https://hooks.example.com/alerts"
{webhook}
""")
    return path


def test_a_signing_secret_written_in_the_file_is_refused(tmp_path, capsys):
    secret = _secret()
    path = _site(tmp_path, f'signing_secret = "{secret}"')
    with pytest.raises(ConfigError) as err:
        settings.load(path)
    assert err.value.problems == [f"{path}: maintenance.notify.webhooks[0].signing_secret: must be a reference "
                                  "'env:NAME' or 'file:/path'; never put a secret in the config file"]
    path = _site(tmp_path, 'signing_secret_previous = "env:HOOK_SIGNING_OLD"')
    with pytest.raises(ConfigError, match=r"webhooks\[0\]: signing_secret_previous is only for a rotation"):
        settings.load(path)


@pytest.mark.parametrize("value, why", [
    ("c2VjcmV0LWtleS1vZi0zMi1ieXRlcy1yYW5kb20tcmFuZG9t", "does not start with whsec_"),
    ("whsec_not base64!", "is not base64 after whsec_"),
    ("whsec_" + base64.b64encode(b"16 bytes, short!").decode(), "holds 16 bytes after whsec_, not 24 to 64"),
    ("whsec_" + base64.b64encode(bytes(65)).decode(), "holds 65 bytes after whsec_, not 24 to 64"),
])
def test_check_config_names_a_malformed_signing_secret(tmp_path, monkeypatch, capsys, value, why):
    """The secret behind the reference is read and checked by check-config (and at start and reload, which share
    `preflight`), not first by a receiver refusing every alert; the message names the key and the reference,
    never the value."""
    monkeypatch.setenv("HOOK_SIGNING", value)
    path = _site(tmp_path, 'signing_secret = "env:HOOK_SIGNING"')
    assert cli.main(["check-config", str(path)]) == 1
    out = capsys.readouterr()
    assert (f"{path}: maintenance.notify.webhooks[0].signing_secret: the value of env:HOOK_SIGNING is not a "
            f"Standard Webhooks secret ({why})") in out.err + out.out
    assert value not in out.err + out.out


def test_check_config_names_an_unreadable_or_repeated_signing_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("HOOK_SIGNING_UNSET", raising=False)
    secret = _secret()
    monkeypatch.setenv("HOOK_SIGNING", secret)
    monkeypatch.setenv("HOOK_SIGNING_AGAIN", secret)
    path = _site(tmp_path, 'signing_secret = "env:HOOK_SIGNING_UNSET"')
    with pytest.raises(ConfigError) as err:
        preflight(settings.load(path))
    assert err.value.problems == ["maintenance.notify.webhooks[0].signing_secret: environment variable "
                                  "HOOK_SIGNING_UNSET is not set"]
    path = _site(tmp_path, 'signing_secret = "env:HOOK_SIGNING"\nsigning_secret_previous = "env:HOOK_SIGNING_AGAIN"')
    with pytest.raises(ConfigError) as err:
        preflight(settings.load(path))
    assert err.value.problems == ["maintenance.notify.webhooks[0].signing_secret_previous: env:HOOK_SIGNING_AGAIN "
                                  "holds the same secret as signing_secret (env:HOOK_SIGNING): a rotation needs the "
                                  "new secret in signing_secret"]
    assert secret not in str(err.value)
    # A header of the signature's own written in `headers` would be replaced by it unseen.
    path = _site(tmp_path, 'signing_secret = "env:HOOK_SIGNING"\nheaders = { Webhook-Signature = "v1,static" }')
    with pytest.raises(ConfigError) as err:
        preflight(settings.load(path))
    assert err.value.problems == ["maintenance.notify.webhooks[0].headers: Webhook-Signature: the signature's own "
                                  "headers, which signing_secret sets: leave them out"]
