"""Password hashing with scrypt (RFC 7914), and random secrets for sessions and API tokens.

Why scrypt from the standard library rather than Argon2id (argon2-cffi): both are memory-hard
KDFs that OWASP's password storage guidance accepts; scrypt comes with Python's ``hashlib``
(through OpenSSL), so a gateway-class machine needs no extra native package for it. The
parameters are stored in each hash, so they can be raised later: `needs_rehash` tells the
log-in code to re-hash with the current ones.

Format: ``scrypt$N$r$p$salt_b64$hash_b64``. N=2**15, r=8, p=1 uses 32 MiB and takes
~50-100 ms on one core: slow for an attacker, fine for a log-in. The console's handlers call the
``*_async`` forms: scrypt runs in a worker thread, at most ``HASH_CONCURRENCY`` at a time per event loop,
so a burst of log-ins neither stalls the other requests nor takes more than that many times 32 MiB.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import secrets
import weakref

N, R, P = 2**15, 8, 1
_DKLEN = 32
_MAXMEM = 128 * 1024 * 1024
HASH_CONCURRENCY = 2
# One semaphore per event loop: asyncio primitives belong to the loop they first wait in.
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """Hash ``password`` with a fresh 16-byte salt."""
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=_MAXMEM)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(dk)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash; False for malformed hashes."""
    try:
        scheme, n, r, p, salt, dk = stored.split("$")
        if scheme != "scrypt":
            return False
        want = _unb64(dk)
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=_MAXMEM)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with other parameters than the current ones."""
    parts = stored.split("$")
    return len(parts) != 6 or parts[0] != "scrypt" or (int(parts[1]), int(parts[2]), int(parts[3])) != (N, R, P)


# A dummy hash so that a log-in for an unknown user costs as much as one for a known user
# (no user-name enumeration by timing).
@functools.cache
def dummy_hash() -> str:
    return hash_password(secrets.token_hex(8))


async def _off_loop(fn, *args):
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = asyncio.Semaphore(HASH_CONCURRENCY)
    async with gate:
        return await asyncio.to_thread(fn, *args)


async def hash_password_async(password: str) -> str:
    """`hash_password` in a worker thread, bounded by ``HASH_CONCURRENCY``."""
    return await _off_loop(lambda: hash_password(password))


async def verify_password_async(password: str, stored: str | None) -> bool:
    """`verify_password` in a worker thread, bounded by ``HASH_CONCURRENCY``; ``stored=None`` (no such user)
    checks against the dummy hash, so it costs the same time and answers False."""
    return await _off_loop(lambda: verify_password(password, dummy_hash() if stored is None else stored)
                           and stored is not None)


def new_secret() -> str:
    """A 256-bit URL-safe random value (session ids, API tokens, CSRF tokens)."""
    return secrets.token_urlsafe(32)


def same_secret(sent: str, expected: str) -> bool:
    """Constant-time comparison of a secret a client sent (a CSRF token) with the expected one. Compared as UTF-8
    bytes: `hmac.compare_digest` raises TypeError for a str with a non-ASCII character, and a header or form field
    can hold any (``X-CSRF-Token: \xe9``): the answer was a 500 and a traceback instead of a refusal."""
    return hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def digest(secret: str) -> bytes:
    """SHA-256 of a random secret, the form in which sessions and tokens are stored."""
    return hashlib.sha256(secret.encode()).digest()


def check_password_policy(password: str) -> str | None:
    """Why ``password`` is not acceptable, or None. Length over composition rules (NIST SP 800-63B)."""
    if len(password) < 10:
        return "must be at least 10 characters long"
    if len(password) > 1024:
        return "must be at most 1024 characters long"
    return None
