"""Snapshot and restore of the trees attacks touch, so a corpus run leaves the machine as
it found it.

At the start of a run every tree is copied (``cp -a``: content, modes, owners, times, xattrs
such as file capabilities) into a private directory, and a stat manifest is taken. After each
scenario the trees are walked again: every path that is new is removed, every path that
changed or went missing is copied back from the snapshot (then its directory's times), and
the walk is repeated to verify nothing differs. What was restored is part of the scenario's
result (an attack's effects the monitor did not undo, or a scenario's stray writes).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# (tree, recursive) pairs; homes are added by the runner. Shallow trees are directories
# whose own entries matter (site-packages' .pth files), not everything below them.
TREES: list[tuple[str, bool]] = [
    ("/etc", True),
    ("/var/spool", True),
    ("/usr/local/bin", True),
    ("/usr/local/sbin", True),
    ("/usr/local/lib", True),
    ("/usr/local/etc", True),
    ("/usr/local/share", True),
    ("/usr/lib/systemd/system", True),
    ("/usr/lib/systemd/user", True),
    ("/usr/lib/udev/rules.d", True),
    ("/usr/lib/python3/dist-packages", False),
    ("/usr/lib/python3.11", False),
    ("/var/log", True),
    ("/var/lib/roguewatch/rules.d", True),
]
# Below homes: caches and toolchains no scenario touches (and that are large).
HOME_SKIP = {".pyenv", ".cache", ".rustup", ".cargo", ".npm", ".m2", "chromium",
             "chromium-headless", "matplotlib"}  # fmt: skip
# Written by the monitor itself or by other processes on a shared host, not by scenarios.
SKIP_PREFIXES = ("/var/log/roguewatch", "/var/log/journal", "/etc/roguewatch/fleet")

Key = tuple


def key_of(st: os.stat_result, path: str) -> Key:
    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
    return (st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, st.st_ctime_ns, link)


@dataclass
class Snapshot:
    store: Path
    homes: list[str]
    trees: list[tuple[str, bool]] = field(default_factory=lambda: list(TREES))
    base: dict[str, Key] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.trees = [*self.trees, *((h, True) for h in self.homes)]

    def walk(self) -> dict[str, Key]:
        out: dict[str, Key] = {}
        for top, recursive in self.trees:
            if not os.path.lexists(top):
                out[top] = ("absent",)
                continue
            out[top] = key_of(os.lstat(top), top)
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames[:] = [d for d in dirnames if d not in HOME_SKIP]
                for name in dirnames + filenames:
                    p = os.path.join(dirpath, name)
                    if p.startswith(SKIP_PREFIXES):
                        continue
                    try:
                        out[p] = key_of(os.lstat(p), p)
                    except FileNotFoundError:
                        continue
                if not recursive:
                    dirnames[:] = []
                    break
        return out

    def take(self) -> None:
        if self.store.exists():
            shutil.rmtree(self.store)
        self.store.mkdir(parents=True, mode=0o700)
        self.base = self.walk()
        for p, k in self.base.items():
            if k == ("absent",):
                continue
            self._copy_in(p)

    def _copy_in(self, p: str) -> None:
        dst = self.store / p.lstrip("/")
        if os.path.isdir(p) and not os.path.islink(p):
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copystat(p, dst, follow_symlinks=False)
            os.chown(dst, os.lstat(p).st_uid, os.lstat(p).st_gid)
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", "--remove-destination", p, str(dst)], check=False)

    def refresh(self, now: dict[str, Key]) -> None:
        """Before a scenario: adopt what changed since the snapshot by others (a shared
        host), so that the restore after it puts back the state just before it."""
        for p in set(self.base) - set(now):
            self._drop(p)
        for p, k in now.items():
            if self.base.get(p) != k:
                self._copy_in(p) if k != ("absent",) else self._drop(p)
        self.base = now

    def _drop(self, p: str) -> None:
        dst = self.store / p.lstrip("/")
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst, ignore_errors=True)
        elif os.path.lexists(dst):
            dst.unlink()

    def diff(self, now: dict[str, Key]) -> tuple[list[str], list[str], list[str]]:
        new = sorted(set(now) - set(self.base))
        gone = sorted(set(self.base) - set(now))
        changed = sorted(p for p in set(now) & set(self.base) if now[p] != self.base[p])
        return new, gone, changed

    def restore(self) -> list[str]:
        """Put every tree back as it was at the last ``refresh``; returns what was put back
        (empty when nothing had changed); an entry starting with ``!left`` says what
        still differed afterwards."""
        new, gone, changed = self.diff(self.walk())
        if not (new or gone or changed):
            return []
        touched = [f"+{p}" for p in new] + [f"-{p}" for p in gone] + [f"~{p}" for p in changed]
        for p in sorted(new, key=len):
            if os.path.lexists(p):
                _remove(p)
        for p in sorted(gone + changed, key=len):
            self._put_back(p)
        # Directory times last (putting entries back changed them).
        dirs = {os.path.dirname(x) for x in new + gone + changed} | set(changed)
        for p in sorted(dirs, key=len, reverse=True):
            k = self.base.get(p)
            if k and k != ("absent",) and stat.S_ISDIR(k[0]) and os.path.isdir(p):
                try:
                    os.utime(p, ns=(k[4], k[4]), follow_symlinks=False)
                except OSError:
                    pass
        now = self.walk()
        new, gone, changed = self.diff(now)
        # (ctime cannot be put back: a path that differs only in its ctime is restored)
        # (a directory's times follow its entries, which are checked one by one)
        left = [
            p
            for p in changed
            if not _same_but_ctime(self.base[p], now[p])
            and not (stat.S_ISDIR(now[p][0]) and now[p][:4] == self.base[p][:4])
        ]
        if new or gone or left:
            # On a shared host someone else may be changing these trees at the same time.
            touched.append(f"!left: {new[:5]} {gone[:5]} {left[:5]}")
        self.base = now
        rebaseline([p for p in new + gone + changed])
        return touched

    def walk_one(self, p: str) -> Key:
        try:
            return key_of(os.lstat(p), p)
        except FileNotFoundError:
            return ("absent",)

    def _put_back(self, p: str) -> None:
        src = self.store / p.lstrip("/")
        k = self.base[p]
        if k == ("absent",):
            _remove(p)
            return
        if stat.S_ISDIR(k[0]):
            if os.path.lexists(p) and not os.path.isdir(p):
                _remove(p)
            os.makedirs(p, exist_ok=True)
            os.chown(p, k[1], k[2], follow_symlinks=False)
            os.chmod(p, stat.S_IMODE(k[0]))
            return
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        subprocess.run(["cp", "-a", "--remove-destination", str(src), p], check=False)

    def close(self) -> None:
        shutil.rmtree(self.store, ignore_errors=True)


def _same_but_ctime(a: Key, b: Key) -> bool:
    return a[:5] == b[:5] and a[6:] == b[6:]


def _remove(p: str) -> None:
    # (immutable or append-only attributes an attack set would make this fail)
    subprocess.run(["chattr", "-R", "-ia", p], capture_output=True, check=False)
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p, ignore_errors=True)
    elif os.path.lexists(p):
        os.unlink(p)


def rebaseline(paths: list[str]) -> None:
    """Tell roguewatch's baselines that the restored state is the host's: a collector that
    snapshotted a baseline while an unwatched attack's file stood would otherwise restore
    that file after we removed it (issue: baselines learn what they see)."""
    if not paths:
        return
    try:
        from roguewatch.respond.baseline import Baselines

        b = Baselines()
        roots = {b._root_of(os.path.abspath(p)) for p in paths} - {None}
        if roots:
            b.snapshot(sorted(roots))
    except Exception as exc:  # (the measurement goes on; the report says so)
        print(f"attacks: rebaseline failed: {exc}")
