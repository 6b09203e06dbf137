"""roguewatchd's configuration: the embedded defaults, and a YAML file that overrides them.

Owns the keys, their defaults and their validation. A bad file is an error that names the file
and the key; nothing here is read again on the hot path.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field, fields

from roguewatch.core import paths, yamlfile
from roguewatch.policy.fleetconfig import FleetConfig, FleetConfigError
from roguewatch.policy.fleetconfig import parse as parse_fleet


class ConfigError(Exception):
    pass


@dataclass
class Config:
    events_endpoint: str = paths.EVENTS_ENDPOINT
    control_endpoint: str = paths.CONTROL_ENDPOINT
    # Ring buffer size in 4 KiB pages (a power of two): 2048 = 8 MiB.
    ringbuf_pages: int = 2048
    # Most events per bus message; a batch is also sent whenever the ring buffer is drained.
    batch_max: int = 1024
    # Budgets per session (probes/roguewatch.h): while the collector is behind, a session
    # that makes more than this many file records (or socket records) a second, past a burst
    # of session_budget_burst, has the excess dropped in the kernel and counted as its
    # losses, so that its flood leaves the ring to the other sessions. 0: no budgets.
    session_budget_rate: int = 20000
    session_budget_burst: int = 20000
    cache_dir: str = paths.CACHE_DIR
    # Adoption selectors: processes of these users or uids, or whose comm is listed, are
    # tracked from their exec on (and found by a /proc scan at start).
    adopt_users: list[str] = field(default_factory=lambda: ["agent"])
    adopt_uids: list[int] = field(default_factory=list)
    adopt_comms: list[str] = field(default_factory=list)
    # Print every event on stdout (the foreground mode of `make run`).
    print_events: bool = False
    # The alert stream.
    alerts_endpoint: str = paths.ALERTS_ENDPOINT
    alerts_file: str = paths.ALERTS_FILE
    alerts_file_max_bytes: int = 10 * 1024 * 1024
    alerts_file_keep: int = 5
    journald: bool = True
    # Print alerts on stdout (the foreground mode of `make run`).
    print_alerts: bool = True
    # Rules: the packaged packs, then these directories (missing ones are skipped).
    rules_dirs: list[str] = field(default_factory=lambda: [paths.RULES_DIR])
    # Patterns (name, glob, tag:T1053, category:egress) to disable, then enable.
    rules_disable: list[str] = field(default_factory=list)
    rules_enable: list[str] = field(default_factory=list)
    # The policy applied to every session (egress allowlist, protected paths), or none.
    policy_file: str = ""
    # Identical alerts within this many seconds become one with a count.
    dedup_window: int = 10
    # Carry out rules' actions (kill, freeze); false: record them in alerts only.
    enforce: bool = True
    # Policies with adoption selectors (`adopt: {users, uids, comms}` + a policy), one per file.
    policies_dir: str = paths.POLICIES_DIR
    # Prometheus metrics on 127.0.0.1:PORT (0: off).
    metrics_port: int = 0
    # Host names in egress allowlists are re-resolved on their DNS TTL; this often when DNS
    # gives none (a name from /etc/hosts).
    egress_refresh_s: float = 60.0
    # Filesystem watchers on persistence and oversight paths, with baselines and restore.
    watch_files: bool = True
    watch_extra: list[str] = field(default_factory=list)
    state_dir: str = paths.STATE_DIR
    # The collector's maps, egress programs and tracepoint links pinned in bpffs: a killed
    # collector leaves the kernel side in force (tracking, egress denial) for the next one.
    keep_sensors_on_exit: bool = True
    baseline_max_copy_bytes: int = 1024 * 1024
    # Where the service writes its live counters for `roguewatch status`.
    status_file: str = paths.STATUS_FILE
    # Alerts, sessions and heartbeats to a NATS JetStream fleet; policies and rules from it
    # (a mapping of its own: roguewatch.policy.fleetconfig, docs/fleet.md). Off by default.
    fleet: FleetConfig = field(default_factory=FleetConfig)

    def monitor_config_paths(self) -> list[str]:
        """Where this configuration keeps what configures the monitor (rules, policies, the
        fleet's copies of both): no agent may change them, wherever they are."""
        out = [*self.rules_dirs, self.policies_dir]
        if self.fleet.enabled:
            out += [self.fleet.rules_dir, self.fleet.policies_dir]
        # The directories of its sockets too (a private collector's, made by `run`'s
        # launcher, are the launcher's business: paths.PRIVATE_RUN).
        out += [d for d in self.socket_dirs()
                if not (d + "/").startswith(paths.PRIVATE_RUN + "/")]  # fmt: skip
        return list(dict.fromkeys(os.path.normpath(p) for p in out if p))

    def socket_dirs(self) -> list[str]:
        """The directories of this configuration's sockets: each a 0700 directory of the
        monitor's own, never a shared one (``bus.prepare_endpoint``)."""
        out = [os.path.dirname(p[len("ipc://") :])
               for p in (self.events_endpoint, self.control_endpoint, self.alerts_endpoint)
               if p.startswith("ipc://")]  # fmt: skip
        return list(dict.fromkeys(os.path.normpath(p) for p in out if p and p != "/"))

    def runtime_dirs(self) -> list[str]:
        """The monitor's runtime directories, the host's (``paths.RUNTIME_DIRS``) and this
        configuration's socket directories: what is in them is made anew by every start."""
        return list(dict.fromkeys([*paths.RUNTIME_DIRS, *self.socket_dirs()]))

    def rule_dirs_in_effect(self) -> list[str]:
        """The rule directories that exist, the fleet's last (when the fleet is on)."""
        dirs = [d for d in self.rules_dirs if os.path.isdir(d)]
        if self.fleet.enabled and self.fleet.rules and os.path.isdir(self.fleet.rules_dir):
            dirs.append(self.fleet.rules_dir)
        return dirs

    def adopted_uids(self) -> list[int]:
        """uids of adopt_uids plus those of adopt_users that exist on this host."""
        return sorted(set(self.adopt_uids) | set(uids_of(self.adopt_users)))


def uids_of(users: list[str]) -> list[int]:
    """The uids of these user names; a user that does not exist (yet) adopts nothing."""
    uids = []
    for user in users:
        try:
            uids.append(pwd.getpwnam(user).pw_uid)
        except KeyError:
            pass
    return uids


_TYPES = {f.name: f.type for f in fields(Config)}


DEFAULT_PATH = paths.CONFIG_FILE


def load(path: str | None) -> Config:
    """The embedded defaults, overridden by ``path`` (or by /etc/roguewatch/roguewatchd.yaml
    when it exists and no path is given)."""
    cfg = Config()
    if path is None:
        if not os.path.exists(DEFAULT_PATH):
            return cfg
        path = DEFAULT_PATH
    data = yamlfile.read(path, ConfigError) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    for key, value in data.items():
        if key not in _TYPES:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(_TYPES)})")
        if key == "fleet":
            try:
                cfg.fleet = parse_fleet(value, path)
            except FleetConfigError as exc:
                raise ConfigError(str(exc)) from None
            continue
        default = getattr(cfg, key)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # seconds written as a whole number
        ok = (
            isinstance(value, list)
            and all(isinstance(v, type(default[0]) if default else (str, int)) for v in value)
            if isinstance(default, list)
            else isinstance(value, type(default))
            and not (isinstance(value, bool) and not isinstance(default, bool))
        )
        if not ok:
            raise ConfigError(f"{path}: key {key!r}: expected {_TYPES[key]}, got {value!r}")
        setattr(cfg, key, value)
    if cfg.egress_refresh_s < 1:
        raise ConfigError(f"{path}: key 'egress_refresh_s': expected at least 1 (seconds)")
    if cfg.session_budget_rate < 0 or cfg.session_budget_rate > 1_000_000_000:
        raise ConfigError(f"{path}: key 'session_budget_rate': expected 0 (off) to 1e9 a second")
    if cfg.session_budget_burst < 1 and cfg.session_budget_rate:
        raise ConfigError(f"{path}: key 'session_budget_burst': expected at least 1 record")
    if cfg.ringbuf_pages <= 0 or cfg.ringbuf_pages & (cfg.ringbuf_pages - 1):
        raise ConfigError(f"{path}: key 'ringbuf_pages': expected a power of two")
    return cfg
