"""The cgroup v2 leaf of each agent session: create it, put processes in it, freeze, kill, remove.

This module owns the `roguewatch/` subtree of the cgroup v2 hierarchy (found through
/proc/self/mountinfo, never hard-coded) and one leaf per session under it. It gives the session
layer the kernel's atomic tools: `cgroup.kill` (SIGKILL to every task, fork races included),
`cgroup.freeze`, `cgroup.events` (populated / frozen) and the cgroup id that BPF programs see
as bpf_get_current_cgroup_id().

It must not decide *when* to freeze or kill, nor which session deserves it: policies, rules and
the enforcer decide; this module only carries out what it is told, on the cgroup it is given.
It never enables controllers, so it works on hybrid layouts where the v1 hierarchies hold them.
"""

from __future__ import annotations

import errno
import os
import re
import select
import time

from roguewatch.core import procfs
from roguewatch.core.paths import SESSION_CGROUPS
from roguewatch.host import kernelenv

__all__ = [
    "ROOT_NAME",
    "CgroupError",
    "SessionCgroup",
    "cgroup_of",
    "enter_in_child",
    "list_sessions",
    "root",
]

# The subtree under the v2 mount that roguewatch owns.
ROOT_NAME = SESSION_CGROUPS
# Session names become directory names: keep them to one safe path component.
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_FREEZE_TIMEOUT_S = 2.0
# Upper bound of one poll() on cgroup.events. The kernel signals changes with POLLPRI, so this
# is only a safety net against a missed notification, not the normal way to notice a change.
_POLL_SLICE_S = 0.1


class CgroupError(Exception):
    """A cgroup operation failed; the message says what happened and what a person can do."""


def _mount() -> str:
    mp = kernelenv.cgroup2_mount()
    if mp is None:
        raise CgroupError(
            "cgroup v2 is not mounted (no cgroup2 entry in /proc/self/mountinfo); mount it with "
            "`mount -t cgroup2 none /sys/fs/cgroup/unified` (hybrid layout) or boot with "
            "systemd.unified_cgroup_hierarchy=1"
        )
    return mp


def root() -> str:
    """`<cgroup2 mount>/roguewatch`, created (0755) when missing."""
    path = os.path.join(_mount(), ROOT_NAME)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except PermissionError as e:
        raise CgroupError(f"cannot create {path}: {e.strerror}; run as root") from e
    except OSError as e:
        raise CgroupError(
            f"cannot create {path}: {e.strerror}; is the cgroup v2 hierarchy writable here "
            "(not mounted read-only, not inside a container without cgroup delegation)?"
        ) from e
    return path


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except FileNotFoundError as e:
        raise CgroupError(f"{path} does not exist: the cgroup was removed, or the kernel is "
                          "too old for this interface file") from e  # fmt: skip
    except OSError as e:
        raise CgroupError(f"cannot read {path}: {e.strerror}") from e


def _write(path: str, value: str) -> None:
    # One write(2) per value: cgroup interface files act on each write, never on partial data.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise CgroupError(f"{path} does not exist: the cgroup was removed, or the kernel is "
                          "too old for this interface file") from e  # fmt: skip
    except OSError as e:
        raise CgroupError(f"cannot open {path} for writing: {e.strerror}; run as root") from e
    try:
        os.write(fd, value.encode("ascii"))
    finally:
        os.close(fd)


def _events(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out[key] = value.strip()
    return out


class SessionCgroup:
    """One cgroup v2 directory, normally a session leaf under root()."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def __repr__(self) -> str:
        return f"SessionCgroup({self.path!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SessionCgroup) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @classmethod
    def create(cls, name: str) -> SessionCgroup:
        """Make the leaf `<root>/<name>`; raises CgroupError when the name is invalid or taken."""
        if not _NAME_RE.fullmatch(name) or name in (".", ".."):
            raise CgroupError(
                f"invalid session cgroup name {name!r}: use letters, digits, '_', '.' and '-' "
                "only (one path component, not '.' or '..')"
            )
        path = os.path.join(root(), name)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError as e:
            raise CgroupError(
                f"session cgroup {path} already exists: pick another name, or end the old "
                f"session first (`roguewatch kill {name}`)"
            ) from e
        except OSError as e:
            raise CgroupError(f"cannot create {path}: {e.strerror}") from e
        return cls(path)

    @classmethod
    def open(cls, path: str) -> SessionCgroup:
        """An existing cgroup v2 directory (a session leaf, or an adopted agent's own cgroup)."""
        if not os.path.isfile(os.path.join(path, "cgroup.procs")):
            raise CgroupError(f"{path} is not a cgroup v2 directory (no cgroup.procs in it)")
        if not os.path.exists(os.path.join(path, "cgroup.events")):
            # The root cgroup and v1 hierarchies have no cgroup.events/kill/freeze.
            raise CgroupError(
                f"{path} is not a non-root cgroup v2 directory (no cgroup.events); session "
                "actions need a cgroup of its own"
            )
        return cls(path)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def id(self) -> int:
        """The cgroup id: the directory's inode number, as bpf_get_current_cgroup_id() returns."""
        try:
            return os.stat(self.path).st_ino
        except OSError as e:
            raise CgroupError(f"cannot stat {self.path}: {e.strerror}") from e

    def fd(self) -> int:
        """A new O_RDONLY|O_DIRECTORY fd on the cgroup (to attach BPF programs); caller closes."""
        try:
            return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise CgroupError(f"cannot open {self.path}: {e.strerror}") from e

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into this cgroup."""
        try:
            _write(self._file("cgroup.procs"), str(pid))
        except ProcessLookupError as e:
            raise CgroupError(f"cannot move pid {pid} into {self.path}: no such process") from e
        except OSError as e:
            raise CgroupError(
                f"cannot move pid {pid} into {self.path}: {e.strerror} (a zombie cannot move; "
                "EBUSY means the cgroup has child cgroups with controllers enabled)"
            ) from e

    def pids(self) -> list[int]:
        """Processes directly in this cgroup (not in its descendants), sorted."""
        return sorted(int(x) for x in _read(self._file("cgroup.procs")).split())

    def all_pids(self) -> list[int]:
        """Processes in this cgroup and every cgroup below it, sorted."""
        found: set[int] = set()
        for dirpath, _dirs, _files in os.walk(self.path):
            try:
                found.update(int(x) for x in _read(os.path.join(dirpath, "cgroup.procs")).split())
            except CgroupError:
                continue  # a child cgroup removed while we walked
        return sorted(found)

    def events(self) -> dict[str, str]:
        """cgroup.events as a dict ({"populated": "1", "frozen": "0"})."""
        return _events(_read(self._file("cgroup.events")))

    def populated(self) -> bool:
        """True while any live process is in this cgroup or below it."""
        return self.events().get("populated") == "1"

    def frozen(self) -> bool:
        return self.events().get("frozen") == "1"

    def kill(self) -> int:
        """SIGKILL every process in the cgroup and below, atomically with respect to forks.

        Returns how many processes were in it just before (0: nothing to kill). Does not wait;
        use wait_empty() for that."""
        count = len(self.all_pids())
        try:
            _write(self._file("cgroup.kill"), "1")
        except OSError as e:
            raise CgroupError(f"cannot write {self._file('cgroup.kill')}: {e.strerror}") from e
        return count

    def freeze(self, timeout: float = _FREEZE_TIMEOUT_S) -> None:
        """Freeze every process in the cgroup and wait until the kernel reports it frozen."""
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = _FREEZE_TIMEOUT_S) -> None:
        """Undo freeze() and wait until the kernel reports the cgroup thawed."""
        self._set_frozen(False, timeout)

    def set_frozen(self, on: bool) -> None:
        """Ask the kernel to freeze (or thaw) the cgroup, without waiting for it to be done
        (the evaluator acts in its hot path; ``frozen()`` says when it is)."""
        try:
            _write(self._file("cgroup.freeze"), "1" if on else "0")
        except OSError as e:
            raise CgroupError(f"cannot write {self._file('cgroup.freeze')}: {e.strerror}") from e

    def _set_frozen(self, on: bool, timeout: float) -> None:
        self.set_frozen(on)
        if not self._wait_event("frozen", "1" if on else "0", timeout):
            what = "freeze" if on else "thaw"
            raise CgroupError(
                f"{self.path} did not {what} within {timeout:.1f} s (a task stuck in "
                "uninterruptible sleep delays freezing); check cgroup.events and retry, or kill "
                "the session"
            )

    def wait_empty(self, timeout: float) -> bool:
        """Wait until no process is left in the cgroup (populated 0); False on timeout."""
        return self._wait_event("populated", "0", timeout)

    def _wait_event(self, key: str, value: str, timeout: float) -> bool:
        # cgroup.events signals each change with POLLPRI (kernfs_notify); a read re-arms it.
        path = self._file("cgroup.events")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # The cgroup is gone: nothing is in it, and nothing is frozen.
            return key == "populated" and value == "0"
        except OSError as e:
            raise CgroupError(f"cannot open {path}: {e.strerror}") from e
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            deadline = time.monotonic() + timeout
            while True:
                os.lseek(fd, 0, os.SEEK_SET)
                if _events(os.read(fd, 4096).decode("ascii")).get(key) == value:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                poller.poll(max(1, int(min(left, _POLL_SLICE_S) * 1000)))
        finally:
            os.close(fd)

    def remove(self, timeout: float = 2.0) -> None:
        """Remove the cgroup; when processes are still in it, kill them and wait first.

        Child cgroups that an agent made inside its leaf are removed too (deepest first)."""
        if not os.path.isdir(self.path):
            return
        if self.populated():
            self.kill()
            if not self.wait_empty(timeout):
                raise CgroupError(
                    f"{self.path} still has processes {self.all_pids()} {timeout:.1f} s after "
                    "cgroup.kill (tasks in uninterruptible sleep die when it ends); retry later"
                )
        for dirpath, _dirs, _files in os.walk(self.path, topdown=False):
            self._rmdir(dirpath)

    @staticmethod
    def _rmdir(path: str) -> None:
        # Right after the last task exits, rmdir can briefly see the cgroup as busy while the
        # kernel finishes releasing it; retry for a short while.
        for attempt in range(50):
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or attempt == 49:
                    raise CgroupError(f"cannot remove {path}: {e.strerror}") from e
                time.sleep(0.01)


def list_sessions() -> list[SessionCgroup]:
    """Every session leaf under root(), sorted by name."""
    base = root()
    return [
        SessionCgroup(os.path.join(base, entry.name))
        for entry in sorted(os.scandir(base), key=lambda e: e.name)
        if entry.is_dir(follow_symlinks=False)
    ]


def cgroup_of(pid: int) -> str:
    """The cgroup v2 directory of process `pid` (its "0::" line of /proc/PID/cgroup)."""
    rel = procfs.cgroup_path(pid)
    if rel is None:
        raise CgroupError(f"no such process: {pid}")
    if not rel:
        raise CgroupError(f"process {pid} has no cgroup v2 membership (no '0::' line)")
    mount = _mount()
    rel = rel.lstrip("/")
    return os.path.join(mount, rel) if rel else mount


def enter_in_child(cg: SessionCgroup) -> None:
    """Move the calling process into `cg`; a forked child calls this just before exec.

    Kept to plain open/write/close so it is safe in a child forked from a threaded parent."""
    fd = os.open(os.path.join(cg.path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(os.getpid()).encode("ascii"))
    finally:
        os.close(fd)
