"""fanotify: the pid of whoever changed a watched file, for the filesystem watchers.

inotify (watchdog, ``roguewatch.sensors.watchers``) says *what* changed; it never says who. fanotify
does: with ``FAN_REPORT_DFID_NAME | FAN_REPORT_FID`` every event carries the directory's file
handle, the entry's name and the pid of the process that caused it. This module is used only
for that: ``WriterSensor`` keeps, for every path changed in a directory it marked, the recent
writers (pid, and comm, exe, ppid and uid read from /proc as soon as the event is read, while
the process is most likely still alive). The watchers stay the sensor of record; for each
change they report they ask ``take(path)`` who did it. When fanotify is not available (an old
kernel, no CAP_SYS_ADMIN, ``ROGUEWATCH_FANOTIFY=off``) nothing here runs and the watchers
report ``writer: unknown`` as before.

Marks are inode marks on the watched directories (``mark(dir)``: its entries; ``mark(dir,
tree=True)``: every directory below it too, and directories created or moved in later), with
``FAN_EVENT_ON_CHILD``: creations, deletions, moves, content and attribute changes. They are
never removed one by one (an event from a directory no longer watched is simply never asked
for); ``stop()`` closes the group, which drops them all.

Both notification groups are filled in the writer's own system call, so by the time the
watchers handle an inotify event its fanotify twin is queued: ``take`` reads the queue itself
before answering (and waits a couple of milliseconds for a straggler in a marked directory).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from roguewatch.core import procfs

log = logging.getLogger(__name__)

# fanotify_init flags
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_REPORT_FID = 0x200
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME
INIT_FLAGS = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME | FAN_REPORT_FID

# events
FAN_MODIFY = 0x2
FAN_ATTRIB = 0x4
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_Q_OVERFLOW = 0x4000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ONDIR = 0x40000000
EVENTS = FAN_MODIFY | FAN_ATTRIB | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE | FAN_DELETE
MARK_MASK = EVENTS | FAN_ONDIR | FAN_EVENT_ON_CHILD

# fanotify_mark flags
FAN_MARK_ADD = 0x1
FAN_MARK_DONT_FOLLOW = 0x4
FAN_MARK_ONLYDIR = 0x8
AT_FDCWD = -100

# info records
INFO_FID = 1
INFO_DFID_NAME = 2
INFO_DFID = 3
INFO_OLD_DFID_NAME = 10
INFO_NEW_DFID_NAME = 12
_NAMED = (INFO_DFID_NAME, INFO_OLD_DFID_NAME, INFO_NEW_DFID_NAME)

_META = struct.Struct("<IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO = struct.Struct("<BBH")  # info_type, pad, len
_FSID = struct.Struct("<II")
_HANDLE = struct.Struct("<Ii")  # handle_bytes, handle_type (then f_handle)
METADATA_VERSION = 3

KEEP_NS = 2_000_000_000  # how long a writer is remembered for its path
STRAGGLER_S = 0.003  # how long take() waits for the fanotify twin of a change
MAX_PATHS = 8192
PROC_TTL_NS = 500_000_000
MAX_TREE_DIRS = 10_000
MAX_DEPTH = 8
ENV_SWITCH = "ROGUEWATCH_FANOTIFY"


class Unavailable(OSError):
    """fanotify cannot be used here (the watchers fall back to inotify only)."""


@dataclass(frozen=True)
class Writer:
    """One change of a path, by one process."""

    seq: int
    ts: int  # time.time_ns() when read
    pid: int
    mask: int
    comm: str
    exe: str
    ppid: int
    uid: int

    def name(self) -> str:
        """The ``writer`` field of an fs_change event."""
        if self.pid <= 0:
            return "unknown"
        return f"pid {self.pid} ({self.comm})" if self.comm else f"pid {self.pid}"


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        lib.fanotify_init.restype = ctypes.c_int
        lib.fanotify_mark.argtypes = [
            ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p,
        ]  # fmt: skip
        lib.fanotify_mark.restype = ctypes.c_int
        lib.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.open_by_handle_at.restype = ctypes.c_int
        _libc = lib
    return _libc


def disabled_by_env() -> bool:
    """``ROGUEWATCH_FANOTIFY=off`` (or 0, no, false): inotify only, as without fanotify."""
    return os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "off", "no", "false")


def _init() -> int:
    try:
        lib = _lib()
        fd = lib.fanotify_init(INIT_FLAGS, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
    except (OSError, AttributeError) as exc:  # no libc symbol
        raise Unavailable(errno.ENOSYS, f"fanotify_init: {exc}") from exc
    if fd < 0:
        e = ctypes.get_errno()
        why = {
            errno.EINVAL: "the kernel does not know FAN_REPORT_DFID_NAME (needs Linux >= 5.9)",
            errno.EPERM: "not permitted (needs CAP_SYS_ADMIN)",
            errno.ENOSYS: "the kernel has no fanotify (CONFIG_FANOTIFY)",
        }.get(e, os.strerror(e))
        raise Unavailable(e, f"fanotify_init: {why}")
    return fd


def _mark(fd: int, path: str) -> int:
    """0, or the errno of FAN_MARK_ADD on directory ``path``."""
    r = _lib().fanotify_mark(
        fd, FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW | FAN_MARK_ONLYDIR, MARK_MASK, AT_FDCWD,
        os.fsencode(path),
    )  # fmt: skip
    return 0 if r == 0 else ctypes.get_errno()


def check(path: str = "/etc") -> str | None:
    """None when the sensor can run here (a group with directory handles and names, a mark on
    ``path``); otherwise why not, in words (``roguewatch doctor``)."""
    if disabled_by_env():
        return f"turned off by {ENV_SWITCH}={os.environ.get(ENV_SWITCH)}"
    try:
        fd = _init()
    except Unavailable as exc:
        return str(exc.strerror or exc)
    try:
        e = _mark(fd, path)
        if e:
            return f"fanotify_mark({path}): {os.strerror(e)}"
    finally:
        os.close(fd)
    return None


def _proc(pid: int) -> tuple[str, str, int, int]:
    """comm, exe, ppid, uid of a live process ("", "", 0, -1 for what cannot be read)."""
    comm, exe, ppid = procfs.comm(pid) or "", procfs.readlink(pid, "exe") or "", procfs.ppid(pid)
    uid = procfs.uid(pid)
    return comm, exe, ppid, -1 if uid is None else uid


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class WriterSensor:
    """A fanotify group on the watched directories, remembering who changed which path.

    ``start()`` raises ``Unavailable`` when fanotify cannot be used. ``mark(dir, tree)`` is
    called by the watchers for every directory they watch. ``take(path)`` answers for one
    change. ``on_overflow`` is called (from the reader thread) when the kernel dropped
    fanotify events (writers of some changes are then unknown).
    """

    def __init__(
        self,
        *,
        keep_ns: int = KEEP_NS,
        straggler_s: float = STRAGGLER_S,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self.keep_ns = keep_ns
        self.straggler_s = straggler_s
        self.on_overflow = on_overflow
        self.fd = -1
        self.broken = False
        self._lock = threading.Lock()
        self._seq = 0
        self._new: dict[str, deque[Writer]] = {}  # path -> writers not taken yet
        self._last: dict[str, Writer] = {}  # path -> the latest writer taken
        self._mount_fds: dict[tuple[int, int], int] = {}  # fsid -> an fd on that filesystem
        self._procs: dict[int, tuple[int, tuple[str, str, int, int]]] = {}
        self._marked: set[str] = set()
        self._trees: set[str] = set()
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None
        self.counts: dict[str, int] = {
            "events": 0,  # fanotify events read
            "marks": 0,  # directories marked
            "mark_errors": 0,  # directories that could not be marked
            "unresolved": 0,  # events whose directory handle could not be resolved
            "overflows": 0,  # FAN_Q_OVERFLOW
            "taken": 0,  # changes named by a writer
        }

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if disabled_by_env():
            raise Unavailable(errno.EPERM, f"turned off by {ENV_SWITCH}")
        self.fd = _init()
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._reader, daemon=True, name="fanotify")
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            for fd in [self.fd, self._stop_r, self._stop_w, *self._mount_fds.values()]:
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.fd, self._stop_r, self._stop_w = -1, -1, -1
            self._mount_fds.clear()

    @property
    def running(self) -> bool:
        return self.fd >= 0

    # -- marks ---------------------------------------------------------------------------------

    def mark(self, directory: str, *, tree: bool = False) -> bool:
        """Report changes of the entries of ``directory`` (with ``tree``, of every directory
        below it as well). False when it could not be marked (its changes then have no
        writer)."""
        with self._lock:
            if self.fd < 0:
                return False
            ok = self._mark_one(directory)
            if ok and tree:
                self._trees.add(directory)
                self._mark_below(directory)
            return ok

    def _mark_one(self, d: str) -> bool:
        e = _mark(self.fd, d)
        if e:
            self.counts["mark_errors"] += 1
            log.debug("fanotify: cannot mark %s: %s", d, os.strerror(e))
            return False
        if d not in self._marked:
            self._marked.add(d)
            self.counts["marks"] += 1
        try:
            fsid = _fsid(os.statvfs(d).f_fsid)
        except OSError:
            return True
        if fsid not in self._mount_fds:
            with contextlib.suppress(OSError):
                self._mount_fds[fsid] = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return True

    def _mark_below(self, root: str) -> None:
        n, stack = 0, [(root, 0)]
        while stack and n < MAX_TREE_DIRS:
            d, depth = stack.pop()
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                with contextlib.suppress(OSError):
                    if e.is_dir(follow_symlinks=False):
                        n += 1
                        self._mark_one(e.path)
                        if depth + 1 < MAX_DEPTH:
                            stack.append((e.path, depth + 1))

    # -- reading -------------------------------------------------------------------------------

    def _reader(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            try:
                ready = dict(poller.poll())
            except InterruptedError:
                continue
            if self._stop_r in ready:
                return
            with self._lock:
                if self.fd < 0 or self.broken:
                    return
                self._drain()

    def _drain(self) -> None:
        """Read every queued event (lock held). A read error ends the sensor (``broken``:
        from then on every change has writer unknown) instead of spinning on it."""
        while not self.broken:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as exc:
                self.broken = True
                log.error("fanotify: reading events failed (%s): writers are unknown from now on",
                          exc)  # fmt: skip
                return
            if not buf:
                return
            try:
                self._parse(buf)
            except Exception:  # a record we do not understand: its writers are unknown
                self.counts["unresolved"] += 1
                log.exception("fanotify: cannot parse an event")

    def _parse(self, buf: bytes) -> None:
        off, now = 0, time.time_ns()
        while off + _META.size <= len(buf):
            elen, vers, _, mlen, mask, efd, pid = _META.unpack_from(buf, off)
            if elen < _META.size or vers != METADATA_VERSION:
                return
            if efd >= 0:  # never with FID reporting; close it all the same
                with contextlib.suppress(OSError):
                    os.close(efd)
            self.counts["events"] += 1
            if mask & FAN_Q_OVERFLOW:
                self._overflow()
            else:  # pid 0: a process our pid namespace cannot see (someone, unnamed)
                paths = self._paths(buf, off + mlen, off + elen)
                if paths:
                    self._record(paths, pid, mask, now)
            off += elen

    def _paths(self, buf: bytes, o: int, end: int) -> list[tuple[str, int]]:
        """The (path, info type) of every named record of one event."""
        out: list[tuple[str, int]] = []
        while o + _INFO.size <= end:
            itype, _, ln = _INFO.unpack_from(buf, o)
            if ln < _INFO.size:
                break
            if itype in _NAMED:
                fsid = _FSID.unpack_from(buf, o + 4)
                hbytes, _ = _HANDLE.unpack_from(buf, o + 12)
                hstart = o + 12
                hend = hstart + _HANDLE.size + hbytes
                name = buf[hend : o + ln].split(b"\0", 1)[0]
                d = self._resolve(fsid, buf[hstart:hend])
                if d is None:
                    self.counts["unresolved"] += 1
                elif name and name != b".":
                    out.append((os.path.join(d, os.fsdecode(name)), itype))
            o += ln
        return out

    def _resolve(self, fsid: tuple[int, int], handle: bytes) -> str | None:
        mfd = self._mount_fds.get(fsid)
        if mfd is None:
            return None
        hfd = _lib().open_by_handle_at(mfd, handle, os.O_PATH | os.O_CLOEXEC)
        if hfd < 0:
            return None
        try:
            d = os.readlink(f"/proc/self/fd/{hfd}")
        except OSError:
            return None
        finally:
            os.close(hfd)
        if d.endswith(" (deleted)") or not d.startswith("/"):
            return None
        return d

    def _proc(self, pid: int, now: int) -> tuple[str, str, int, int]:
        """``_proc(pid)``, remembered for a moment: a process writing a log line after line
        (rsyslogd in an anchor directory) costs one look at /proc, not one per write."""
        hit = self._procs.get(pid)
        if hit is not None and now - hit[0] < PROC_TTL_NS:
            return hit[1]
        info = _proc(pid) if pid > 0 else ("", "", 0, -1)
        if len(self._procs) >= 1024:
            self._procs.clear()
        if info[0]:  # a process already gone is not remembered (its pid may come back)
            self._procs[pid] = (now, info)
        return info

    def _record(self, paths: list[tuple[str, int]], pid: int, mask: int, now: int) -> None:
        comm, exe, ppid, uid = self._proc(pid, now)
        for path, _ in paths:
            self._seq += 1
            w = Writer(self._seq, now, pid, mask, comm, exe, ppid, uid)
            q = self._new.get(path)
            if q is None:
                if len(self._new) >= MAX_PATHS:
                    self._prune(now)
                q = self._new[path] = deque(maxlen=64)
            q.append(w)
            # A directory made or moved into a marked tree: mark it too (what is written in
            # it before the mark has no writer; the watchers still report it).
            made_dir = mask & FAN_ONDIR and mask & (FAN_CREATE | FAN_MOVED_TO)
            if made_dir and any(_is_under(path, t) for t in self._trees):
                self._mark_one(path)
                self._mark_below(path)

    def _prune(self, now: int) -> None:
        old = now - self.keep_ns
        for p in [p for p, q in self._new.items() if not q or q[-1].ts < old]:
            del self._new[p]
        for p in [p for p, w in self._last.items() if w.ts < old]:
            del self._last[p]
        if len(self._new) >= MAX_PATHS:  # a flood of fresh ones: forget them all
            self._new.clear()

    def _overflow(self) -> None:
        self.counts["overflows"] += 1
        if self.on_overflow is not None:
            try:
                self.on_overflow()
            except Exception:
                log.exception("fanotify overflow callback failed")

    # -- asking --------------------------------------------------------------------------------

    def take(self, path: str, *, wait: bool = True) -> tuple[list[Writer], Writer | None]:
        """Who changed ``path``: the writers not taken before (oldest first; taken now), and
        the latest writer taken earlier (within ``keep_ns``), for a change whose own event
        was merged into an earlier one. With ``wait``, when nothing new is queued for a path
        in a marked directory, wait a few milliseconds for it."""
        with self._lock:
            if self.fd < 0 or self.broken:
                return [], None
            self._drain()
            new = self._pop(path)
        if not new and wait and os.path.dirname(path) in self._marked:
            deadline = time.monotonic() + self.straggler_s
            while not new:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                with contextlib.suppress(OSError, ValueError):
                    select.select([self.fd], [], [], min(left, 0.0005))
                with self._lock:
                    if self.fd < 0:
                        break
                    self._drain()  # the reader thread may have been first: _pop sees it too
                    new = self._pop(path)
        with self._lock:
            now = time.time_ns()
            if new:
                self.counts["taken"] += 1
                self._last[path] = new[-1]
                return new, None
            last = self._last.get(path)
            if last is not None and now - last.ts > self.keep_ns:
                del self._last[path]
                last = None
            return [], last

    def _pop(self, path: str) -> list[Writer]:
        q = self._new.pop(path, None)
        if not q:
            return []
        old = time.time_ns() - self.keep_ns
        return [w for w in q if w.ts >= old]

    def marked(self) -> list[str]:
        with self._lock:
            return sorted(self._marked)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.counts, "paths": len(self._new), "broken": int(self.broken)}


def _fsid(f_fsid: int) -> tuple[int, int]:
    """statvfs' f_fsid (glibc: val[0] | val[1] << 32) as the kernel's two 32-bit words."""
    return (f_fsid & 0xFFFFFFFF, (f_fsid >> 32) & 0xFFFFFFFF)
