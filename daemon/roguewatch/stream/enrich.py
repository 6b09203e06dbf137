"""What only user space knows about a process: its executable, working directory, identity.

Owns the collector's per-process cache (pid → exe, cwd) and the steps that turn a decoded
record into a complete event: exec ids from the kernel's start times, the exe, the command
line on exec, wall-clock time, and absolute paths. Relative paths are resolved promptly
against the cwd this cache follows (inherited at fork, moved by chdir, read from /proc at
first sight) or against the dirfd through /proc/PID/fd; when that fails the event says so
with the `unresolved` flag instead of guessing.

Hot path: most events cost nothing here: the identity of a process image is computed once
(``identity``) and cached by the collector; /proc is read only on exec, on first sight of a
process, and for relative paths whose base is unknown.
"""

from __future__ import annotations

import os

from roguewatch.core import procfs
from roguewatch.core.identity import exec_id
from roguewatch.probes import layout
from roguewatch.probes.layout import AT_FDCWD

MAX_PROCS = 65536
_ENV_VARS = (b"HOME", b"XDG_CONFIG_HOME", b"PATH")
_ENV_FIELDS = {"HOME": "home", "XDG_CONFIG_HOME": "xdg_config_home", "PATH": "env_path"}


def _normal(path: str) -> str:
    """os.path.normpath, skipped for the common path that is already normal (where it would
    cost more than the rest of the event's path handling)."""
    if "/." in path or "//" in path or (path.endswith("/") and path != "/"):
        return os.path.normpath(path)
    return path


def _join(base: str, path: str) -> str:
    return _normal(os.path.join(base, path))


class ProcessCache:
    def __init__(self) -> None:
        self.exe: dict[int, str] = {}
        self.cwd: dict[int, str] = {}
        self.offset = procfs.boot_to_wall_offset()
        self.unresolved = 0
        # (pid, fd) -> (family, addr, port) of successful binds, so listen can name it
        self.bound: dict[tuple[int, int], tuple[str, str, int]] = {}

    def refresh_clock(self) -> None:
        self.offset = procfs.boot_to_wall_offset()

    # -- per process image ----------------------------------------------------------------

    def identity(self, i: tuple) -> dict:
        """The identity fields of a record's process, from the IDENT part of its header.

        The same for every record of one process image: the collector computes it once per
        image and caches it, so this runs at first sight of a process and after each exec."""
        start, pid, ppid = i[layout.I_START], i[layout.I_PID], i[layout.I_PPID]
        if start:
            eid = exec_id(pid, start)
            pexec_id = exec_id(ppid, i[layout.I_PSTART])
        else:  # a guard event from an untracked process: identity from /proc
            ppid = ppid or procfs.ppid(pid)
            eid = exec_id(pid, procfs.start_ns(pid))
            pexec_id = ""
        exe = self.exe.get(pid)
        if exe is None:
            exe = self._exe(pid)
        comm = i[layout.I_COMM].split(b"\0", 1)[0].decode(errors="replace")
        return {
            "session": i[layout.I_SESSION], "pid": pid, "ppid": ppid, "uid": i[layout.I_UID],
            "gid": i[layout.I_GID], "comm": comm, "exec_id": eid, "pexec_id": pexec_id,
            "exe": exe,
        }  # fmt: skip

    # -- per event (only the types that change or read state) ------------------------------

    def on_fork(self, ev: dict, pid: int) -> None:
        if not ev["thread"]:
            child = ev["child_pid"]
            self.exe[child] = self.exe.get(pid) or self._exe(pid)
            cwd = self.cwd.get(pid)
            if cwd:
                self.cwd[child] = cwd

    def on_exit(self, ev: dict, pid: int) -> None:
        self.exe.pop(pid, None)
        self.cwd.pop(pid, None)

    def on_bind(self, ev: dict, pid: int) -> None:
        if ev["ret"] == 0:
            if len(self.bound) >= MAX_PROCS:
                self.bound.clear()
            self.bound[(pid, ev["fd"])] = (ev["family"], ev["addr"], ev["port"])

    def on_listen(self, ev: dict, pid: int) -> None:
        b = self.bound.get((pid, ev["fd"]))
        if b:
            ev["family"], ev["addr"], ev["port"] = b

    def on_kill(self, ev: dict, pid: int) -> None:
        if ev["call"] == "pidfd_send_signal":
            # The kernel resolved pidfds the session opened with pidfd_open (in target_tid).
            resolved = ev["target_tid"]
            ev["target"] = resolved if resolved > 0 else self._pidfd_target(pid, ev["target"])
            ev["target_tid"] = 0
        if not ev.get("target_comm") and ev["target"] > 0 and ev["sig"]:
            # Not generated (refused: EPERM, or the signal went nowhere): the target, alive
            # still if it was refused, by its comm now.
            ev["target_comm"] = procfs.comm(ev["target"]) or ""

    def after(self, ev: dict, pid: int) -> None:
        """State kept across events, and absolute paths."""
        if "_path" in ev:
            self.resolve(ev, pid)
        hook = self.HOOKS.get(ev["type"])
        if hook is not None:
            hook(self, ev, pid)

    HOOKS = {
        "fork": on_fork, "exit": on_exit, "bind": on_bind, "listen": on_listen,
        "kill": on_kill,
    }  # fmt: skip

    def remember(self, pid: int) -> None:
        """Read a process's cwd and exe now, while it surely lives (a session's root)."""
        cwd = procfs.readlink(pid, "cwd")
        if cwd is not None:
            self.cwd[pid] = cwd
        self._exe(pid)

    def _exe(self, pid: int) -> str:
        exe = procfs.readlink(pid, "exe") or ""
        if len(self.exe) >= MAX_PROCS:
            self.exe.clear()  # bounded: a pid seen again is simply looked up again
        self.exe[pid] = exe
        return exe

    def on_exec(self, ev: dict, pid: int) -> None:
        cwd = procfs.readlink(pid, "cwd") or self.cwd.get(pid, "")
        if cwd:
            self.cwd[pid] = cwd
        ev["cwd"] = cwd
        exe = procfs.readlink(pid, "exe")
        if exe is None:  # already gone: the path it was started with is the best we have
            fn = ev["filename"]
            exe = os.path.realpath(fn if fn.startswith("/") or not cwd else _join(cwd, fn))
        self.exe[pid] = exe
        # What the new image reads its configuration by (its home, its PATH): rules mean
        # those homes by `~/`, and a tool placed ahead on that PATH shadows the real one.
        for k, v in procfs.environ_vars(pid, _ENV_VARS).items():
            ev[_ENV_FIELDS[k]] = v
        argv = ev["argv"]
        if "truncated" in ev["flags"] or not argv:
            # The kernel could not copy it whole (too long, or in memory it could not read
            # then): the process's own record, while it lives.
            full = procfs.cmdline(pid)
            if full:
                argv = full
            elif "truncated" in ev["flags"]:
                self._unresolved(ev)  # gone already: what we have may be incomplete
            ev["argv"] = argv
        ev["cmdline"] = " ".join(argv)

    def _base(self, pid: int, dirfd: int) -> str | None:
        if dirfd == AT_FDCWD:
            cwd = self.cwd.get(pid)
            if cwd is None:
                cwd = procfs.readlink(pid, "cwd")
                if cwd is not None:
                    self.cwd[pid] = cwd
            return cwd
        return procfs.readlink(pid, f"fd/{dirfd}")

    def _absolute(self, ev: dict, pid: int, path: str | None, dirfd: int) -> str:
        if path is None:  # an fd operation: the fd names the file
            p = procfs.readlink(pid, f"fd/{ev.get('fd', -1)}")
            if p is None:
                self._unresolved(ev)
                return ""
            return p
        if path.startswith("/"):
            return _normal(path)
        base = self._base(pid, dirfd)
        if base is None:
            self._unresolved(ev)
            return path
        return _join(base, path) if path else base

    def _unresolved(self, ev: dict) -> None:
        self.unresolved += 1
        if "unresolved" not in ev["flags"]:
            ev["flags"] = [*ev["flags"], "unresolved"]  # flags may be a shared tuple

    def resolve(self, ev: dict, pid: int) -> None:
        ev["path"] = self._absolute(ev, pid, ev.pop("_path"), ev.get("dirfd", AT_FDCWD))
        if "_source" in ev:
            ev["source"] = self._absolute(ev, pid, ev.pop("_source"), ev.pop("_source_dirfd"))
        if ev["type"] == "chdir" and ev["ret"] == 0 and "unresolved" not in ev["flags"]:
            self.cwd[pid] = ev["path"]

    def _pidfd_target(self, pid: int, fd: int) -> int:
        """The process a pidfd of ``pid`` names; -1 when it cannot be told (the kernel's own
        answer for a target that exited)."""
        try:
            return int(procfs.fdinfo(pid, fd).get("Pid", "-1").split()[0])
        except (ValueError, IndexError):
            return -1
