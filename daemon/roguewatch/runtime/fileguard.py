"""The filesystem sensor of a collector: watchers, writer pids, baselines and restore, as one.

Owns putting together what the collector's ``FileSensor`` stands for: the paths watched (the
rule packs' path lists with every home expanded, what policies protect, roguewatch's own
files), the inotify watchers (``sensors.watchers``) with fanotify's writer pids where the
kernel gives them (``sensors.fanotify``), the baselines of those paths and their restore
(``respond.baseline``), and which writes are roguewatch's own and so never changes.

The snapshot of the baselines runs beside the loop from the start (it takes a while: every
watched file is read; bench/README.md): a session waits for it (``snapshot_done``), start-up
does not.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from roguewatch.core import paths as rw_paths
from roguewatch.policy.config import Config
from roguewatch.respond import baseline
from roguewatch.sensors import fanotify, watchers
from roguewatch.stream import bus

log = logging.getLogger("roguewatch.fileguard")


class FileGuard:
    """Watches ``paths`` and keeps their baselines; changes go to ``on_event``.

    ``is_own(pid)`` says whether a writer is roguewatch itself (the collector asks its
    guard map); it may be called before the probes are loaded and must then answer False."""

    def __init__(
        self,
        cfg: Config,
        paths: Iterable[str],
        on_event: Callable[[dict], None],
        is_own: Callable[[int], bool],
        home_paths: Callable[[str, str], list[str]] | None = None,
    ) -> None:
        self.cfg = cfg
        # (directory, what it stands for) -> its `~/` paths: a session's own HOME and
        # XDG_CONFIG_HOME, watched and baselined once each (watch_home)
        self._home_paths = home_paths
        self._homes: set[tuple[str, str]] = set()
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

    def start(self) -> None:
        self.watcher.start()

        def snapshot() -> None:
            try:
                self.baselines.snapshot(self.paths)
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
            if any(path == d or path.startswith(d.rstrip("/") + "/") for d in self._rescan_skip):
                continue  # our own logs: always changed since the baseline
            out.append(watchers.fs_change(path, "rescan"))
        return out

    def protect(self, paths: list[str]) -> None:
        """A session's protected files: watched by both sensors, and baselined."""
        self.watcher.add_paths(paths)
        self.baselines.snapshot(paths)

    def watch_home(self, home: str, means: str = "~") -> None:
        """A session's own home (``means`` ``~``) or configuration home (``~/.config``):
        the rule packs' ``~/`` paths under it are watched and baselined from now on."""
        key = (home, means)
        if self._home_paths is None or key in self._homes:
            return
        self._homes.add(key)
        new = [p for p in self._home_paths(home, means) if p not in self.paths]
        if new:
            self.protect(new)
            self.paths = [*self.paths, *new]

    def restore(self, path: str, who: dict[str, Any]) -> str:
        outcome = self.baselines.restore(path, who)
        if outcome.startswith("not baselined"):
            # A new file in a watched directory: the directory's baseline removes it.
            parent = os.path.dirname(path)
            while parent not in ("/", "") and self.baselines.baseline(parent) is None:
                parent = os.path.dirname(parent)
            if parent not in ("/", ""):
                outcome = self.baselines.restore(parent, who)
        return outcome

    def limits(self) -> dict:
        return self.watcher.limits()

    def close(self) -> None:
        self.watcher.stop()
