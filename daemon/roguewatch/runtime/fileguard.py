"""The filesystem sensor of a collector: watchers, writer pids, baselines and restore, as one.

Owns putting together what the collector's ``FileSensor`` stands for: the paths watched (the
rule packs' path lists with every home expanded, what policies protect, roguewatch's own
files), the inotify watchers (``sensors.watchers``) with fanotify's writer pids where the
kernel gives them (``sensors.fanotify``), the baselines of those paths and their restore
(``respond.baseline``), and which writes are roguewatch's own and so never changes.

The snapshot of the baselines runs beside the loop from the start (it takes a while: every
watched file is read; bench/README.md): a session waits for it (``snapshot_done``), start-up
does not. When a session starts, the files near it that it could turn into start-up hooks are
baselined too (``session_start``): the agent permission files of its working directory and
the Python start-up hooks of every interpreter's site directories.

A restore of a path with no baseline (``restore``) still ends the effect where it can: a file
made during the session (its birth time says so) is quarantined and removed; a packaged file
that was changed is put back from the package archive (``respond.packages``); a setuid or
setgid bit set on an unpackaged file is cleared. Otherwise the agent's version is copied to
quarantine and the outcome says why it could not be restored.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterable
from typing import Any

from roguewatch.core import paths as rw_paths
from roguewatch.core.fspath import canonical
from roguewatch.policy.config import Config
from roguewatch.respond import baseline, mounts, packages
from roguewatch.sensors import fanotify, watchers
from roguewatch.stream import bus

log = logging.getLogger("roguewatch.fileguard")

# A file born this long before its session started is still the session's: the birth time
# comes from the kernel's coarse clock, a session's start from the collector's.
BIRTH_SLACK_NS = 50_000_000
# Where interpreters keep their start-up hooks (*.pth, sitecustomize.py, usercustomize.py):
# each interpreter's lib/pythonX.Y and its site directories; `~/` is every home.
PYTHON_LIB_GLOBS = (
    "/usr/lib/python3*", "/usr/local/lib/python3*", "/opt/*/lib/python3*",
    "/opt/*/*/lib/python3*", "~/.local/lib/python3*", "~/.pyenv/versions/*/lib/python3*",
    "~/miniconda3/lib/python3*", "~/anaconda3/lib/python3*", "/etc/python3*",
)  # fmt: skip
PYTHON_HOOK_NAMES = ("sitecustomize.py", "usercustomize.py")
MAX_HOOK_FILES = 2000
MAX_LOG_FILES = 500  # logs baselined as a session starts, at most
MAX_LOG_BYTES = 32 << 20  # and their total size
FILE_CAPS = "security.capability"
# What is copied to quarantine of a file that stays (no baseline to restore it from) at most.
MAX_QUARANTINE_COPY = 16 << 20
PROC_SYS = "/proc/sys"
BINFMT_DIR = "/proc/sys/fs/binfmt_misc"
BINFMT_REGISTER = f"{BINFMT_DIR}/register"


class FileGuard:
    """Watches ``paths`` and keeps their baselines; changes go to ``on_event``.

    ``is_own(pid)`` says whether a writer is roguewatch itself (the collector asks its
    guard map); it may be called before the probes are loaded and must then answer False."""

    # the monitor's runtime directories (``Config.runtime_dirs``) and its own files in them
    _runtime_dirs: tuple[str, ...] = ()
    _ours: frozenset[str] = frozenset()

    def __init__(
        self,
        cfg: Config,
        paths: Iterable[str],
        on_event: Callable[[dict], None],
        is_own: Callable[[int], bool],
        workspace_files: Iterable[str] = (),
        homes: Iterable[str] = (),
        sysctls: Iterable[str] = (),
        home_paths: Callable[[str, str], list[str]] | None = None,
        log_dirs: Iterable[str] = (),
    ) -> None:
        self.cfg = cfg
        # Relative to a session's working directory: baselined as the session starts.
        self.workspace_files = [w.lstrip("/") for w in workspace_files if w.strip("/")]
        self.homes = list(homes) or watchers.home_dirs()
        # Kernel settings (/proc/sys) read as a session starts, written back by a restore;
        # and the binfmt_misc handlers there were then.
        self.sysctls = [p for p in sysctls if p.startswith(PROC_SYS)]
        self._sysctl_base: dict[str, bytes] = {}
        self._binfmt_base: set[str] | None = None
        # (directory, what it stands for) -> its `~/` paths: a session's own HOME and
        # XDG_CONFIG_HOME, watched and baselined once each (watch_home)
        self._home_paths = home_paths
        self._homes_watched: set[tuple[str, str]] = set()
        # Logs are never watched (they change all the time): the small ones are baselined as
        # a session starts, with their times, and put back in place (their writers keep
        # their file open) when the session truncates, overwrites, removes or timestomps one.
        self.log_dirs = [d for d in log_dirs if d.startswith("/")]
        self._log_times: dict[str, tuple[int, int]] = {}
        self.snapshot_done = threading.Event()
        # Not our own state (baselines, quarantine: thousands of files that we write): the
        # probes still see an agent that touches it.
        own = tuple(d.rstrip("/") for d in (cfg.state_dir, rw_paths.STATE_DIR))
        watched = [p for p in paths if not any(p == d or p.startswith(d + "/") for d in own)]
        writers: fanotify.WriterSensor | None = None
        try:
            sensor = fanotify.WriterSensor()
            sensor.start()
            writers = sensor
        except fanotify.Unavailable as exc:
            log.warning("fanotify unavailable (%s): changes seen only by the filesystem "
                        "watchers have writer unknown; the alert log directory is not watched",
                        exc.strerror or exc)  # fmt: skip
        me = os.getpid()

        def own_writer(w: fanotify.Writer) -> bool:
            """roguewatch itself: this process, or a guarded one (the service, the evaluator,
            `run`'s launcher: each is guarded as it starts)."""
            return w.pid == me or is_own(w.pid)

        alerts_dir = os.path.dirname(cfg.alerts_file) if cfg.alerts_file else ""
        if writers is not None and alerts_dir:
            watched.append(cfg.alerts_file)  # watched, our own appends dropped by pid
            # Made here, before it is watched, when missing: the evaluator's first open would
            # otherwise create it before roguewatchd has guarded it (a change by "someone").
            if os.path.isdir(alerts_dir) and not os.path.lexists(cfg.alerts_file):
                try:
                    os.close(os.open(cfg.alerts_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640))  # fmt: skip
                except OSError:
                    pass
        self.watcher = watchers.FsWatcher(watched, on_event, writers=writers, own_writer=own_writer)
        self.baselines = baseline.Baselines(
            cfg.state_dir, cfg.baseline_max_copy_bytes,
            ignore=self.watcher.ignore, settle=self.watcher.settle,
        )  # fmt: skip
        # Our own writes are never changes. With writer pids, whatever a roguewatch process
        # writes is dropped by pid. Without them, the evaluator's files are ignored whole: the
        # alert file's directory (it appends to it) and its status file (rewritten every
        # second, in /run/roguewatch). Its alert socket always: the evaluator binds it before
        # roguewatchd has guarded it.
        ours = [bus.ipc_path(cfg.alerts_endpoint) or ""]
        self._runtime_dirs = tuple(cfg.runtime_dirs())
        self._ours = frozenset(
            {
                p
                for p in (
                    bus.ipc_path(cfg.alerts_endpoint),
                    bus.ipc_path(cfg.control_endpoint),
                    bus.ipc_path(cfg.events_endpoint),
                    cfg.status_file,
                )
                if p
            }
        )
        if writers is None:
            if alerts_dir:
                self.watcher.ignore(alerts_dir, watchers.FOREVER_NS, subtree=True)
            ours += [cfg.status_file, f"{cfg.status_file}.tmp" if cfg.status_file else ""]
        for p in ours:
            if p:
                self.watcher.ignore(p, watchers.FOREVER_NS)
        # A rescan (after an overflow) cannot tell our appends from anyone's: not there.
        self._rescan_skip = (alerts_dir,) if alerts_dir else ()
        self.paths = watched
        self.alerts_dir = alerts_dir
        self._protected: set[str] = set()
        self._host_mounts = mounts.host_mount_ids()

    def _runtime(self, path: str) -> bool:
        """In a runtime directory of the monitor (``Config.runtime_dirs``): watched, never
        baselined."""
        return is_under_any(path, self._runtime_dirs)

    def start(self, keep_baselines: bool = False) -> None:
        """Watch, and snapshot the baselines beside the loop. ``keep_baselines`` (the last
        collector did not end cleanly): the paths that have a baseline keep it (the gap is
        judged against it, ``rescan``); only new paths are snapshotted."""
        self.watcher.start()
        paths = self.paths
        if keep_baselines:
            known = self.baselines.roots()
            paths = [p for p in paths if canonical(p) not in known]

        paths = [p for p in paths if not self._runtime(p)]

        def snapshot() -> None:
            try:
                self.baselines.snapshot(paths)
            finally:
                self.snapshot_done.set()

        threading.Thread(target=snapshot, daemon=True, name="baseline-snapshot").start()

    # -- the collector's FileSensor ----------------------------------------------------------

    @property
    def rescan_needed(self) -> bool:
        return self.watcher.rescan_needed

    def take_rescan(self) -> bool:
        return self.watcher.take_rescan()

    def recheck(self) -> None:
        self.watcher.recheck()

    def rescan(self) -> list[dict]:
        """``fs_change`` events for whatever differs from the baselines now."""
        out = []
        for path in self.baselines.rescan():
            if self._runtime(path):
                continue  # made anew by this monitor (a baseline left by an older version)
            if is_under_any(path, self._rescan_skip):
                continue  # our own logs: always changed since the baseline
            if path in self._log_times:
                continue  # a log: appended to all the time (only a session's change counts)
            out.append(watchers.fs_change(path, "rescan"))
        return out

    def protect(self, paths: list[str], keep: bool = False) -> None:
        """A session's protected files: watched by both sensors, and baselined (``keep``: a
        session taken back after a restart: a path baselined already keeps its baseline, the
        gap is judged against it)."""
        self.watcher.add_paths(paths)
        self._protected.update(canonical(p) for p in paths)
        if keep:
            known = self.baselines.roots()
            paths = [p for p in paths if canonical(p) not in known]
        if paths:
            self.baselines.snapshot(paths)

    def mount_over(self, ev: dict[str, Any], cwd: str | None, undo: bool) -> tuple[str, str] | None:
        """A session's `mount` event: (mount point, what it did and what was done) when the
        mount covers a path watched here (the rule packs' paths, protected files, the
        monitor's own directories and alert log), unmounted when ``undo``; None otherwise."""
        if not mounts.makes_a_mount(ev):
            return None
        point = mounts.mount_point(ev, cwd)
        if not point:
            return None
        extra = [self.alerts_dir, self.cfg.state_dir, *rw_paths.MONITOR_PATHS]
        watched = [canonical(p) for p in [*self.paths, *self._protected, *extra] if p]
        hidden = mounts.covers(point, watched)
        if hidden is None:
            return None
        pid = int(ev.get("pid") or 0)
        m = mounts.topmost(pid, point)
        if m is None:
            return None  # already gone (or in a namespace that is gone)
        if m.mount_id in self._host_mounts and mounts.same_namespace(pid):
            return None  # there before the monitor started: not the session's
        what = (f"{m.fstype} {m.source!r} mounted at {point} by pid {pid}, over the watched "
                f"path {hidden}")  # fmt: skip
        outcome = mounts.undo(pid, m) if undo else "left mounted (observe mode)"
        return point, f"{what}: {outcome}"

    def session_start(self, cwd: str) -> int:
        """Baseline what a session starting in ``cwd`` could turn into a hook and that no
        watched list names: its workspace's agent permission files (absent ones too: a new
        one is then removed) and every interpreter's Python start-up hooks. The number of
        paths recorded."""
        paths: list[str] = []
        if cwd.startswith("/"):
            paths += [os.path.normpath(os.path.join(cwd, w)) for w in self.workspace_files]
        paths += python_hook_files(self.homes)
        logs = self._log_files()
        paths += logs
        self._read_sysctls()
        try:
            return self.baselines.snapshot(dict.fromkeys(paths))
        except (OSError, baseline.BaselineError) as exc:
            log.warning("session baselines near %s: %s", cwd, exc)
            return 0

    def _log_files(self) -> list[str]:
        """The logs a session start baselines (small regular files, the journal's excepted),
        bounded; their times are kept too."""
        out: list[str] = []
        total = 0
        limit = self.baselines.max_copy_bytes
        own = tuple(o for o in (rw_paths.LOG_DIR, os.path.dirname(self.cfg.alerts_file or ""))
                    if o)  # fmt: skip
        for d in self.log_dirs:
            walk = (
                [(os.path.dirname(d), [], [os.path.basename(d)])]
                if os.path.isfile(d)
                else (os.walk(d))
            )
            for top, dirs, files in walk:
                dirs[:] = [x for x in dirs if x != "journal"
                           and not is_under_any(os.path.join(top, x), own)]  # fmt: skip
                for n in files:
                    if n.endswith((".journal", ".journal~")) or len(out) >= MAX_LOG_FILES:
                        continue
                    p = os.path.join(top, n)
                    try:
                        st = os.lstat(p)
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                        continue
                    if total + st.st_size > MAX_LOG_BYTES:
                        continue
                    total += st.st_size
                    out.append(p)
                    self._log_times[p] = (st.st_atime_ns, st.st_mtime_ns)
        return out

    def _restore_log(self, path: str, who: dict[str, Any]) -> str | None:
        """A log baselined at session start, put back in place (the same inode, so a daemon
        appending to it goes on doing so), or its times back; None for any other path."""
        if path not in self._log_times:
            return None
        atime, mtime = self._log_times[path]
        if who.get("event") == "utimes":
            try:
                os.utime(path, ns=(atime, mtime), follow_symlinks=False)
            except OSError as exc:
                return f"not restored: its times: {exc.strerror or exc}"
            return "timestamps restored to their values at session start"
        base = self.baselines.baseline(path) or {}
        try:
            content = self.baselines.baseline_content(path)
        except (OSError, baseline.BaselineError):
            content = None
        if content is None:
            return None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         base.get("mode", 0o640))  # fmt: skip
        except OSError as exc:
            return f"not restored: reopening the log: {exc.strerror or exc}"
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return "not restored: no longer a regular file"
            current = os.pread(fd, max(st.st_size, 0), 0) if st.st_size <= MAX_LOG_BYTES else b""
            appended = bool(int(who.get("open_flags") or 0) & os.O_APPEND)
            if current == content or (current.startswith(content) and not appended):
                # Nothing of what was there is gone (a daemon's lines since are its own).
                return "unchanged (only appended to since the session started)"
            kept = keep_copy(self.baselines, path, who) if current else "it was empty"
            os.ftruncate(fd, 0)
            view = memoryview(content)
            off = 0
            while off < len(view):
                off += os.pwrite(fd, view[off:], off)
            if base.get("uid", -1) >= 0:
                with contextlib.suppress(OSError):
                    os.fchown(fd, base["uid"], base["gid"])
                    os.fchmod(fd, base["mode"])
            os.fsync(fd)
        finally:
            os.close(fd)
        return f"restored in place from its baseline at session start; {kept}"

    def _read_sysctls(self) -> None:
        for p in self.sysctls:
            if p == BINFMT_REGISTER:
                continue
            try:
                with open(p, "rb") as f:
                    self._sysctl_base[p] = f.read(4096)
            except OSError:
                continue
        try:
            self._binfmt_base = set(os.listdir(BINFMT_DIR))
        except OSError:
            self._binfmt_base = None

    def _log_of(self, path: str, who: dict[str, Any]) -> str | None:
        """The baselined log an event changed: its path, or a rename's source (moved away)."""
        if path in self._log_times:
            return path
        src = str(who.get("source") or "")
        if who.get("event") == "rename" and src in self._log_times:
            return src
        return None

    def _restore_sysctl(self, path: str) -> str | None:
        """A kernel setting back to its value when the session started; None when ``path``
        is no setting read then."""
        if path == BINFMT_REGISTER or (path.startswith(BINFMT_DIR + "/")
                                       and self._binfmt_base is not None):  # fmt: skip
            if self._binfmt_base is None:
                return "not restored: binfmt_misc was not mounted when the session started"
            try:
                new = sorted(set(os.listdir(BINFMT_DIR)) - self._binfmt_base - {"register",
                             "status"})  # fmt: skip
                for n in new:
                    with open(os.path.join(BINFMT_DIR, n), "wb") as f:
                        f.write(b"-1")
            except OSError as exc:
                return f"not restored: binfmt_misc handlers: {exc.strerror or exc}"
            if not new:
                return "unchanged (no binfmt_misc handler was added)"
            return f"restored: binfmt_misc handler(s) {', '.join(new)} removed"
        old = self._sysctl_base.get(path)
        if old is None:
            return None
        try:
            with open(path, "rb") as f:
                if f.read(4096) == old:
                    return "unchanged (matches the value at session start)"
            with open(path, "wb") as f:
                f.write(old)
        except OSError as exc:
            return f"not restored: writing {path}: {exc.strerror or exc}"
        shown = old.decode(errors="replace").strip()[:80]
        return f"restored to its value at session start ({shown!r})"

    def watch_home(self, home: str, means: str = "~") -> None:
        """A session's own home (``means`` ``~``) or configuration home (``~/.config``):
        the rule packs' ``~/`` paths under it are watched and baselined from now on."""
        key = (home, means)
        if self._home_paths is None or key in self._homes_watched:
            return
        self._homes_watched.add(key)
        new = [p for p in self._home_paths(home, means) if p not in self.paths]
        if new:
            self.protect(new)
            self.paths = [*self.paths, *new]

    def restore(self, path: str, who: dict[str, Any]) -> str:
        started = int(who.get("started_ns") or 0)
        if self._runtime(path):
            if path in self._ours or path in self._runtime_dirs:
                # A removed or replaced socket of ours is bound again by the collector
                # (``Collector.reconcile``); the status file is rewritten every second.
                return "not restored: roguewatch's own runtime file, made again by the monitor"
            try:  # anything else there is the agent's: nothing of ours to put back
                return self._unbaselined(path, who, started)
            except (OSError, baseline.BaselineError) as exc:
                return f"not restored: {exc}"
        log = self._log_of(path, who)
        if log is not None:
            done = self._restore_log(log, who)
            if done is not None:
                return done
        if path.startswith(PROC_SYS + "/"):
            done = self._restore_sysctl(path)
            if done is not None:
                return done
            return "not restored: a kernel setting not read when the session started"
        if who.get("event") == "setxattr" and who.get("xattr") == FILE_CAPS:
            # Not part of a baseline (content, mode, owner): the attribute itself goes.
            return self._drop_file_caps(path, who, started)
        outcome = self.baselines.restore(path, who)
        if outcome.startswith("no baseline copy"):
            # Too large to copy at baseline, so only quarantined: the package may have it.
            return self._from_package(path, who) or outcome
        if not outcome.startswith("not baselined"):
            return outcome
        # A new file in a watched directory: the directory's baseline removes it.
        parent = os.path.dirname(path)
        while parent not in ("/", "") and self.baselines.baseline(parent) is None:
            parent = os.path.dirname(parent)
        if parent not in ("/", ""):
            return self.baselines.restore(parent, who)
        try:
            return self._unbaselined(path, who, started)
        except (OSError, baseline.BaselineError) as exc:
            return f"not restored: no baseline, and {exc}"

    def _from_package(
        self, path: str, who: dict[str, Any], pkg: packages.Packaged | None = None
    ) -> str | None:
        return restore_from_package(self.baselines, path, who, pkg)

    def _drop_file_caps(self, path: str, who: dict[str, Any], started: int) -> str:
        """A file capability the session set: removed, unless the file is a package's (its
        maintainer script sets its capabilities: ping's cap_net_raw)."""
        if not os.path.lexists(path):
            return "unchanged (the file is gone)"
        born = baseline.birth_ns(path)
        made_now = born is not None and started and born >= started - BIRTH_SLACK_NS
        if not made_now:
            pkg = packages.owner(os.path.realpath(path)) or packages.owner(path)
            if pkg is not None:
                return (f"not restored: a file of package {pkg.name}, whose capabilities its "
                        "maintainer script sets (getcap; reinstall it)")  # fmt: skip
        try:
            os.removexattr(path, FILE_CAPS, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                return "unchanged (no file capability on it)"
            return f"not restored: removing its file capability: {exc.strerror or exc}"
        return "file capability removed (security.capability)"

    def _unbaselined(self, path: str, who: dict[str, Any], started: int) -> str:
        """A path no baseline covers: undo what can be told apart from what was there."""
        if not os.path.lexists(path):
            if who.get("event") == "unlink":
                return self._from_package(path, who) or (
                    "not restored: deleted, and there was no baseline copy to put back"
                )
            return "not restored: no baseline, and nothing is at the path now"
        born = baseline.birth_ns(path)
        if born is not None and started and born >= started - BIRTH_SLACK_NS:
            qid = self.baselines.quarantine_path(path, who, remove=True)
            return (f"removed (made during the session, no baseline); agent's version "
                    f"quarantined as {qid}")  # fmt: skip
        pkg = packages.owner(os.path.realpath(path)) or packages.owner(path)
        if pkg is not None:
            done = self._from_package(path, who, pkg)
            if done:
                return done
        if who.get("event") in ("chmod", "open") and int(who.get("mode") or 0) & 0o6000:
            if pkg is None:
                mode = self.baselines.clear_setid(path)
                if mode is not None:
                    return f"setuid/setgid bits cleared (now {mode:04o}; no baseline of its mode)"
            else:
                return (f"not restored: a file of package {pkg.name}, whose packaged mode is "
                        "not known here (dpkg --verify, or reinstall it)")  # fmt: skip
        why = "not restored: it existed before the session and has no baseline"
        return f"{why}; {keep_copy(self.baselines, path, who)}"

    def install(self, path: str, content: bytes | None) -> str:
        """The monitor's own write of a watched file, made its new baseline (no event)."""
        return self.baselines.install(path, content)

    def limits(self) -> dict:
        return self.watcher.limits()

    def close(self) -> None:
        self.watcher.stop()


def restore_from_package(
    baselines: baseline.Baselines, path: str, who: dict[str, Any],
    pkg: packages.Packaged | None = None,
) -> str | None:  # fmt: skip
    """A changed (or removed) packaged file put back from its package archive, the agent's
    version quarantined; None when ``path`` is no changed file of a package."""
    pkg = pkg or packages.owner(os.path.realpath(path)) or packages.owner(path)
    if pkg is None or not pkg.md5 or packages.md5_of(path) == pkg.md5:
        return None  # (missing: quarantined whole by the baseline's restore, put back here)
    orig = packages.pristine(pkg, os.path.realpath(path)) or packages.pristine(pkg, path)
    if orig is not None:
        qid = baselines.replace_content(path, orig[0], orig[1], who)
        kept = f"; agent's version quarantined as {qid}" if qid else ""
        return f"restored from package {pkg.name} {pkg.version}{kept}"
    return (f"not restored: a file of package {pkg.name} was changed and its archive is not "
            f"in apt's cache (apt-get install --reinstall {pkg.name}); "
            f"{keep_copy(baselines, path, who)}")  # fmt: skip


def keep_copy(baselines: baseline.Baselines, path: str, who: dict[str, Any]) -> str:
    """A copy of what the agent left, for the operator, unless it is too large to keep (a
    journal file): what was done, in words."""
    try:
        size = os.lstat(path).st_size
    except OSError:
        return "nothing left to quarantine"
    if size > MAX_QUARANTINE_COPY:
        return f"agent's version not quarantined ({size} bytes: larger than {MAX_QUARANTINE_COPY})"
    qid = baselines.quarantine_path(path, who, remove=False)
    return f"agent's version quarantined as {qid} (copy)" if qid else "nothing to quarantine"


def python_hook_files(homes: Iterable[str]) -> list[str]:
    """Every Python start-up hook of the host's interpreters: the ``*.pth`` files of their
    site directories, and ``sitecustomize.py``/``usercustomize.py`` there and in each
    ``lib/pythonX.Y`` (present or not: a new one is then removed). Virtual environments are
    the session's own and are not among them."""
    dirs: list[str] = []
    for pattern in PYTHON_LIB_GLOBS:
        expanded = (
            [os.path.join(h, pattern[2:]) for h in homes] if pattern[:2] == "~/" else [pattern]
        )
        for pat in expanded:
            for lib in glob.glob(pat):
                if not os.path.isdir(lib) or os.path.islink(lib):
                    continue
                dirs.append(lib)
                dirs += [d for d in (f"{lib}/site-packages", f"{lib}/dist-packages")
                         if os.path.isdir(d)]  # fmt: skip
    out: dict[str, None] = {}
    for d in dict.fromkeys(dirs):
        for n in PYTHON_HOOK_NAMES:
            out.setdefault(os.path.join(d, n), None)
        if d.endswith(("-packages",)) or os.path.basename(d).startswith("python"):
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for n in names:
                if n.endswith(".pth"):
                    out.setdefault(os.path.join(d, n), None)
        if len(out) > MAX_HOOK_FILES:
            break
    return list(out)[:MAX_HOOK_FILES]


def is_under_any(path: str, dirs: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)
