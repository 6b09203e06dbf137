"""The records that cross module and process boundaries, typed: event, alert, process record,
session entry; and the one constructor of an alert.

Owns their shapes. On the bus and in files they stay plain maps (msgpack, JSON): these
``TypedDict``s describe them for readers and type checkers and cost nothing at run time. The
alert is the contract other tools rely on (``docs/architecture.md``); extend it, never rename
its fields.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

from roguewatch.core.timefmt import rfc3339


class Event(TypedDict, total=False):
    """One event of the stream (``docs/events.md`` has every type's own fields)."""

    type: str
    ts: int  # ns since the Unix epoch
    session: int
    pid: int
    tid: int
    ppid: int
    uid: int
    gid: int
    comm: str
    ret: int
    exec_id: str
    pexec_id: str
    exe: str
    flags: list[str]


class Ancestor(TypedDict):
    pid: int
    exe: str


class Alert(TypedDict):
    id: str
    ts: str  # RFC 3339, UTC, microseconds
    rule: str
    message: str
    category: str  # egress, persistence, shutdown_evasion, oversight_tampering, monitor
    severity: str  # info, low, medium, high, critical
    tags: list[str]
    session: str  # hex
    pid: int
    ppid: int
    uid: int
    comm: str
    exe: str
    cmdline: str
    exec_id: str
    lineage: list[Ancestor]
    event: dict[str, Any]  # the triggering event: type plus its own fields
    action: str  # alert, block, kill_process, kill_tree, kill_session, freeze, restore
    outcome: str
    count: int  # identical alerts this one stands for
    killed: int  # processes this alert's action ended
    origin: NotRequired[str]  # who raised a monitor alert that is not the evaluator's own


class ProcessRecord(TypedDict):
    """The evaluator's process table entry (``detect.proctable``)."""

    pid: int
    exec_id: str
    pexec_id: str
    session: int
    exe: str
    comm: str
    cmdline: str
    argv: list[str]
    cwd: str
    uid: int
    start: int
    exited: int  # ns of its exit, 0 while alive


class SessionEntry(TypedDict):
    """A live session as the collector lists it (control op ``sessions``)."""

    session: str  # hex
    name: str
    root: int
    cgroup: str
    mode: str
    pids: list[int]
    started: float
    adopted: bool
    lost: int  # its records dropped in the kernel over its budget (roguewatch.h)


@dataclass
class AlertIds:
    """Alert ids unique across evaluator restarts: ``<evaluator-start-ns hex>-<seq>``."""

    start_ns: int = field(default_factory=time.time_ns)
    seq: int = 0

    def next(self) -> str:
        self.seq += 1
        return f"{self.start_ns:x}-{self.seq}"


def make_alert(
    *,
    id: str,
    ts_ns: int,
    rule: str,
    message: str,
    category: str,
    severity: str,
    session: int = 0,
    event: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    pid: int = 0,
    ppid: int = 0,
    uid: int = 0,
    comm: str = "",
    exe: str = "",
    cmdline: str = "",
    exec_id: str = "",
    lineage: list[Ancestor] | None = None,
    action: str = "alert",
    outcome: str = "alert",
) -> Alert:
    """An alert with every field of the contract, from what the caller knows."""
    return {
        "id": id,
        "ts": rfc3339(ts_ns),
        "rule": rule,
        "message": message,
        "category": category,
        "severity": severity,
        "tags": list(tags or ()),
        "session": f"{session:x}",
        "pid": pid,
        "ppid": ppid,
        "uid": uid,
        "comm": comm,
        "exe": exe,
        "cmdline": cmdline,
        "exec_id": exec_id,
        "lineage": list(lineage or ()),
        "event": dict(event or {}),
        "action": action,
        "outcome": outcome,
        "count": 1,
        "killed": 0,
    }
