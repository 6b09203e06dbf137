"""Filesystem watchers on real files with real inotify (no probes)."""

from __future__ import annotations

import contextlib
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from roguewatch.detect import ruleset
from roguewatch.respond.baseline import Baselines
from roguewatch.sensors.watchers import (
    FsWatcher,
    default_list_names,
    home_dirs,
    home_paths,
    watch_paths,
)

from tests.conftest import require_root

QUEUED = "/proc/sys/fs/inotify/max_queued_events"


class Sink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def __call__(self, ev: dict[str, Any]) -> None:
        with self.cond:
            self.events.append(ev)
            self.cond.notify_all()

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 2.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching event; got {self.summary()}")
                self.cond.wait(left)

    def fs(self, path: str, change: str, source: str | None = None) -> dict:
        def pred(e: dict[str, Any]) -> bool:
            return (
                e["type"] == "fs_change"
                and e["path"] == path
                and e["change"] == change
                and (source is None or e["source"] == source)
            )

        return self.wait(pred)

    def paths(self) -> set[str]:
        with self.cond:
            return {e["path"] for e in self.events if e["type"] == "fs_change"}

    def summary(self) -> list[tuple[str, str, str]]:
        return [
            (e.get("change", e.get("kind", "")), e.get("path", ""), e.get("source", ""))
            for e in self.events[-20:]
        ]


@pytest.fixture
def watch(tmp_path) -> Iterator[Callable[..., tuple[FsWatcher, Sink]]]:
    made: list[FsWatcher] = []

    def start(paths: list[str], **kw: Any) -> tuple[FsWatcher, Sink]:
        sink = Sink()
        w = FsWatcher(paths, sink, **kw)
        w.start()
        made.append(w)
        return w, sink

    yield start
    for w in made:
        w.stop()


def _write(path: str, data: str = "x\n", mode: str = "w") -> None:
    with open(path, mode) as f:
        f.write(data)


def test_watched_file_create_modify_attrib_move_onto_delete(tmp_path, watch):
    d = str(tmp_path)
    f = os.path.join(d, "crontab")
    _write(f, "old\n")
    w, sink = watch([f])

    _write(os.path.join(d, "unrelated"), "noise\n")  # same directory, not watched
    _write(f, "appended\n", "a")
    e = sink.fs(f, "modified")
    assert e["type"] == "fs_change" and e["writer"] == "unknown" and e["session"] == 0
    for k in ("ts", "pid", "tid", "ppid", "uid", "gid", "comm", "ret", "flags", "exec_id",
              "pexec_id", "exe", "source"):  # fmt: skip
        assert k in e
    os.chmod(f, 0o600)
    sink.fs(f, "attrib")

    tmp = os.path.join(d, ".crontab.new")
    _write(tmp, "replaced\n")
    os.rename(tmp, f)
    sink.fs(f, "moved", source=tmp)

    os.unlink(f)
    sink.fs(f, "deleted")
    _write(f, "again\n")
    sink.fs(f, "created")
    assert os.path.join(d, "unrelated") not in sink.paths()
    assert tmp not in sink.paths()
    assert w.limits()["events"] >= 5


def test_move_onto_watched_file_from_outside(tmp_path, watch):
    inside, outside = tmp_path / "etc", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    f = str(inside / "passwd")
    _write(f)
    _, sink = watch([f])
    src = str(outside / "evil")
    _write(src, "evil\n")
    os.rename(src, f)
    e = sink.fs(f, "moved")
    assert e["source"] == ""  # the source directory is not watched: unknown


def test_new_file_and_wants_dir_in_watched_directory(tmp_path, watch):
    d = tmp_path / "cron.d"
    d.mkdir()
    _, sink = watch([str(d)])
    job = str(d / "job")
    _write(job, "* * * * * root /tmp/x\n")
    sink.fs(job, "created")
    wants = d / "multi-user.target.wants"
    wants.mkdir()
    sink.fs(str(wants), "created")
    link = wants / "evil.service"
    os.symlink("/tmp/evil.service", link)  # inside a subdirectory: the watch is recursive
    sink.fs(str(link), "created")
    tmp = str(d / ".job2.tmp")
    _write(tmp)
    os.rename(tmp, str(d / "job2"))
    sink.fs(str(d / "job2"), "moved", source=tmp)


def test_directory_that_did_not_exist_is_picked_up(tmp_path, watch):
    home = tmp_path / "home"
    home.mkdir()
    target = home / ".config" / "systemd" / "user"
    _, sink = watch([str(target)])
    os.makedirs(target)
    unit = str(target / "evil.service")
    _write(unit, "[Service]\nExecStart=/tmp/x\n")  # right after the mkdir: must not be missed
    sink.wait(lambda e: e.get("path") == unit and e["change"] in ("created", "modified"))
    sink.fs(str(target), "created")
    # Later writes come through the real watch.
    _write(unit, "more\n", "a")
    sink.fs(unit, "modified")


def test_missing_file_target_seen_when_its_directory_appears(tmp_path, watch):
    keys = tmp_path / "home" / ".ssh" / "authorized_keys"
    (tmp_path / "home").mkdir()
    _, sink = watch([str(keys)])
    keys.parent.mkdir()
    _write(str(keys), "ssh-ed25519 AAAA attacker\n")
    sink.wait(lambda e: e.get("path") == str(keys) and e["change"] in ("created", "modified"))


def test_directory_replaced_by_rename_is_rewatched(tmp_path, watch):
    d = tmp_path / "profile.d"
    d.mkdir()
    _, sink = watch([str(d)])
    staged = tmp_path / "staged"
    staged.mkdir()
    _write(str(staged / "evil.sh"), "curl x | sh\n")
    os.rename(d, tmp_path / "old")
    os.rename(staged, d)
    sink.fs(str(d), "moved")
    sink.fs(str(d / "evil.sh"), "created")  # found by the rescan of the new directory
    _write(str(d / "second.sh"), "x\n")
    sink.fs(str(d / "second.sh"), "created")


def test_ignore_suppresses_our_own_writes(tmp_path, watch):
    d = str(tmp_path)
    f, other = os.path.join(d, "bashrc"), os.path.join(d, "profile")
    _write(f)
    _write(other)
    w, sink = watch([f, other])
    w.ignore(f, time.time_ns() + 2_000_000_000)
    tmp = os.path.join(d, ".bashrc.rw-tmp")
    w.ignore(tmp, time.time_ns() + 2_000_000_000)
    _write(tmp, "restored\n")
    os.rename(tmp, f)
    _write(f, "again\n", "a")
    _write(other, "agent\n", "a")
    sink.fs(other, "modified")  # later event through the same watch: the earlier ones are in
    time.sleep(0.1)
    assert f not in sink.paths()
    assert w.limits()["ignored"] >= 2


def test_restore_is_silent_but_a_later_write_is_not(tmp_path, watch):
    d = tmp_path / "cron.d"
    d.mkdir()
    job = d / "job"
    _write(str(job), "ok\n")
    w, sink = watch([str(d)])
    b = Baselines(str(tmp_path / "state"), ignore=w.ignore, settle=w.settle)
    b.snapshot([str(d)])
    _write(str(job), "evil\n", "a")
    sink.fs(str(job), "modified")
    n = len(sink.events)
    assert b.restore(str(job), {"rule": "persistence_cron_write"}).startswith("restored")
    time.sleep(0.7)  # watchdog reports an unpaired rename (the quarantine move) after 0.5 s
    assert sink.events[n:] == []
    # Inside the ignore window, another writer is still seen.
    _write(str(job), "evil again\n", "a")
    sink.wait(lambda e: e.get("path") == str(job) and len(sink.events) > n)
    assert w.limits()["ignored"] >= 2


def test_watch_paths_expands_homes_and_selects_path_lists():
    lists = {
        "cron_paths": ("/etc/cron.d", "/etc/crontab"),
        "shell_startup_home_files": ("~/.bashrc",),
        "systemd_unit_home_paths": ("~/.config/systemd",),
        "firewall_tools": ("iptables",),
        "log_dirs": ("/var/log",),
        "agent_permission_globs": ("*/.mcp.json",),
    }
    got = watch_paths(lists, ["/etc/roguewatch", "/etc/cron.d"], homes=["/home/a", "/root"])
    assert got == [
        "/etc/cron.d",
        "/etc/crontab",
        "/home/a/.bashrc",
        "/root/.bashrc",
        "/home/a/.config/systemd",
        "/root/.config/systemd",
        "/etc/roguewatch",
    ]
    assert "/root" in home_dirs()
    accounts = {os.path.normpath(p.pw_dir) for p in pwd.getpwall()}
    # every account's existing home (service accounts' in /var/lib too), no system directory
    assert set(home_dirs()) <= accounts | {"/root"}
    assert not {"/", "/bin", "/usr/sbin", "/nonexistent"} & set(home_dirs())
    assert all(os.path.isdir(h) for h in home_dirs())
    # a session's own HOME and XDG_CONFIG_HOME
    assert home_paths(lists, "/tmp/h") == ["/tmp/h/.bashrc", "/tmp/h/.config/systemd"]
    assert home_paths(lists, "/tmp/cfg", "~/.config") == ["/tmp/cfg/systemd"]


def test_watch_paths_of_the_default_rules():
    rs = ruleset.load_rules()
    names = default_list_names(rs.lists)
    assert {"cron_paths", "systemd_unit_home_paths", "shell_startup_home_files",
            "roguewatch_paths", "account_files"} <= set(names)  # fmt: skip
    assert "log_dirs" not in names and "firewall_tools" not in names
    paths = watch_paths(rs.lists, [], homes=["/home/u", "/root"])
    assert "/home/u/.ssh/authorized_keys" in paths and "/root/.bashrc" in paths
    assert "/run/systemd/transient" in paths and "/etc/ld.so.preload" in paths
    assert all(p.startswith("/") and "~" not in p for p in paths)


def test_watch_paths_cover_log_and_audit_configuration_and_our_own_files():
    """The issue's "log and audit configuration, roguewatch's own config, rules and logs":
    named files and directories, never the whole of /var/log (every log line would be an
    event)."""
    rs = ruleset.load_rules()
    paths = watch_paths(rs.lists, [], homes=["/root"])
    for p in ("/etc/audit", "/etc/rsyslog.conf", "/etc/rsyslog.d", "/etc/logrotate.conf",
              "/etc/logrotate.d", "/etc/systemd/journald.conf", "/etc/systemd/journald.conf.d",
              "/etc/roguewatch", "/var/log/roguewatch", "/etc/systemd/system"):  # fmt: skip
        assert p in paths, p
    assert "/var/log" not in paths and "/run/log/journal" not in paths


def test_limits_are_read(tmp_path, watch):
    w, _ = watch([str(tmp_path)])
    lim = w.limits()
    assert lim["max_user_watches"] and lim["max_user_watches"] > 0
    assert lim["max_queued_events"] and lim["max_queued_events"] > 0
    assert lim["watches"] >= 2  # the directory and its parent (its own entry)


def watch_small_queue(watch, paths: list[str], **kw: Any) -> tuple[FsWatcher, Sink]:
    """A watcher whose inotify queue holds 16 events (the limit is taken when the inotify
    instance is made, at start; the host's is put back at once)."""
    require_root("needs root to lower fs.inotify.max_queued_events")
    with open(QUEUED) as f:
        saved = f.read().strip()
    try:
        with open(QUEUED, "w") as f:
            f.write("16")
        w, sink = watch(paths, **kw)
    finally:
        with open(QUEUED, "w") as f:
            f.write(saved)
    assert w._observer is not None
    return w, sink


@contextlib.contextmanager
def reader_paused(w: FsWatcher) -> Iterator[None]:
    """Hold watchdog's inotify reader (it takes this lock before each read): whatever is
    written meanwhile fills the kernel queue, whatever the scheduler does."""
    assert w._observer is not None
    with w._observer._inotify_fd._lock:
        yield


def test_queue_overflow_is_reported(tmp_path, watch):
    d = tmp_path / "spool"
    d.mkdir()
    overflows: list[int] = []
    w, sink = watch_small_queue(watch, [str(d)], on_overflow=lambda: overflows.append(1))
    with reader_paused(w):
        for i in range(1000):
            with open(d / f"f{i}", "w") as f:
                f.write("x")
    ev = sink.wait(lambda e: e["type"] == "monitor" and e["kind"] == "fs_overflow", 3.0)
    assert "overflow" in ev["detail"]
    assert overflows
    assert w.take_rescan() is True
    assert w.take_rescan() is False
    assert w.limits()["overflows"] >= 1


def _overflows(sink: Sink) -> list[dict[str, Any]]:
    with sink.cond:
        return [e for e in sink.events if e["type"] == "monitor" and e["kind"] == "fs_overflow"]


def _until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_an_overflow_of_a_large_tree_does_not_feed_itself(tmp_path, watch):
    """watchdog's own overflow handling removed every watch of a recursive tree and added them
    again: one IN_IGNORED per removed watch, so a tree of more directories than the kernel's
    queue overflowed it again, forever (hundreds of overflows a second, each one an alert).
    One overflow must stay one overflow, and the watches must stay alive."""
    tree = tmp_path / "tree"
    for i in range(20):
        for j in range(10):
            (tree / f"d{i}" / f"e{j}").mkdir(parents=True)  # 221 directories, a queue of 16
    deep = tree / "d19" / "e9" / "deeper" / "deepest"
    deep.mkdir(parents=True)
    w, sink = watch_small_queue(watch, [str(tree)])
    assert w.limits()["watches"] >= 224
    with reader_paused(w):  # the kernel queue fills
        for i in range(100):
            with open(tree / f"flood-{i}", "w") as f:
                f.write("x")
    sink.wait(lambda e: e["type"] == "monitor" and e["kind"] == "fs_overflow", 3.0)
    time.sleep(0.5)
    before = w.limits()["overflows"]
    time.sleep(2.0)
    after = w.limits()["overflows"]
    assert after - before <= 2, f"{after - before} more overflows in 2 s: a self-feeding loop"
    assert after <= 3
    assert len(_overflows(sink)) <= 2, [e["detail"] for e in _overflows(sink)[:5]]
    assert w.limits()["watches"] >= 224  # every directory still watched
    # The watches are alive: a change deep in the tree is still seen, and a directory made
    # since is watched too.
    f = str(deep / "evil.service")
    _write(f, "[Service]\n")
    sink.fs(f, "created")
    newdir = tree / "d0" / "new"
    newdir.mkdir()
    sink.fs(str(newdir), "created")
    g = str(newdir / "job")
    _write(g)
    sink.fs(g, "created")
    assert w.take_rescan() is True


def test_an_overflow_storm_is_reported_once_a_second_with_its_count(tmp_path, watch):
    """The first overflow is reported at once; the next ones of the same second are counted and
    reported together when the second is up, even when the storm has stopped by then."""
    w, sink = watch([str(tmp_path)])
    for _ in range(5):
        w._kernel_overflow()
    first = _overflows(sink)
    assert len(first) == 1 and "rescan" in first[0]["detail"]
    assert w.limits()["overflows"] == 5 and w.rescan_needed
    sink.wait(lambda e: e.get("kind") == "fs_overflow" and e is not first[0], 2.0)
    reports = _overflows(sink)
    assert len(reports) == 2
    assert "4 inotify queue overflows since the last report" in reports[1]["detail"]
    assert "rescan" in reports[1]["detail"]
    time.sleep(1.2)  # nothing more to say: no empty report
    assert len(_overflows(sink)) == 2
    # A second later, an overflow is again reported at once.
    w._kernel_overflow()
    assert len(_overflows(sink)) == 3
    assert w.limits()["overflows"] == 6


def test_a_pending_overflow_report_is_sent_on_stop(tmp_path):
    sink = Sink()
    w = FsWatcher([str(tmp_path)], sink)
    w.start()
    try:
        w._kernel_overflow()
        w._kernel_overflow()
        w._kernel_overflow()
    finally:
        w.stop()
    reports = _overflows(sink)
    assert len(reports) == 2
    assert "2 inotify queue overflows since the last report" in reports[1]["detail"]


def test_after_an_overflow_replaced_and_new_directories_are_watched(tmp_path, watch):
    """Directories made, replaced, renamed or removed while the kernel dropped their events:
    after the overflow each directory of the tree has a watch, and the watches of those that
    left the tree are gone."""
    tree = tmp_path / "tree"
    for i in range(30):
        (tree / f"d{i}" / "sub").mkdir(parents=True)
    w, sink = watch_small_queue(watch, [str(tree)])
    base = w.limits()["watches"]
    outside = tmp_path / "outside"
    outside.mkdir()
    with reader_paused(w):  # the kernel queue fills
        for i in range(100):
            with open(tree / f"flood-{i}", "w") as f:
                f.write("x")
        os.rename(tree / "d0", outside / "d0")  # left the tree: its old name is replaced
        (tree / "d0" / "sub").mkdir(parents=True)
        os.rename(tree / "d1", tree / "d1-renamed")  # renamed inside the tree
        (tree / "d2" / "sub").rmdir()  # removed
        (tree / "made" / "during").mkdir(parents=True)  # made while events were lost
    sink.wait(lambda e: e["type"] == "monitor" and e["kind"] == "fs_overflow", 3.0)
    checks = [
        tree / "d0" / "a",
        tree / "d0" / "sub" / "b",
        tree / "d1-renamed" / "sub" / "c",
        tree / "made" / "during" / "d",
        tree / "d2" / "e",
    ]
    for p in checks:
        _write(str(p))
        sink.fs(str(p), "created")
    # old d0 and d0/sub moved out (2), d2/sub removed (1); d0, d0/sub, made, made/during new (4)
    assert _until(lambda: w.limits()["watches"] == base + 1, 2.0), (base, w.limits())
    _write(str(outside / "d0" / "x"))  # no longer watched: nothing reported
    time.sleep(0.3)
    assert str(outside / "d0" / "x") not in sink.paths()
    assert 1 <= w.limits()["overflows"] <= 3


def test_a_target_that_appeared_during_an_overflow_is_watched_after_the_recheck(tmp_path, watch):
    """A watched directory that did not exist is armed when its parent says it was made. If
    that IN_CREATE is among the events an overflow lost, nothing inside it would be seen:
    the recheck (run with the rescan after every overflow) arms it and reports what it holds."""
    for attempt in range(3):  # the set-up: an overflow that hid the mkdir (the scheduler
        spool = tmp_path / f"spool-{attempt}"  # may let the reader in first: again then)
        spool.mkdir()
        target = spool / "autostart"
        w, sink = watch_small_queue(watch, [str(target)])
        with reader_paused(w):  # the kernel queue fills
            for i in range(100):
                _write(str(spool / f"flood-{i}"))
            target.mkdir()  # its IN_CREATE is lost
            _write(str(target / "early.desktop"))
        sink.wait(lambda e: e["type"] == "monitor" and e["kind"] == "fs_overflow", 3.0)
        time.sleep(0.3)
        if str(target) not in sink.paths():
            break
        w.stop()
    else:
        pytest.fail("in 3 attempts no overflow hid the mkdir: the set-up does not hold here")
    w.recheck()  # what the collector's rescan thread does after an overflow
    sink.fs(str(target), "created")
    sink.fs(str(target / "early.desktop"), "created")
    late = str(target / "late.desktop")
    _write(late)
    sink.fs(late, "created")
