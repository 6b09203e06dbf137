"""Filesystem watchers: the second sensor on persistence and oversight files.

This module owns *which* paths are watched (``watch_paths``: the path lists of the rule packs,
``~/`` entries expanded for every home, plus the paths a policy protects and roguewatch's own
files) and *how* they are watched (``FsWatcher``: watchdog's inotify observer, watches on
directories that do not exist yet, the ignore list for roguewatch's own writes, inotify limits,
queue overflows). Every change becomes an ``fs_change`` event dict handed to a callback.

It does not judge changes: whether a change is harmful, who made it, and what to do about it
are the rules', the attribution's and the enforcer's business. Baselines and restore live in
``roguewatch.respond.baseline``.

How a path is watched:

- a file is watched through its directory (non-recursive), filtered to that name;
- a directory is watched recursively (``/etc/systemd/system/*.wants``), and its own entry in
  its parent as well, so its creation, removal or replacement by rename is seen;
- a path that does not exist is watched from its nearest existing ancestor; when a directory on
  the way appears the watch moves down, and when the path itself appears it is watched and
  rescanned: everything already inside is reported as ``created`` (a unit written into a fresh
  ``~/.config/systemd/user`` right after ``mkdir -p`` is not missed).

A path inside another watched directory is covered by that directory's watch. Parent
directories are resolved (``/lib/systemd/system`` is reported as ``/usr/lib/systemd/system``
on a merged-/usr system); the last component never is (a symlink is watched as itself).

Who wrote it: inotify never says. When a ``roguewatch.sensors.fanotify.WriterSensor`` is given,
every directory watched here is marked there too, and each change asks it for the writer: its pid,
comm, exe, ppid and uid fill the event (``writer: "pid 1234 (comm)"``); without it, or when
fanotify did not see the change, ``writer`` is ``unknown`` and pid is 0. A change made only by
roguewatch's own processes (``own_writer``) is dropped: that is how roguewatch's log directory
can be watched for everybody else's changes. A change whose writers include anyone else is
reported with that other writer, even when inotify merged it with one of ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify import InotifyFullEmitter, InotifyObserver, InotifyWatchGroup
from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchCallback,
    WatchDescriptor,
)

from roguewatch.core import accounts
from roguewatch.core.fspath import canonical, is_under
from roguewatch.sensors.fanotify import Writer, WriterSensor

log = logging.getLogger(__name__)


class _QuietStoppedEmitter(logging.Filter):
    """watchdog logs an ERROR when a watch is removed while its emitter is between reads:
    routine here (a watch moves down as a missing directory appears), so not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in str(record.msg)


logging.getLogger("watchdog.observers.inotify").addFilter(_QuietStoppedEmitter())

# Ignore "forever" (for roguewatch's own log directory, if the caller wants that).
FOREVER_NS = 2**63 - 1

# What is asked of inotify: changes only. Opens and reads (IN_OPEN, IN_CLOSE_NOWRITE) of every
# file in /etc would flood the queue, and directory mtime changes say nothing new.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    DirAttribEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
]

# Waiting for a change's fanotify twin (a few ms) only while fewer events than this wait.
WAIT_BACKLOG = 64
RESCAN_MAX_ENTRIES = 10_000
RESCAN_MAX_DEPTH = 8
# Kernel queue overflows after the first are reported together, at most once per this long.
OVERFLOW_REPORT_S = 1.0
PROC_INOTIFY = "/proc/sys/fs/inotify"


# ---------------------------------------------------------------------------------------------
# Which paths
# ---------------------------------------------------------------------------------------------


def default_list_names(lists: Mapping[str, Sequence[str]]) -> list[str]:
    """The rule lists that name paths to watch: every list whose name ends with ``_paths`` or
    ``_files`` (``*_home_paths`` and ``*_home_files`` included). ``log_dirs`` and the glob list
    ``agent_permission_globs`` are not among them (logs change all the time; globs name no
    directory)."""
    return [n for n in lists if n.endswith(("_paths", "_files"))]


def home_dirs() -> list[str]:
    """Home directories to expand ``~/`` for: every account's in the passwd database that
    exists (service accounts live in /var/lib, /srv...), /root among them."""
    return [h for h in accounts.passwd_homes() if os.path.isdir(h)]


def home_paths(lists: Mapping[str, Sequence[str]], home: str, means: str = "~") -> list[str]:
    """The ``~/`` items of the rule lists under one more home: a session's own $HOME
    (``means`` ``~``) or its $XDG_CONFIG_HOME (``~/.config``)."""
    out: dict[str, None] = {}
    prefix = means.rstrip("/") + "/"
    for name in default_list_names(lists):
        for item in lists.get(name, ()):
            item = str(item).strip()
            if item.startswith(prefix) and not any(c in item for c in "*?["):
                out.setdefault(os.path.normpath(os.path.join(home, item[len(prefix) :])), None)
    return list(out)


def _expand(item: str, homes: Sequence[str]) -> list[str]:
    item = item.strip()
    if not item or any(c in item for c in "*?["):
        return []  # globs name no directory to watch
    if item.startswith("~/"):
        return [os.path.normpath(os.path.join(h, item[2:])) for h in homes]
    if item.startswith("/"):
        return [os.path.normpath(item)]
    return []


def watch_paths(
    lists: Mapping[str, Sequence[str]],
    extra: Iterable[str] = (),
    homes: Sequence[str] | None = None,
    names: Iterable[str] | None = None,
) -> list[str]:
    """The absolute paths to watch, in order and without duplicates: every item of the rule
    lists ``names`` (default: ``default_list_names(lists)``), ``~/x`` expanded for every home
    (default: ``home_dirs()``), then ``extra`` (a policy's protected paths, roguewatch's own
    configuration, rules and log directories; ``~/`` allowed there too)."""
    if homes is None:
        homes = home_dirs()
    if names is None:
        names = default_list_names(lists)
    out: dict[str, None] = {}
    for name in names:
        for item in lists.get(name, ()):
            for p in _expand(str(item), homes):
                out.setdefault(p, None)
    for item in extra:
        for p in _expand(str(item), homes):
            out.setdefault(p, None)
    return list(out)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def inotify_limits() -> dict[str, int | None]:
    """The kernel's inotify limits (per user; ``max_queued_events`` per inotify instance)."""
    return {
        k: _read_int(os.path.join(PROC_INOTIFY, k))
        for k in ("max_user_watches", "max_queued_events", "max_user_instances")
    }


# ---------------------------------------------------------------------------------------------
# watchdog plumbing
# ---------------------------------------------------------------------------------------------


class _OverflowFD(InotifyFD):
    """watchdog's inotify reader, telling us about IN_Q_OVERFLOW. (watchdog handles the overflow
    itself, rebuilding its recursive watches, but does not pass it to event handlers.)"""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__()
        self._rw_on_overflow = on_overflow

    def handle_event(self, event: InotifyEvent) -> None:
        if not event.is_queue_overflow:
            super().handle_event(event)
            return
        try:
            # The watch groups first: once the overflow is reported (and a rescan against the
            # baselines asked for), every directory of the trees has its watch again, so what
            # changes later is seen by a watch, what changed before by the rescan.
            super().handle_event(event)
        finally:
            try:
                self._rw_on_overflow()
            except Exception:  # never kill the reader thread
                log.exception("fs overflow callback failed")

    def watch_count(self) -> int:
        return len(getattr(self, "_watch_for_wd", {}))

    def rewatch(
        self, path: bytes, mask: Mask, callback: WatchCallback, id_: CallbackId
    ) -> WatchDescriptor:
        """``add_callback`` for a path that may be watched already (by this callback, maybe
        under another name): the watch of the inode now at ``path``, new or not (the kernel
        queues no event for an existing one), without watchdog's warning for a callback
        registered again."""
        with self._lock:
            watch = self._get_or_create_watch(path, mask)
            watch.callbacks[id_] = callback
            return watch.wd


class _WatchGroup(InotifyWatchGroup):
    """watchdog's watch group, with an overflow handling that keeps the live watches.

    watchdog reconciles a recursive watch after IN_Q_OVERFLOW by removing every watch of the
    tree and adding them again. Each removal queues an IN_IGNORED event: a tree of more
    directories than ``fs.inotify.max_queued_events`` overflows the queue again, and again, for
    ever (hundreds of overflows a second, the reader thread busy, the watches mostly gone).
    Here an overflow adds the watch of every directory of the tree as it is now: the kernel
    gives back the watch a directory already has (no event queued), a new one for a directory
    made or replaced while events were lost. Then the watches of the directories no longer in
    the tree are forgotten: removed (``inotify_rm_watch``) only once their directory is gone
    from the tree, so the kernel has dropped them already, or they are elsewhere (one event
    per directory that really went, never one per directory of the tree)."""

    def _remove_watch_internally(self, wd: WatchDescriptor) -> None:
        # watchdog's, but a watch or name forgotten by _reconcile is no KeyError (in the
        # reader thread, that would end it).
        path = self._active_callbacks_by_watch.pop(wd, None)
        if path is not None and self._active_callbacks_by_path.get(path) == wd:
            del self._active_callbacks_by_path[path]

    def on_queue_overflow(self) -> None:
        with self._lock:
            if not self.is_active:
                return
            self._move_event_grouper.discard_pending_events()
            if not self.is_recursive:
                return
            log.debug("inotify queue overflowed: checking the watches below %r", self.path)
            try:
                self._reconcile()
            except OSError:
                log.exception("unable to check the inotify watches below %r", self.path)

    def _tree_dirs(self) -> list[bytes]:
        """The directories of the tree now, the root first (none when it is no directory)."""
        follow = self.follow_symlink
        if not (os.path.isdir(self.path) if follow else stat.S_ISDIR(_lmode(self.path))):
            return []
        out, seen, stack = [self.path], {self.path}, [self.path]
        while stack:
            try:
                with os.scandir(stack.pop()) as it:
                    entries = list(it)
            except OSError:
                continue
            for e in entries:
                with contextlib.suppress(OSError):
                    if e.is_dir(follow_symlinks=follow) and e.path not in seen:
                        seen.add(e.path)
                        out.append(e.path)
                        stack.append(e.path)
        return out

    def _reconcile(self) -> None:
        """Watches for what the tree is now, without removing a live watch (see the class)."""
        by_path, by_watch = self._active_callbacks_by_path, self._active_callbacks_by_watch
        fd = self._inotify_fd
        now = self._tree_dirs()
        for path in now:
            try:
                if isinstance(fd, _OverflowFD):
                    wd = fd.rewatch(path, self.event_mask, self._callback, self._id)
                else:
                    wd = fd.add_callback(path, self.event_mask, self._callback, self._id)
            except OSError:
                if path == self.path:
                    raise
                continue  # gone meanwhile, or not readable: as watchdog does
            old = by_watch.get(wd)
            if old is not None and old != path and by_path.get(old) == wd:
                del by_path[old]  # renamed while its event was lost
            by_path[path] = wd
            by_watch[wd] = path
        # Forget the names no longer in the tree, and the watches no name leads to any more
        # (their directory was removed, moved out, or replaced by another one).
        here = set(now)
        for path in [p for p in by_path if p not in here]:
            del by_path[path]
        gone = [wd for wd, p in by_watch.items() if by_path.get(p) != wd]
        if gone:
            self._remove_callbacks(gone)


def _lmode(path: bytes) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


class _Emitter(InotifyFullEmitter):
    """watchdog's full emitter (moves with no source), on a ``_WatchGroup``."""

    def on_thread_start(self) -> None:
        self._inotify = _WatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
        )


class _Observer(InotifyObserver):
    """InotifyObserver with the overflow-reporting reader, full move events (a rename from
    an unwatched place is a move with no source, not a creation) and watch groups that survive
    a queue overflow (``_WatchGroup``)."""

    def __init__(self, on_overflow: Callable[[], None], timeout: float = 0.2) -> None:
        self._inotify_fd = _OverflowFD(on_overflow)
        self._inotify_fd.start()
        BaseObserver.__init__(self, _Emitter, timeout=timeout, inotify_fd=self._inotify_fd)

    def watch_count(self) -> int:
        return self._inotify_fd.watch_count()


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FsWatcher, kind: str, root: str) -> None:
        self.watcher = watcher
        self.kind = kind  # "anchor" (non-recursive, entries of interest) or "tree"
        self.root = root

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self.watcher._on_fs(self, event)
        except Exception:  # an exception here would stop watchdog's dispatcher thread
            log.exception("fs watcher: failed to handle %r", event)


_UNSET = object()


def _fingerprint(path: str) -> tuple[int, ...] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_size, st.st_mode, st.st_uid, st.st_gid)


def _decode(p: str | bytes) -> str:
    return os.fsdecode(p) if p else ""


# ---------------------------------------------------------------------------------------------
# The watcher
# ---------------------------------------------------------------------------------------------


def fs_change(path: str, change: str, source: str = "", ts: int | None = None) -> dict[str, Any]:
    """An ``fs_change`` event with no writer known (the watcher names one when it can)."""
    return {
        "type": "fs_change", "ts": time.time_ns() if ts is None else ts, "session": 0,
        "pid": 0, "tid": 0, "ppid": 0, "uid": 0, "gid": 0, "comm": "", "ret": 0, "flags": [],
        "exec_id": "", "pexec_id": "", "exe": "", "path": path, "source": source,
        "change": change, "writer": "unknown",
    }  # fmt: skip


class FsWatcher:
    """Watches ``paths`` and calls ``on_event(event_dict)`` for every change, from watchdog's
    dispatcher thread (the caller queues the event; it must not block).

    - ``ignore(path, until_ns)``: changes of ``path`` seen before ``until_ns`` are dropped;
      roguewatch's restore code calls it right before writing, and ``settle(path)`` right
      after (from then on only changes that leave ``path`` as we left it are dropped).
    - Queue overflow (the kernel's inotify queue, or more than ``queue_max`` events waiting in
      watchdog's queue) emits a ``monitor`` event of kind ``fs_overflow``, calls
      ``on_overflow()`` and sets ``rescan_needed``: the caller then rescans its baselines
      (``take_rescan()`` reads and clears the flag). Kernel overflows are reported at most
      once per ``OVERFLOW_REPORT_S``: the first at once, the next ones of that second together,
      in one event that says how many, when the second is up (``counts["overflows"]`` counts
      each one; each one sets the flag and calls ``on_overflow()``).
    - ``writers``: a started fanotify sensor that names the writer of each change (the
      watcher marks its directories and stops it with itself); ``own_writer(writer)`` says
      whether a writer is roguewatch itself (its changes are dropped). Without ``writers``
      every change has ``writer: unknown``.
    """

    def __init__(
        self,
        paths: Iterable[str],
        on_event: Callable[[dict[str, Any]], None],
        *,
        queue_max: int = 65_536,
        on_overflow: Callable[[], None] | None = None,
        writers: WriterSensor | None = None,
        own_writer: Callable[[Writer], bool] | None = None,
    ) -> None:
        self.on_event = on_event
        self.writers = writers
        self.own_writer = own_writer
        if writers is not None and writers.on_overflow is None:
            writers.on_overflow = self._writers_overflow
        self.on_overflow = on_overflow
        self.queue_max = queue_max
        self._lock = threading.RLock()
        self._observer: _Observer | None = None
        self._targets: dict[str, bool] = {}  # canonical target -> existed at last look
        self._target_anchor: dict[str, str] = {}  # target -> anchor directory
        self._anchors: dict[str, tuple[ObservedWatch, set[str]]] = {}
        self._trees: dict[str, tuple[ObservedWatch, tuple[int, int]]] = {}  # dir target -> watch
        self._ignored: dict[str, tuple[int, Any]] = {}  # path -> (until_ns, settled state)
        self._ignored_trees: dict[str, int] = {}
        self._rescan = threading.Event()
        self._in_backlog = False
        self._ovf_reported = -OVERFLOW_REPORT_S  # monotonic time of the last overflow report
        self._ovf_pending = 0  # kernel overflows since then, not reported yet
        self._ovf_timer: threading.Timer | None = None
        self._limits: dict[str, int | None] = {}
        self.counts: dict[str, int] = {
            "events": 0,  # fs_change events emitted
            "ignored": 0,  # dropped by ignore()
            "overflows": 0,  # kernel queue overflows
            "backlog_drops": 0,  # dropped for a full watchdog queue (rescan follows)
            "rescan_events": 0,  # emitted by rescans of appearing directories
            "watch_errors": 0,  # paths that could not be watched (e.g. ENOSPC)
            "named": 0,  # emitted with the writer's pid (fanotify)
            "own": 0,  # dropped: written by roguewatch itself (fanotify)
        }
        self._pending_paths = [canonical(p) for p in paths]

    # -- public API ----------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._observer is not None:
                return
            self._limits = inotify_limits()
            obs = _Observer(self._kernel_overflow)
            obs.start()
        # Lock order: the observer's lock (held by watchdog while it dispatches to us), then ours.
        with obs._lock, self._lock:
            self._observer = obs
            paths, self._pending_paths = self._pending_paths, []
            self._add(paths, initial=True)
            self._check_limits()

    def _check_limits(self) -> None:
        """A monitor event when our watches use most of the per-user inotify watch limit (the
        limit is shared with every other process of the same user, root here)."""
        obs, maxw = self._observer, self._limits.get("max_user_watches")
        if obs is None or not maxw:
            return
        used = obs.watch_count()
        if used >= 0.8 * maxw:
            self._monitor(
                "fs_limits",
                f"filesystem watches use {used} of fs.inotify.max_user_watches={maxw}; "
                "raise it (sysctl) or watch fewer paths",
            )

    def stop(self) -> None:
        with self._lock:
            obs, self._observer = self._observer, None
            self._anchors.clear()
            self._trees.clear()
            self._target_anchor.clear()
            timer, self._ovf_timer = self._ovf_timer, None
            if timer is not None:
                timer.cancel()
            self._report_overflows()  # what the cancelled timer would have said
        if obs is not None:
            obs.stop()
            obs.join(timeout=5)
        if self.writers is not None:
            self.writers.stop()

    def add_paths(self, paths: Iterable[str]) -> None:
        """Watch more paths (a policy added protected paths). Before ``start()`` they are
        remembered; after, they are watched at once (no events for what already exists)."""
        canon = [canonical(p) for p in paths]
        obs = self._observer
        if obs is None:
            with self._lock:
                self._pending_paths += canon
            return
        with obs._lock, self._lock:
            if self._observer is obs:
                self._add(canon, initial=True)

    def ignore(self, path: str, until_ns: int, *, subtree: bool = False) -> None:
        """Drop changes of ``path`` (and, with ``subtree``, of everything below it) until
        ``until_ns`` (``time.time_ns()`` clock). Call it right before writing; call
        ``settle(path)`` right after, so the window stops blinding the path to others."""
        p = canonical(path)
        with self._lock:
            if subtree:
                self._ignored_trees[p] = max(until_ns, self._ignored_trees.get(p, 0))
            else:
                old = self._ignored.get(p, (0, _UNSET))[0]
                self._ignored[p] = (max(until_ns, old), _UNSET)

    def settle(self, path: str) -> None:
        """Our write of ``path`` is done: for the rest of its ignore window, a change of
        ``path`` is dropped only while ``path`` is still exactly as we left it (same inode,
        ctime, size, mode; or still absent). Anything written after us is reported, even
        inside the window, and even when the event is a late one of our own write."""
        p = canonical(path)
        with self._lock:
            ent = self._ignored.get(p)
            if ent is not None:
                self._ignored[p] = (ent[0], _fingerprint(p))

    def take_rescan(self) -> bool:
        """True once after an overflow: the caller must rescan against its baselines."""
        if self._rescan.is_set():
            self._rescan.clear()
            return True
        return False

    @property
    def rescan_needed(self) -> bool:
        return self._rescan.is_set()

    def recheck(self) -> None:
        """After an overflow: look at every target again. One that appeared while events were
        lost (its parent's IN_CREATE among them) gets its watches now, and is reported with
        what is already inside it; until then nothing inside it would be seen. Not from
        watchdog's threads (it takes the observer's lock): the caller's rescan thread."""
        obs = self._observer
        if obs is None:
            return
        with obs._lock, self._lock:  # the order watchdog's dispatch takes them in
            for t in sorted(self._targets):
                if not self._covered(t):
                    self._arm(t, emit=True)

    def limits(self) -> dict[str, Any]:
        """inotify limits read at start, watches in use and the counters."""
        lim: dict[str, Any] = dict(self._limits or inotify_limits())
        obs = self._observer
        lim["watches"] = obs.watch_count() if obs is not None else 0
        lim["watched_paths"] = len(self._targets)
        lim.update(self.counts)
        lim["fanotify"] = self.writers.stats() if self.writers is not None else None
        return lim

    def watched(self) -> list[str]:
        """The canonical paths watched (targets, covered ones included)."""
        with self._lock:
            return sorted(self._targets)

    def is_watched(self, path: str) -> bool:
        path = canonical(path)
        with self._lock:
            return self._watched(path)

    # -- arming --------------------------------------------------------------------------------

    def _add(self, paths: list[str], *, initial: bool) -> None:
        for p in paths:
            if p not in self._targets:
                self._targets[p] = os.path.lexists(p)
        for t in sorted(self._targets):
            if self._covered(t):
                if t in self._target_anchor:
                    self._disarm(t)  # a newly added directory covers it now
                continue
            if t not in self._target_anchor:
                self._arm(t, emit=not initial)

    def _disarm(self, t: str) -> None:
        anchor = self._target_anchor.pop(t, None)
        if anchor is not None and anchor in self._anchors:
            watch, users = self._anchors[anchor]
            users.discard(t)
            if not users:
                del self._anchors[anchor]
                self._unschedule(watch)
        tree = self._trees.pop(t, None)
        if tree is not None:
            self._unschedule(tree[0])

    def _covered(self, t: str) -> bool:
        return any(o != t and is_under(t, o) for o in self._targets)

    def _watched(self, path: str) -> bool:
        return any(path == t or (t in self._trees and is_under(path, t)) for t in self._targets)

    def _schedule(self, path: str, handler: _Handler, recursive: bool) -> ObservedWatch | None:
        assert self._observer is not None
        try:
            watch = self._observer.schedule(
                handler, path, recursive=recursive, event_filter=EVENT_FILTER
            )
        except OSError as exc:
            self.counts["watch_errors"] += 1
            self._monitor("fs_watch_failed", f"cannot watch {path}: {exc}")
            return None
        if self.writers is not None:
            self.writers.mark(path, tree=recursive)  # False: changes there have no writer
        return watch

    def _unschedule(self, watch: ObservedWatch) -> None:
        if self._observer is None:
            return
        with contextlib.suppress(KeyError, OSError, RuntimeError):
            self._observer.unschedule(watch)

    def _anchor_for(self, t: str) -> str:
        a = os.path.dirname(t)
        while a != "/":
            try:
                st = os.stat(a)  # follows: a symlinked ancestor is a directory to watch
                if stat.S_ISDIR(st.st_mode):
                    break
            except OSError:
                pass
            a = os.path.dirname(a)
        return a

    def _arm(self, t: str, *, emit: bool) -> None:
        """(Re)place the watches of target ``t``; with ``emit``, report its appearance and
        whatever is already inside it."""
        if self._observer is None:
            return
        # Move the anchor until it stays put: a directory made on the way before the new watch
        # was in place (mkdir -p) sent its event to nobody, so look again after each move.
        for _ in range(64):
            anchor = self._anchor_for(t)
            old = self._target_anchor.get(t)
            if old == anchor:
                break
            if old is not None and old in self._anchors:
                watch, users = self._anchors[old]
                users.discard(t)
                if not users:
                    del self._anchors[old]
                    self._unschedule(watch)
            if anchor in self._anchors:
                self._anchors[anchor][1].add(t)
            else:
                w = self._schedule(anchor, _Handler(self, "anchor", anchor), recursive=False)
                if w is not None:
                    self._anchors[anchor] = (w, {t})
            self._target_anchor[t] = anchor
        existed = self._targets.get(t, False)
        try:
            st: os.stat_result | None = os.lstat(t)
        except OSError:
            st = None
        self._targets[t] = st is not None
        is_dir = st is not None and stat.S_ISDIR(st.st_mode)
        tree = self._trees.get(t)
        if tree is not None and (not is_dir or tree[1] != (st.st_dev, st.st_ino)):  # type: ignore[union-attr]
            del self._trees[t]
            self._unschedule(tree[0])
            tree = None
        new_tree = False
        if is_dir and tree is None:
            assert st is not None
            w = self._schedule(t, _Handler(self, "tree", t), recursive=True)
            if w is not None:
                self._trees[t] = (w, (st.st_dev, st.st_ino))
                new_tree = True
        if emit and st is not None and not existed:
            self._emit(t, "created", "", rescan=True)
        if emit and new_tree:
            self._rescan_tree(t)

    def _rescan_tree(self, root: str) -> None:
        """Report what is already inside a directory that just got its watch (files written
        between its creation and the watch)."""
        n = 0
        stack = [(root, 0)]
        while stack and n < RESCAN_MAX_ENTRIES:
            d, depth = stack.pop()
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                n += 1
                self._emit(e.path, "created", "", rescan=True)
                with contextlib.suppress(OSError):
                    if e.is_dir(follow_symlinks=False) and depth + 1 < RESCAN_MAX_DEPTH:
                        stack.append((e.path, depth + 1))

    # -- events --------------------------------------------------------------------------------

    def _on_fs(self, handler: _Handler, ev: FileSystemEvent) -> None:
        if isinstance(ev, FileModifiedEvent | FileAttribEvent | DirAttribEvent):
            change = "attrib" if isinstance(ev, FileAttribEvent | DirAttribEvent) else "modified"
            src, dest = _decode(ev.src_path), ""
        elif isinstance(ev, FileCreatedEvent | DirCreatedEvent):
            change, src, dest = "created", _decode(ev.src_path), ""
        elif isinstance(ev, FileDeletedEvent | DirDeletedEvent):
            change, src, dest = "deleted", _decode(ev.src_path), ""
        elif isinstance(ev, FileMovedEvent | DirMovedEvent):
            change, src, dest = "moved", _decode(ev.src_path), _decode(ev.dest_path)
        else:
            return
        with self._lock:
            if self._observer is None:
                return
            if self._backlogged():
                return
            if handler.kind == "tree":
                self._on_tree(handler.root, change, src, dest)
            else:
                self._on_anchor(handler.root, change, src, dest)

    def _on_tree(self, root: str, change: str, src: str, dest: str) -> None:
        if root not in self._trees:
            return  # a stale watch (the directory was replaced; its anchor re-armed it)
        if change == "moved":
            if dest and is_under(dest, root) and dest != root:
                self._emit(dest, "moved", src)
            elif src and is_under(src, root) and src != root:
                self._emit(src, "deleted", "")  # renamed away: gone from the watched place
            return
        if src == root:
            return  # the directory's own entry is reported by its parent's (anchor) watch
        self._emit(src, change, "")

    def _on_anchor(self, anchor: str, change: str, src: str, dest: str) -> None:
        entry = self._anchors.get(anchor)
        if entry is None:
            return
        users = set(entry[1])
        rearm: set[str] = set()
        if change == "moved":
            if dest in users:
                self._emit(dest, "moved", src)
                self._targets[dest] = True
                rearm.add(dest)
            if src in users and src != dest:
                self._emit(src, "deleted", "")
                self._targets[src] = False
                rearm.add(src)
            touched = [p for p in (src, dest) if p]
        else:
            if src in users:
                self._emit(src, change, "")
                if change in ("created", "deleted"):
                    self._targets[src] = change == "created"
                    rearm.add(src)
            touched = [src]
        for p in touched:
            if p == anchor and change in ("deleted", "moved"):
                rearm |= users  # the anchor itself went away: watch from further up
            for t in users:
                if p != t and is_under(t, p) and change in ("created", "deleted", "moved"):
                    rearm.add(t)  # a directory on the way to a missing target came or went
        for t in sorted(rearm):
            self._arm(t, emit=True)

    def _backlogged(self) -> bool:
        obs = self._observer
        if obs is None:
            return False
        backlog = obs.event_queue.qsize()
        if backlog > self.queue_max:
            self.counts["backlog_drops"] += 1
            if not self._in_backlog:
                self._in_backlog = True
                self._overflow(f"{backlog} filesystem events waiting (queue_max {self.queue_max})")
            return True
        if self._in_backlog and backlog <= self.queue_max // 2:
            self._in_backlog = False
        return False

    def _is_ignored(self, path: str, now: int) -> bool:
        ent = self._ignored.get(path)
        if ent is not None:
            until, settled = ent
            if until < now:
                del self._ignored[path]
            else:
                # Once settled, only while the path is as we left it: a later change is not ours.
                return settled is _UNSET or _fingerprint(path) == settled
        for root, until in list(self._ignored_trees.items()):
            if until < now:
                del self._ignored_trees[root]
            elif is_under(path, root):
                return True
        return False

    def _writer(self, path: str, rescan: bool) -> Writer | bool | None:
        """The writer of this change of ``path``: a Writer, None (unknown), or False when only
        roguewatch itself wrote it."""
        if self.writers is None:
            return None
        own = self.own_writer
        new, last = self.writers.take(path, wait=False)
        if (not new and not rescan and (last is None or (own is not None and own(last)))
                and self._queued() < WAIT_BACKLOG):  # fmt: skip
            # Nobody new yet, and what we know would leave the change unnamed or dropped: give
            # its fanotify twin a few milliseconds to be queued (not while events pile up).
            new, last = self.writers.take(path, wait=True)
        others = [w for w in new if own is None or not own(w)]
        if others:
            return others[-1]  # someone else, even if inotify merged it with our own write
        if new:
            return False
        if last is not None:  # the event of a change that fanotify merged into an earlier one
            return False if own is not None and own(last) else last
        return None

    def _queued(self) -> int:
        obs = self._observer
        return obs.event_queue.qsize() if obs is not None else 0

    def _emit(self, path: str, change: str, source: str, *, rescan: bool = False) -> None:
        now = time.time_ns()
        if self._is_ignored(path, now):
            self.counts["ignored"] += 1
            return
        writer = self._writer(path, rescan)
        if writer is False:
            self.counts["own"] += 1
            return
        self.counts["events"] += 1
        if rescan:
            self.counts["rescan_events"] += 1
        ev = fs_change(path, change, source, now)
        if isinstance(writer, Writer) and writer.pid > 0:
            self.counts["named"] += 1
            ev.update(pid=writer.pid, tid=writer.pid, ppid=writer.ppid, comm=writer.comm,
                      exe=writer.exe, uid=max(writer.uid, 0), writer=writer.name())  # fmt: skip
        self.on_event(ev)

    def _monitor(self, kind: str, detail: str) -> None:
        self.on_event(
            {
                "type": "monitor",
                "kind": kind,
                "ts": time.time_ns(),
                "session": 0,
                "pid": os.getpid(),
                "flags": [],
                "detail": detail,
            }
        )

    def _writers_overflow(self) -> None:
        # From the fanotify reader thread: pids were lost, not changes (inotify has those).
        self._monitor(
            "fs_writer_overflow",
            "fanotify queue overflow: some filesystem changes are reported with writer unknown",
        )

    def _kernel_overflow(self) -> None:
        # From watchdog's inotify reader thread. A storm of overflows (an agent writing many
        # files in a watched tree, again and again) is one report a second, not one alert each.
        with self._lock:
            self.counts["overflows"] += 1
            now = time.monotonic()
            if self._ovf_pending == 0 and now - self._ovf_reported >= OVERFLOW_REPORT_S:
                self._ovf_reported = now
                qmax = (self._limits or {}).get("max_queued_events")
                self._overflow(f"inotify queue overflow (max_queued_events {qmax}): events lost")
                return
            self._ovf_pending += 1
            self._rescan.set()
            self._call_on_overflow()
            if self._ovf_timer is None:
                t = threading.Timer(
                    max(0.0, self._ovf_reported + OVERFLOW_REPORT_S - now), self._overflow_timer
                )
                t.daemon = True
                t.name = "fs-overflow-report"
                self._ovf_timer = t
                t.start()

    def _overflow_timer(self) -> None:
        with self._lock:
            if self._ovf_timer is not threading.current_thread():
                return  # cancelled by stop(), which reported
            self._ovf_timer = None
            self._report_overflows()

    def _report_overflows(self) -> None:
        """Report the kernel overflows not reported yet, in one event (with the lock held)."""
        n, self._ovf_pending = self._ovf_pending, 0
        if not n:
            return
        self._ovf_reported = time.monotonic()
        qmax = (self._limits or {}).get("max_queued_events")
        self._monitor(
            "fs_overflow",
            f"{n} inotify queue overflow{'s' if n > 1 else ''} since the last report "
            f"(max_queued_events {qmax}): events lost; rescan against baselines needed",
        )

    def _overflow(self, why: str) -> None:
        self._rescan.set()
        self._monitor("fs_overflow", f"{why}; rescan against baselines needed")
        self._call_on_overflow()

    def _call_on_overflow(self) -> None:
        if self.on_overflow is not None:
            try:
                self.on_overflow()
            except Exception:
                log.exception("on_overflow callback failed")
