"""The one reader of /proc for a single process: stat, status, cmdline, links, fdinfo, cgroup.

Owns parsing ``/proc/PID/stat`` (whose comm may hold spaces and parentheses: the fields
start after the *last* ``)``), the keys of ``/proc/PID/status``, and the boot-to-wall
clock conversion of start times. Every function answers None (or an empty value) for a
process that is gone instead of raising: a process may exit between any two lines.

Listing processes is psutil's (``pids``); reading one process's start time to the clock tick
is ours (psutil gives it as float seconds since boot, too coarse for exec ids).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
PF_EXITING = 0x4
TICK_NS = 1_000_000_000 // CLK_TCK


@dataclass(frozen=True)
class Stat:
    state: str  # R, S, D, T (stopped), t (traced), Z...
    ppid: int
    start_ns: int  # boot-relative, clock-tick resolution
    sid: int = 0  # its session id (setsid), as /proc/PID/stat has it
    flags: int = 0  # the task's PF_* flags (PF_EXITING: it is dying)

    @property
    def exiting(self) -> bool:
        """Dying or dead: past its exit (a zombie, or between exit and release)."""
        return self.state in ("Z", "X", "x") or bool(self.flags & PF_EXITING)


def stat(pid: int | str) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        fields = raw[raw.rindex(b")") + 2 :].split()
        return Stat(
            fields[0].decode(),
            int(fields[1]),
            int(fields[19]) * TICK_NS,
            sid=int(fields[3]),
            flags=int(fields[6]),
        )
    except (OSError, ValueError, IndexError):
        return None


def start_ns(pid: int) -> int | None:
    """Boot-relative start time of a process (clock-tick resolution); None when gone."""
    st = stat(pid)
    return st.start_ns if st is not None else None


def ppid(pid: int) -> int:
    st = stat(pid)
    return st.ppid if st is not None else 0


def boot_to_wall_offset() -> int:
    """Nanoseconds to add to CLOCK_BOOTTIME to get the Unix time."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def started_wall_ns(pid: int) -> int | None:
    """When a process started, in Unix-time ns (tick resolution); None when gone."""
    st = start_ns(pid)
    return None if st is None else boot_to_wall_offset() + st


def stopped(pid: int) -> bool:
    """Whether the process is stopped (state T): a SIGSTOP it could not refuse."""
    st = stat(pid)
    return st is not None and st.state == "T"


def exiting(pid: int) -> bool:
    """Whether a user process is gone or on its way out: its memory is released (an empty
    cmdline) while it may still be closing its files (a collector's BPF programs: seconds)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return not f.read(1)
    except OSError:
        return True


def cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode(errors="surrogateescape") for a in raw.split(b"\0")[:-1]]


def comm(pid: int) -> str | None:
    """The process's comm; bytes that are not UTF-8 (any a task may name itself) replaced."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode(errors="replace")
    except OSError:
        return None


def readlink(pid: int, what: str) -> str | None:
    """``exe``, ``cwd``, ``root`` or ``fd/N`` of a process, as the kernel names it."""
    try:
        return os.readlink(f"/proc/{pid}/{what}")
    except OSError:
        return None


def uid(pid: int) -> int | None:
    """The real uid (the owner of /proc/PID)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _keyed(path: str) -> dict[str, str]:
    """A ``key: value`` file of /proc as a mapping (empty when it is gone)."""
    out: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                out[key] = value.strip()
    except OSError:
        pass
    return out


def status(pid: int | str) -> dict[str, str]:
    """``/proc/PID/status`` as a mapping of its keys (empty when gone)."""
    return _keyed(f"/proc/{pid}/status")


def fdinfo(pid: int, fd: int) -> dict[str, str]:
    """``/proc/PID/fdinfo/FD`` as a mapping of its keys (``pos``, ``flags``, a pidfd's
    ``Pid``...); empty when the process or the fd is gone."""
    return _keyed(f"/proc/{pid}/fdinfo/{fd}")


def cgroup_path(pid: int) -> str | None:
    """The process's cgroup v2 path (``0::/...``), relative to the v2 mount; None when gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        return None
    return ""


def threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def pids() -> list[int]:
    """Every process now (psutil, imported here: the collector and the launcher never list)."""
    import psutil

    return psutil.pids()


@dataclass(frozen=True)
class SignalMasks:
    """Signal sets of a process (signal N is bit N-1), as ``/proc/PID/status`` shows them."""

    ignored: int  # SigIgn: dispositions set to SIG_IGN (shared by every thread)
    caught: int  # SigCgt: a handler installed
    blocked: int  # SigBlk, and-ed over every thread: blocked for the process as a whole


def _status_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _status_hex(text: str, key: str) -> int:
    """The hexadecimal value of one ``key:`` line of a status text (0: absent)."""
    i = text.find("\n" + key + ":")
    if i < 0:
        return 0
    i += len(key) + 2
    end = text.find("\n", i)
    try:
        return int(text[i : end if end >= 0 else len(text)].strip(), 16)
    except ValueError:
        return 0


def signal_masks(pid: int) -> SignalMasks | None:
    """The process's ignored, caught and blocked signals now; None when it is gone.

    A signal sent to a process waits only while *every* thread blocks it (any other thread
    takes it), so the blocked set is the intersection over ``/proc/PID/task/*/status``; a
    thread inside sigsuspend or pselect shows the mask it waits with."""
    text = _status_text(f"/proc/{pid}/status")
    if text is None:
        return None
    blocked = _status_hex(text, "SigBlk")
    if "\nThreads:\t1\n" not in text and blocked:
        for tid in threads(pid):
            if tid != pid:
                t = _status_text(f"/proc/{pid}/task/{tid}/status")
                if t is not None:
                    blocked &= _status_hex(t, "SigBlk")
    return SignalMasks(_status_hex(text, "SigIgn"), _status_hex(text, "SigCgt"), blocked)


def environ_vars(pid: int, names: tuple[bytes, ...]) -> dict[str, str]:
    """The values of some variables of ``/proc/PID/environ`` (the environment the process
    was exec'd with); empty when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for name in names:
        key = name + b"="
        if data.startswith(key):
            i = 0
        else:
            i = data.find(b"\0" + key)
            if i < 0:
                continue
            i += 1
        end = data.find(b"\0", i)
        out[name.decode()] = data[i + len(key) : end if end >= 0 else len(data)].decode(
            errors="replace"
        )
    return out
