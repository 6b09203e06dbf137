"""Mounts over what the monitor watches: found in the mount table, and undone.

Owns three things about a mount a process made (a `mount` event: mount(2), or move_mount(2)
of the new mount API): where its mount point is (the event's target, resolved against the
process's working directory or the move's directory fd), whether that mount point covers a
watched path (the path itself, a directory above it, or a path inside a watched directory: a
tmpfs over /etc/cron.d or over the alert log's directory hides what is written there; a bind
mount onto a protected file changes its content without a write to it), and unmounting it
(``umount2(MNT_DETACH)``) in the mount namespace the process made it in: from here when that
is ours, from a child that joined it (``setns`` on /proc/PID/ns/mnt) otherwise.

It reads /proc/PID/mountinfo, never a path through the mount: what an agent mounted is not to
be walked into. It must not decide whether to undo: its caller says (enforce mode).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from roguewatch.core.fspath import is_under

MNT_DETACH = 2
CLONE_NEWNS = 0x00020000
AT_FDCWD = -100
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
# Propagation changes (MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED) and remounts make no
# new mount: `unshare -m` makes "/" private, which must never be taken for a mount over it.
_NO_NEW_MOUNT = MS_REMOUNT | (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20)


def makes_a_mount(ev: dict) -> bool:
    """Whether a `mount` event attached something new (a file system, a bind, a move)."""
    if ev.get("umount"):
        return False
    if ev.get("move"):
        return True
    flags = int(ev.get("mount_flags") or 0)
    if flags & (MS_BIND | MS_MOVE):
        return True
    return not flags & _NO_NEW_MOUNT


@dataclass
class Mount:
    mount_id: int
    point: str
    fstype: str
    source: str


def _unescape(s: str) -> str:
    """mountinfo's octal escapes (\\040 a space, \\011 a tab, \\012, \\134)."""
    out, i = [], 0
    while i < len(s):
        code = s[i + 1 : i + 4]
        if s[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mounts(pid: int) -> list[Mount]:
    """The mount table of ``pid``'s mount namespace, in mount order (empty when it is gone)."""
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        left, _, right = line.partition(" - ")
        f1, f2 = left.split(), right.split()
        if len(f1) < 5 or len(f2) < 2:
            continue
        out.append(Mount(int(f1[0]), _unescape(f1[4]), f2[0], _unescape(f2[1])))
    return out


def mount_point(ev: dict, cwd: str | None) -> str:
    """The mount point a `mount` event names, absolute ('' when it cannot be known)."""
    target = str(ev.get("target") or "")
    pid = int(ev.get("pid") or 0)
    if target.startswith("/"):
        return os.path.normpath(target)
    base = cwd
    dirfd = int(ev.get("dirfd", AT_FDCWD))
    if ev.get("move") and dirfd != AT_FDCWD:
        try:
            base = os.readlink(f"/proc/{pid}/fd/{dirfd}")
        except OSError:
            return ""
    if not base:
        return ""
    return os.path.normpath(os.path.join(base, target)) if target else os.path.normpath(base)


def covers(point: str, watched: list[str]) -> str | None:
    """The watched path a mount at ``point`` hides or replaces, if any: the path itself, one
    below the mount point, or the mount point inside a watched directory. (Never "/": the
    root is not unmounted, whatever is mounted there.)"""
    if point == "/":
        return None
    for w in watched:
        if point == w or is_under(w, point) or is_under(point, w):
            return w
    return None


def topmost(pid: int, point: str) -> Mount | None:
    """The mount on top at ``point`` in ``pid``'s namespace (the last one mounted there)."""
    found = None
    for m in mounts(pid):
        if m.point == point:
            found = m
    return found


def same_namespace(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return False


def _umount2(point: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(point.encode(), MNT_DETACH) != 0:
        return ctypes.get_errno()
    return 0


def host_mount_ids() -> set[int]:
    """The mounts of our own namespace now (those present at start are never undone)."""
    return {m.mount_id for m in mounts(os.getpid())}


def undo(pid: int, m: Mount) -> str:
    """Unmount ``m`` (lazily: whoever has files open there keeps them, nobody new gets in)
    in ``pid``'s namespace; what was done, in words."""
    if same_namespace(pid):
        err = _umount2(m.point)
        return f"unmounted ({m.fstype} at {m.point})" if not err else (
            f"not unmounted: {os.strerror(err)}")  # fmt: skip
    try:
        nsfd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return f"not unmounted: its mount namespace is gone ({exc.strerror})"
    child = os.fork()
    if child == 0:  # one thread here: setns(CLONE_NEWNS) is allowed
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(nsfd, CLONE_NEWNS) != 0:
                os._exit(100)
            os._exit(min(_umount2(m.point), 99))
        except BaseException:
            os._exit(101)
    os.close(nsfd)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return f"unmounted in the session's mount namespace ({m.fstype} at {m.point})"
    if code == 100:
        return "not unmounted: could not join its mount namespace"
    return f"not unmounted: {os.strerror(code) if 0 < code < 100 else 'failed'}"
