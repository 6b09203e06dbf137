"""The hash chain of the monitor's records: each link a SHA-256 of the one before and of what
it covers, and an HMAC of it under a key the monitor holds.

Owns the link arithmetic and the key. A recording chains each batch of events and an alert
log each line (``stream.recording``, ``outputs.alerts``); ``roguewatch verify`` walks them.
An agent that rewrites a record without the key cannot make the MACs match; without the
key (not root) the digests still show truncation, splicing and careless edits.

The key (``paths.CHAIN_KEY``) is 32 random bytes, root's only (0600 in a 0700 directory of
the monitor's own paths, which sessions cannot write: Landlock). It must not decide what a
link covers: its callers do.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from roguewatch.core.paths import CHAIN_KEY

ALG = "sha256+hmac-sha256"


def load_key(path: str = CHAIN_KEY, create: bool = True) -> bytes | None:
    """The monitor's chain key; made on first use (as root). None when it cannot be read (not
    root): digests are then checked and MACs are not."""
    try:
        with open(path, "rb") as f:
            key = f.read()
        return key if len(key) >= 32 else None
    except FileNotFoundError:
        if not create:
            return None
    except OSError:
        return None
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return load_key(path, create=False)  # made meanwhile by another of our processes
    except OSError:
        return None
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def key_id(key: bytes | None) -> str:
    """A short public name of the key (which key a record was chained with)."""
    return hashlib.sha256(b"roguewatch-chain-key:" + key).hexdigest()[:16] if key else ""


def link(prev: bytes, data: bytes) -> bytes:
    """The next digest: SHA-256 of the previous digest and the bytes this link covers."""
    return hashlib.sha256(prev + data).digest()


def mac(key: bytes | None, digest: bytes) -> str:
    """The link's MAC, hex ('' without a key)."""
    return hmac.new(key, digest, hashlib.sha256).hexdigest() if key else ""


def mac_ok(key: bytes | None, digest: bytes, stated: str) -> bool | None:
    """Whether ``stated`` is the MAC of ``digest``; None when it cannot be said (no key)."""
    if not key or not stated:
        return None
    return hmac.compare_digest(mac(key, digest), str(stated))


GENESIS = hashlib.sha256(b"roguewatch-chain-v1").digest()
