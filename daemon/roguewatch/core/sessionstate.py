"""What a collector pins on disk so that the monitor recovers whole after it dies.

Owns one root-only file, ``<state dir>/pinned.json``: the live sessions the collector holds
(root pid and start time, cgroup, mode, policy, egress allowlist, the pids it last saw in
them), the monitor's own pids it guards (with their start times: a reused pid is not ours),
the ids of the BPF objects it pinned in bpffs (``sensors.pins``: the next collector takes
over only objects with these ids), and whether the collector ended cleanly. The collector
rewrites it whenever that changes; who outlives a collector reads it: the next collector
takes the sessions back (from the pinned session map, else by registering them again) and
guards the pids again (and, after an unclean end, keeps the last good baselines instead of
taking the gap's state for one); the service and its supervisor fail its sessions closed while no
collector watches them (``respond.failclosed``).

It must not decide anything: it only reads and writes the record, atomically (a temporary
file renamed over it, 0600), and validates what it reads (a missing or broken file is an
empty record, never an exception).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field

PINNED_FILE = "pinned.json"


@dataclass
class PinnedSession:
    session: int
    root: int = 0
    root_start: int = 0  # boot-time ns of the root (procfs.start_ns): a reused pid differs
    cgroup: str = ""
    name: str = ""
    mode: str = "enforce"
    policy: dict = field(default_factory=dict)
    allow: list[str] | None = None  # the egress allowlist in the kernel (enforce mode)
    pids: list[int] = field(default_factory=list)
    adopted: bool = False

    @property
    def on_monitor_loss(self) -> str:
        if self.mode == "observe":
            return "continue"
        return str(self.policy.get("on_monitor_loss", "freeze"))


@dataclass
class Pinned:
    sessions: list[PinnedSession] = field(default_factory=list)
    guarded: list[tuple[int, int]] = field(default_factory=list)  # (pid, start ns)
    clean: bool = True  # the collector that wrote it ended as asked (or nothing was pinned)
    collector: int = 0  # the pid of the collector that wrote it
    exists: bool = False  # read from a file (False: nothing was pinned)
    pins: dict[str, int] = field(default_factory=dict)  # bpffs entry name -> object id


def path_in(state_dir: str) -> str:
    return os.path.join(state_dir, PINNED_FILE)


def read(state_dir: str) -> Pinned:
    """The record in ``state_dir``; an empty (clean) one when there is none or it is bad."""
    try:
        with open(path_in(state_dir)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return Pinned()
    if not isinstance(data, dict):
        return Pinned()
    sessions = []
    for s in data.get("sessions") or []:
        try:
            sessions.append(PinnedSession(
                session=int(s["session"]), root=int(s.get("root", 0)),
                root_start=int(s.get("root_start", 0)), cgroup=str(s.get("cgroup", "")),
                name=str(s.get("name", "")), mode=str(s.get("mode", "enforce")),
                policy=dict(s.get("policy") or {}),
                allow=None if s.get("allow") is None else [str(a) for a in s["allow"]],
                pids=[int(p) for p in s.get("pids") or []], adopted=bool(s.get("adopted")),
            ))  # fmt: skip
        except (KeyError, TypeError, ValueError):
            continue
    guarded = []
    for g in data.get("guarded") or []:
        with contextlib.suppress(TypeError, ValueError):
            guarded.append((int(g[0]), int(g[1])))
    pins = {}
    if isinstance(data.get("pins"), dict):
        for name, oid in data["pins"].items():
            with contextlib.suppress(TypeError, ValueError):
                pins[str(name)] = int(oid)
    return Pinned(sessions, guarded, bool(data.get("clean", False)),
                  int(data.get("collector", 0) or 0), True, pins)  # fmt: skip


def write(state_dir: str, pinned: Pinned) -> None:
    """Atomically (rename), root-only. Best effort: an OSError is the caller's to log."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    data = {
        "version": 1, "clean": pinned.clean, "collector": pinned.collector,
        "sessions": [asdict(s) for s in pinned.sessions],
        "guarded": [list(g) for g in pinned.guarded], "pins": pinned.pins,
    }  # fmt: skip
    dst = path_in(state_dir)
    tmp = f"{dst}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, sort_keys=True)
    os.replace(tmp, dst)
