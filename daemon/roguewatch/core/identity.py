"""Process identity: the exec id that names one process image for its whole life.

Owns the format ``pid-start`` (start: the boot-relative nanosecond of the process's fork or
last exec, as the kernel and /proc give it), Tetragon-style: a reused pid is a new process,
so an alert, a kill or a report never confuses two processes that shared a pid.
"""

from __future__ import annotations

import secrets


def exec_id(pid: int, start_ns: int | None) -> str:
    """The exec id of a process; "" when its start time is unknown (it is gone)."""
    return f"{pid}-{start_ns}" if start_ns is not None and pid else ""


def new_session_id() -> int:
    """A random id for a session started by `run` or `record`: 61 bits, below the ranges the
    kernel and the /proc scan give adopted sessions (``probes.layout``)."""
    return secrets.randbits(61) or 1
