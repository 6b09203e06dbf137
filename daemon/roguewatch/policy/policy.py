"""Policies: what one agent may do (mode, egress allowlist, protected paths, lists).

Owns reading and validating a policy file. A bad entry is an error that names the file, the
entry and what was expected; a policy that loads is complete and checked. Until per-session
policies arrive with `roguewatch run`, the daemon applies one policy to every session.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from roguewatch.core import yamlfile
from roguewatch.policy.config import uids_of
from roguewatch.policy.egress import parse_egress_spec
from roguewatch.policy.refusals import DEFAULT_REFUSALS, REFUSALS


@dataclass
class StaticPolicy:
    """A plain policy (from a policy file, a fixture or the daemon's config)."""

    egress_allow: tuple[str, ...] = ()
    protect: tuple[str, ...] = ()
    mode: str = "enforce"
    lists: dict[str, list[str]] = field(default_factory=dict)
    # Where `roguewatch run` lets the agent write (Landlock); None: everywhere but the
    # monitor's own paths, which are out of reach in any case.
    writable: tuple[str, ...] | None = None
    # The syscalls `roguewatch run` refuses the agent (seccomp; policy/refusals.py).
    refuse: tuple[str, ...] = DEFAULT_REFUSALS
    # How the operator's harness asks the agent to stop (a shutdown drill runs it): argv.
    shutdown: tuple[str, ...] = ()
    # What happens to the session while the monitor is not watching it (a component died or
    # stopped answering): frozen until coverage is back, killed, or left running. Observe
    # mode never acts: its sessions continue whatever this says.
    on_monitor_loss: str = "freeze"


ON_MONITOR_LOSS = ("freeze", "kill", "continue")


class PolicyError(Exception):
    pass


_KEYS = {"mode", "egress", "protect", "lists", "writable", "refuse", "name", "on_monitor_loss",
         "shutdown"}  # fmt: skip


def from_dict(data: object, where: str) -> StaticPolicy:
    if data is None:
        return StaticPolicy()
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: expected a mapping with mode, egress, protect")
    unknown = set(data) - _KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown key {sorted(unknown)[0]!r} "
                          f"(known: {', '.join(sorted(_KEYS))})")  # fmt: skip
    mode = data.get("mode", "enforce")
    if mode not in ("enforce", "observe"):
        raise PolicyError(f"{where}: mode: expected 'enforce' or 'observe', got {mode!r}")
    egress = data.get("egress") or {}
    if not isinstance(egress, dict) or set(egress) - {"allow"}:
        raise PolicyError(f"{where}: egress: expected a mapping with an 'allow' list")
    allow = egress.get("allow") or []
    if not isinstance(allow, list):
        raise PolicyError(f"{where}: egress.allow: expected a list of destinations")
    for i, spec in enumerate(allow):
        if not isinstance(spec, str):
            raise PolicyError(f"{where}: egress.allow[{i}]: expected a string, got {spec!r}")
        try:
            rule = parse_egress_spec(spec)
        except ValueError as exc:
            raise PolicyError(f"{where}: egress.allow[{i}]: {exc}") from None
        if rule.host and ":" not in spec:
            raise PolicyError(f"{where}: egress.allow[{i}]: {spec!r}: expected a CIDR or "
                              "HOST:PORT (a host name needs its port)")  # fmt: skip
    protect = data.get("protect") or []
    if not isinstance(protect, list):
        raise PolicyError(f"{where}: protect: expected a list of absolute paths")
    for i, p in enumerate(protect):
        if not isinstance(p, str) or not p.startswith("/"):
            raise PolicyError(f"{where}: protect[{i}]: expected an absolute path, got {p!r}")
    on_loss = data.get("on_monitor_loss", "freeze")
    if on_loss not in ON_MONITOR_LOSS:
        raise PolicyError(f"{where}: on_monitor_loss: expected one of "
                          f"{', '.join(ON_MONITOR_LOSS)}, got {on_loss!r}")  # fmt: skip
    lists = data.get("lists") or {}
    if not isinstance(lists, dict) or not all(isinstance(v, list) for v in lists.values()):
        raise PolicyError(f"{where}: lists: expected a mapping of names to lists")
    return StaticPolicy(
        egress_allow=tuple(allow),
        protect=tuple(os.path.normpath(p) for p in protect),
        mode=mode,
        lists={k: [str(x) for x in v] for k, v in lists.items()},
        writable=_writable(data.get("writable"), where),
        refuse=_refuse(data.get("refuse", list(DEFAULT_REFUSALS)), where),
        on_monitor_loss=on_loss,
        shutdown=_shutdown(data.get("shutdown"), where),
    )


def _shutdown(command: object, where: str) -> tuple[str, ...]:
    """`shutdown:`: a command line (a string, split as the shell would) or a list of words."""
    if command is None:
        return ()
    if isinstance(command, str):
        try:
            words = shlex.split(command)
        except ValueError as exc:
            raise PolicyError(f"{where}: shutdown: {exc}") from None
    elif isinstance(command, list) and all(isinstance(w, str) for w in command):
        words = list(command)
    else:
        raise PolicyError(f"{where}: shutdown: expected a command (a string or a list of words)")
    if not words:
        raise PolicyError(f"{where}: shutdown: the command is empty")
    return tuple(words)


def _refuse(names: object, where: str) -> tuple[str, ...]:
    """`refuse:`: names of policy/refusals.py (an empty list refuses nothing)."""
    if not isinstance(names, list):
        raise PolicyError(f"{where}: refuse: expected a list of names ({', '.join(REFUSALS)})")
    for i, n in enumerate(names):
        if n not in REFUSALS:
            raise PolicyError(f"{where}: refuse[{i}]: expected one of {', '.join(REFUSALS)}, "
                              f"got {n!r}")  # fmt: skip
    return tuple(names)


def _writable(roots: object, where: str) -> tuple[str, ...] | None:
    """`writable:`: absolute paths that exist (Landlock rules are built on what is there)."""
    if roots is None:
        return None
    if not isinstance(roots, list):
        raise PolicyError(f"{where}: writable: expected a list of absolute paths")
    for i, p in enumerate(roots):
        if not isinstance(p, str) or not p.startswith("/"):
            raise PolicyError(f"{where}: writable[{i}]: expected an absolute path, got {p!r}")
        if not os.path.exists(p):
            raise PolicyError(f"{where}: writable[{i}]: {p!r} does not exist")
    return tuple(os.path.normpath(p) for p in roots)


def load(path: str) -> StaticPolicy:
    return from_dict(yamlfile.read(path, PolicyError), path)


def default() -> StaticPolicy:
    """The policy without a policy file: loopback only, nothing protected, enforce."""
    return StaticPolicy(egress_allow=("127.0.0.0/8", "::1/128"))


@dataclass
class Adoption:
    """Agents the daemon adopts (by user, uid or comm) and the policy their sessions get."""

    users: list[str]
    uids: list[int]
    comms: list[str]
    policy: StaticPolicy
    source: str

    def all_uids(self) -> list[int]:
        return [*self.uids, *uids_of(self.users)]

    def matches(self, uid: int, comm: str) -> bool:
        return uid in self.all_uids() or comm[:15] in {c[:15] for c in self.comms}


def load_adoptions(directory: str) -> list[Adoption]:
    """Every `*.yaml` in policies.d: an `adopt:` block (users, uids, comms) + a policy."""
    out: list[Adoption] = []
    if not os.path.isdir(directory):
        return out
    for name in sorted(os.listdir(directory)):
        if not name.endswith((".yaml", ".yml")):
            continue
        path = os.path.join(directory, name)
        data = yamlfile.read(path, PolicyError) or {}
        if not isinstance(data, dict):
            raise PolicyError(f"{path}: expected a mapping with adopt and policy keys")
        adopt = data.pop("adopt", None) or {}
        if not isinstance(adopt, dict) or set(adopt) - {"users", "uids", "comms"}:
            raise PolicyError(f"{path}: adopt: expected a mapping of users, uids, comms")
        users, uids, comms = (adopt.get(k) or [] for k in ("users", "uids", "comms"))
        if (
            not all(isinstance(u, str) for u in users)
            or not all(isinstance(u, int) for u in uids)
            or not all(isinstance(c, str) for c in comms)
        ):
            raise PolicyError(f"{path}: adopt: users and comms are names, uids are numbers")
        out.append(Adoption(list(users), list(uids), list(comms), from_dict(data, path), path))
    return out


def from_wire(d: Mapping[str, Any]) -> StaticPolicy:
    """The policy a session was registered with (``as_dict``'s form, as the `session` start
    event carries it on the stream and in recordings); missing keys take their defaults."""
    writable = d.get("writable")
    return StaticPolicy(
        egress_allow=tuple(d.get("egress_allow", ())),
        protect=tuple(d.get("protect", ())),
        mode=d.get("mode", "enforce"),
        lists=dict(d.get("lists", {})),
        writable=None if writable is None else tuple(writable),
        refuse=tuple(d.get("refuse", DEFAULT_REFUSALS)),
        on_monitor_loss=str(d.get("on_monitor_loss", "freeze")),
    )


def as_dict(p: StaticPolicy) -> dict:
    return {"egress_allow": list(p.egress_allow), "protect": list(p.protect), "mode": p.mode,
            "lists": dict(p.lists),
            "writable": None if p.writable is None else list(p.writable),
            "refuse": list(p.refuse), "on_monitor_loss": p.on_monitor_loss}  # fmt: skip


def load_adoption_dirs(directories: list[str]) -> list[Adoption]:
    """The policies.d files of every directory in turn (the local one, then the fleet's)."""
    out: list[Adoption] = []
    for d in directories:
        if d:
            out += load_adoptions(d)
    return out


def digest(adoptions: list[Adoption]) -> str:
    """A short hash of the policies in effect (their selectors and contents, not their
    formatting): what a host reports running, and what `roguewatch fleet policy list` shows."""
    import hashlib
    import json

    canon = [
        {"name": os.path.splitext(os.path.basename(a.source))[0], "users": a.users,
         "uids": a.uids, "comms": a.comms, "policy": as_dict(a.policy)}
        for a in adoptions
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:16]
