"""How a host or the fleet client connects to NATS: TLS, credentials, and what may be said
about a connection.

Owns the connection options (the server list, a TLS context with the CA and the client
certificate, an NKey seed file or a creds file), the check that secret files are root's alone
(owned by root, no access for group or others: an agent that could read a host's seed could
publish as that host), and :func:`redact`, the one way a server address or an error reaches a
log, an alert or ``status``: credentials in a URL, seeds and JWTs never do.

It must not publish or subscribe: the forwarder and the client do.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from dataclasses import dataclass, field

from roguewatch.fleet import subjects
from roguewatch.policy.fleetconfig import FleetConfig

# Anything that looks like a secret: a URL's user:password@, an NKey seed (S + role letter +
# base32), a JWT (three base64url parts).
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_SEED = re.compile(r"\bS[UAONPC][A-Z2-7]{40,}\b")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class CredentialError(Exception):
    pass


def redact(text: object) -> str:
    """``text`` with credentials, seeds and tokens replaced by ``***``."""
    out = _USERINFO.sub("***@", str(text))
    out = _SEED.sub("S***", out)
    return _JWT.sub("***jwt***", out)


def check_secret_file(path: str, what: str, root_only: bool = True) -> None:
    """A file that exists, is a regular file, and (``root_only``) is owned by root with no
    access for group or others. CredentialError names the file and what to do."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CredentialError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CredentialError(f"{what} {path}: not a regular file")
    if root_only and (st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077):
        raise CredentialError(
            f"{what} {path}: must be readable by root only (owner uid {st.st_uid}, mode "
            f"{stat.S_IMODE(st.st_mode):04o}): chown root:root {path}; chmod 0600 {path}"
        )


@dataclass
class Credentials:
    """What a connection presents: servers, TLS files, and one credential file (or none)."""

    servers: list[str]
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    nkey_seed_file: str = ""
    creds_file: str = ""
    name: str = "roguewatch"
    inbox_prefix: str = "_INBOX"
    extra: dict = field(default_factory=dict)

    def check(self, root_only: bool = True) -> None:
        """The secret files are root's alone (a host's); the public ones exist."""
        for path, what in ((self.tls_ca, "TLS CA"), (self.tls_cert, "TLS certificate")):
            if path:
                check_secret_file(path, what, root_only=False)
        for path, what in ((self.tls_key, "TLS key"), (self.nkey_seed_file, "NKey seed file"),
                           (self.creds_file, "creds file")):  # fmt: skip
            if path:
                check_secret_file(path, what, root_only=root_only)

    def tls(self) -> ssl.SSLContext | None:
        tls_urls = any(s.startswith("tls://") for s in self.servers)
        if not (self.tls_ca or self.tls_cert or tls_urls):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls_cert:
            try:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise CredentialError(f"TLS certificate {self.tls_cert}: {exc}") from None
        return ctx

    def options(self) -> dict:
        """Keyword arguments of ``nats.connect`` (our own reconnection: see the forwarder)."""
        opts: dict = {
            "servers": list(self.servers),
            "name": self.name,
            "inbox_prefix": self.inbox_prefix,
            "connect_timeout": 3,
            # One attempt per server (nats-py's 0 would mean "forever"): the forwarder has its
            # own back-off, and a person asking the fleet wants an answer.
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.2,
            "error_cb": _quiet,
            "pending_size": 64 * 1024 * 1024,
            **self.extra,
        }
        ctx = self.tls()
        if ctx is not None:
            opts["tls"] = ctx
        if self.nkey_seed_file:
            opts["nkeys_seed"] = self.nkey_seed_file
        if self.creds_file:
            opts["user_credentials"] = self.creds_file
        return opts

    def seed(self) -> bytes | None:
        """The NKey seed these credentials sign with (from the seed file or the creds file)."""
        for path in (self.nkey_seed_file, self.creds_file):
            if not path:
                continue
            with open(path, "rb") as f:
                text = f.read()
            m = re.search(rb"\bSU[A-Z2-7]{50,}\b", text)
            if m:
                return m.group()
        return None


async def _quiet(exc: Exception) -> None:
    """nats-py logs every asynchronous error with its traceback by default: callers that
    care pass their own callback; the others learn of errors from the calls they make."""


def from_fleet_config(fc: FleetConfig, host: str) -> Credentials:
    return Credentials(
        servers=list(fc.servers), tls_ca=fc.tls_ca, tls_cert=fc.tls_cert, tls_key=fc.tls_key,
        nkey_seed_file=fc.nkey_seed_file, creds_file=fc.creds_file,
        name=f"roguewatch-host-{host}", inbox_prefix=subjects.inbox_prefix(host),
    )  # fmt: skip
