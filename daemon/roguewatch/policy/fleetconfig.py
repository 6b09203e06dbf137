"""The `fleet:` mapping of roguewatchd's configuration: its keys, defaults and validation.

Owns what a host needs to join a fleet (servers, identity files, its host id, the spool and its
bound, heartbeats, which fleet policies and rules it takes, whether remote actions are allowed
and from whom), and the paths derived from ``state_dir``. A bad value is an error naming the
key as ``fleet.KEY``. Off by default: a single host keeps working alone.

It must not connect anywhere nor read the identity files (``roguewatch.fleet.connect`` does,
and checks they are root-only); nothing here is secret, so a FleetConfig may be printed.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field, fields

from roguewatch.core import paths

# A subject token (NATS): no dots, no wildcards, no white space.
TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A public NKey of a user: 'U' and 55 base32 characters.
NKEY_USER = re.compile(r"^U[A-Z2-7]{55}$")
DEFAULT_STATE = f"{paths.STATE_DIR}/fleet"


class FleetConfigError(ValueError):
    pass


@dataclass
class FleetConfig:
    enabled: bool = False
    # NATS servers (nats:// or tls://), tried in turn; the cluster's other members are learnt.
    servers: list[str] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    # This host's token in subjects and message ids ("": the host name, dots made dashes).
    host_id: str = ""
    # Spool, saved positions, fleet policies and rules (root-only).
    state_dir: str = DEFAULT_STATE
    # The spool's bound: records beyond it are dropped, counted and raised as a critical alert.
    spool_max_bytes: int = 256 * 1024 * 1024
    heartbeat_s: float = 10.0
    # Longest wait between two reconnection attempts (back-off doubles up to it).
    reconnect_max_s: float = 30.0
    # TLS: the CA that signed the servers' certificates, and this host's client certificate.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # Credentials, root-only files: an NKey seed file, or a creds file (JWT + seed).
    nkey_seed_file: str = ""
    creds_file: str = ""
    # The key-value bucket of fleet policies (policy.NAME) and rule files (rules.NAME).
    policy_bucket: str = "ROGUEWATCH_POLICY"
    # Which fleet policies this host applies (policies.d files by name; "*": all of them).
    policies: list[str] = field(default_factory=lambda: ["*"])
    # Apply the fleet's rule files (after the local rules.d).
    rules: bool = True
    # Remote kill / freeze of a session from the fleet side, signed by one of these identities
    # (public user NKeys, U...). Off unless enabled; every one is recorded as an alert here.
    remote_actions: bool = False
    remote_identities: list[str] = field(default_factory=list)

    # -- derived paths -----------------------------------------------------------------------

    @property
    def spool_dir(self) -> str:
        return os.path.join(self.state_dir, "spool")

    @property
    def policies_dir(self) -> str:
        return os.path.join(self.state_dir, "policies.d")

    @property
    def rules_dir(self) -> str:
        return os.path.join(self.state_dir, "rules.d")

    def host(self) -> str:
        """The host id in effect: the configured one, or the host name made a subject token."""
        if self.host_id:
            return self.host_id
        name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:64]
        return name or "localhost"


_FIELDS = {f.name: f for f in fields(FleetConfig)}


def parse(value: object, where: str) -> FleetConfig:
    """A FleetConfig from the YAML value of ``fleet:`` (None: every default).

    ``where`` is the file name for messages: ``FILE: key 'fleet.servers': expected ...``."""
    fc = FleetConfig()
    if value is None:
        return fc
    if not isinstance(value, dict):
        raise FleetConfigError(f"{where}: key 'fleet': expected a mapping of fleet keys")
    for key, v in value.items():
        name = f"fleet.{key}"
        if key not in _FIELDS:
            raise FleetConfigError(f"{where}: unknown key {name!r} "
                                   f"(known: {', '.join(_FIELDS)})")  # fmt: skip
        default = getattr(fc, key)
        if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(default, list):
            ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
        elif isinstance(default, bool):
            ok = isinstance(v, bool)
        else:
            ok = isinstance(v, type(default)) and not isinstance(v, bool)
        if not ok:
            raise FleetConfigError(f"{where}: key {name!r}: expected "
                                   f"{_FIELDS[key].type}, got {v!r}")  # fmt: skip
        setattr(fc, key, v)
    _check(fc, where)
    return fc


def _check(fc: FleetConfig, where: str) -> None:
    def bad(key: str, why: str) -> FleetConfigError:
        return FleetConfigError(f"{where}: key 'fleet.{key}': {why}")

    if fc.host_id and not TOKEN.match(fc.host_id):
        raise bad("host_id", f"expected letters, digits, '-' or '_' (a subject token), "
                  f"got {fc.host_id!r}")  # fmt: skip
    if not fc.servers:
        raise bad("servers", "expected at least one server URL")
    for s in fc.servers:
        if not re.match(r"^(nats|tls)://[^\s/]+$", s):
            raise bad("servers", f"expected nats://HOST:PORT or tls://HOST:PORT, got {s!r}")
        if "@" in s:
            raise bad("servers", "credentials do not belong in a server URL (they would show "
                      "in logs): use nkey_seed_file or creds_file")  # fmt: skip
    if fc.spool_max_bytes < 1024 * 1024:
        raise bad("spool_max_bytes", "expected at least 1048576 (1 MiB)")
    if fc.heartbeat_s < 1:
        raise bad("heartbeat_s", "expected at least 1 (seconds)")
    if fc.reconnect_max_s < 0.1:
        raise bad("reconnect_max_s", "expected at least 0.1 (seconds)")
    if not os.path.isabs(fc.state_dir):
        raise bad("state_dir", f"expected an absolute path, got {fc.state_dir!r}")
    if not TOKEN.match(fc.policy_bucket):
        raise bad("policy_bucket", f"expected a bucket name (a subject token), "
                  f"got {fc.policy_bucket!r}")  # fmt: skip
    for name in fc.policies:
        if name != "*" and not TOKEN.match(name):
            raise bad("policies", f"expected policy names or '*', got {name!r}")
    if bool(fc.tls_cert) != bool(fc.tls_key):
        raise bad("tls_cert" if fc.tls_key else "tls_key",
                  "a client certificate needs both tls_cert and tls_key")  # fmt: skip
    if fc.nkey_seed_file and fc.creds_file:
        raise bad("creds_file", "give either nkey_seed_file or creds_file, not both")
    for key in ("tls_ca", "tls_cert", "tls_key", "nkey_seed_file", "creds_file"):
        p = getattr(fc, key)
        if p and not os.path.isabs(p):
            raise bad(key, f"expected an absolute path, got {p!r}")
    for ident in fc.remote_identities:
        if not NKEY_USER.match(ident):
            raise bad("remote_identities", f"expected public user NKeys (U + 55 characters), "
                      f"got {ident!r}")  # fmt: skip
    if fc.remote_actions and not fc.remote_identities:
        raise bad("remote_actions", "remote actions need at least one of remote_identities "
                  "(the identities allowed to ask for them)")  # fmt: skip
