"""Baselines of watched files, restore, and the quarantine.

This module owns the root-only state directory's ``baseline/`` and ``quarantine/`` parts:

- ``Baselines.snapshot(paths)`` records, for every watched path (and the files inside watched
  directories, recursively up to a bound), whether it exists, its type, mode, owner, size and
  sha256, and a copy of its content when it is small enough (``baseline/<sha256>``). A path
  that does not exist is recorded as absent, so a file that appears later can be removed.
- ``rescan()`` lists the paths whose state differs from the baseline (after an inotify
  overflow), ``changed(path)`` answers for one path.
- ``restore(path, who)`` puts the current version into ``quarantine/<id>/content`` with a
  JSON sidecar ``meta.json`` (who, when, which rule, its sha256, mode and owner) and puts the
  baseline back (content, mode, owner) with a temporary file renamed over it in the same
  directory, or removes a file that did not exist.
- ``quarantine_list/show/release``: the operator's view; release puts the agent's version back
  and makes it the new baseline.
- For a path with no baseline: ``quarantine_path`` (the agent's version kept, and removed when
  it is new), ``replace_content`` (a pristine copy from elsewhere: the package archive) and
  ``clear_setid``; ``birth_ns`` says when a file was made (statx), so a caller can tell a file
  the session made from one that was there before it.

It does not decide *when* to restore (a rule's ``action: restore``, after the offending process
is killed, and never in observe mode): that is the enforcer's business.

Symlinks are never followed when reading, moving or writing: every directory on the way is
opened with ``O_NOFOLLOW`` from ``/`` and the file is acted on relative to it, so an agent that
replaced a protected file (or a directory above it) by a symlink to ``/etc/shadow`` gets its
symlink quarantined, not ``/etc/shadow`` overwritten.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from roguewatch.core.fspath import canonical, is_under
from roguewatch.core.paths import STATE_DIR

MAX_COPY_BYTES = 1 << 20
IGNORE_WINDOW_NS = 2_000_000_000  # watchdog holds unpaired renames 0.5 s before reporting them
MAX_ENTRIES = 20_000
MAX_DEPTH = 8
_ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,80}$")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

IgnoreFn = Callable[[str, int], None]
SettleFn = Callable[[str], None]


class UnsafeParent(Exception):
    """A path's parent directory could not be opened safely (``Baselines._in_parent``)."""


class BaselineError(Exception):
    pass


class UnsafePath(BaselineError):
    """A directory on the way to a path is a symlink (or not a directory): refused."""


# statx(2): the birth time of a file (ext4, xfs, btrfs, tmpfs record it).
_STATX_BTIME = 0x800
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_BTIME_OFF = 80  # struct statx: stx_btime after 64 bytes of fields and stx_atime


_LIBC: list[Any] = []


def _statx() -> Any:
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True).statx)
        except (OSError, AttributeError):
            _LIBC.append(None)
    return _LIBC[0]


def birth_ns(path: str) -> int | None:
    """When ``path`` (never followed) was created, in ns since the epoch; None when the
    filesystem or the C library cannot say."""
    fn = _statx()
    if fn is None:
        return None
    buf = ctypes.create_string_buffer(256)
    if fn(-100, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, _STATX_BTIME, buf) != 0:
        return None
    mask = int.from_bytes(buf.raw[0:4], "little")
    if not mask & _STATX_BTIME:
        return None
    sec = int.from_bytes(buf.raw[_STATX_BTIME_OFF : _STATX_BTIME_OFF + 8], "little", signed=True)
    nsec = int.from_bytes(buf.raw[_STATX_BTIME_OFF + 8 : _STATX_BTIME_OFF + 12], "little")
    return sec * 1_000_000_000 + nsec


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    return "other"


def _human(n: int) -> str:
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} bytes"


def open_dir_nofollow(path: str, *, create: bool = False, mode: int = 0o700) -> int:
    """An fd of directory ``path`` opened component by component from ``/`` with
    ``O_NOFOLLOW``: a symlink anywhere on the way raises ``UnsafePath``. With ``create``,
    missing directories are made with ``mode`` (owner: the caller)."""
    fd = os.open("/", _DIR_FLAGS)
    try:
        for comp in [c for c in path.split("/") if c]:
            if comp in (".", ".."):
                raise UnsafePath(f"{path}: relative component {comp!r}")
            try:
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(comp, mode, dir_fd=fd)
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(f"{path}: {comp!r} is a symlink or not a directory") from exc
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _lstat_at(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _hash_at(dfd: int, name: str, keep: int) -> tuple[str, bytes | None, os.stat_result]:
    """sha256 of regular file ``name`` in ``dfd`` (never following a symlink), and its content
    when it is at most ``keep`` bytes."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BaselineError(f"{name}: not a regular file")
        h = hashlib.sha256()
        chunks: list[bytes] | None = [] if st.st_size <= keep else None
        total = 0
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            h.update(b)
            total += len(b)
            if chunks is not None:
                if total > keep:
                    chunks = None
                else:
                    chunks.append(b)
        return h.hexdigest(), (b"".join(chunks) if chunks is not None else None), st
    finally:
        os.close(fd)


class Baselines:
    """Baselines and quarantine under ``state_dir`` (made root-only, 0700).

    ``ignore(path, until_ns)`` (e.g. ``FsWatcher.ignore``) is called before every write this
    class makes, and ``settle(path)`` (``FsWatcher.settle``) for each written path when the
    operation is done, so its own restores never come back as filesystem events while a later
    write by someone else still does.
    """

    def __init__(
        self,
        state_dir: str = STATE_DIR,
        max_copy_bytes: int = MAX_COPY_BYTES,
        *,
        ignore: IgnoreFn | None = None,
        settle: SettleFn | None = None,
        ignore_window_ns: int = IGNORE_WINDOW_NS,
        max_entries: int = MAX_ENTRIES,
        max_depth: int = MAX_DEPTH,
    ) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.max_copy_bytes = max_copy_bytes
        self.ignore = ignore
        self.settle = settle
        self._touched: list[str] = []
        self.ignore_window_ns = ignore_window_ns
        self.max_entries = max_entries
        self.max_depth = max_depth
        self.base_dir = os.path.join(self.state_dir, "baseline")
        self.quarantine_dir = os.path.join(self.state_dir, "quarantine")
        self.index_path = os.path.join(self.base_dir, "index.json")
        self._lock = threading.RLock()
        self._entries: dict[str, dict[str, Any]] = {}
        self._roots: dict[str, dict[str, Any]] = {}
        self._index_mtime = -1
        self._ensure_dirs()
        self._settle()
        self._load()

    # -- state directory -----------------------------------------------------------------------

    def _ensure_dirs(self) -> None:
        for d in (self.state_dir, self.base_dir, self.quarantine_dir):
            self._quiet(d)
            os.makedirs(d, mode=0o700, exist_ok=True)
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafePath(f"{d}: not a directory")
            os.chmod(d, 0o700)
            if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
                os.chown(d, 0, 0)

    def _quiet(self, path: str) -> None:
        if self.ignore is not None:
            self.ignore(path, time.time_ns() + self.ignore_window_ns)
            self._touched.append(path)

    def _settle(self) -> None:
        touched, self._touched = self._touched, []
        if self.settle is not None:
            for p in dict.fromkeys(touched):
                self.settle(p)

    def _load(self) -> None:
        try:
            st = os.stat(self.index_path)
        except FileNotFoundError:
            return
        if st.st_mtime_ns == self._index_mtime:
            return
        with open(self.index_path) as f:
            data = json.load(f)
        self._entries = data.get("entries", {})
        self._roots = data.get("roots", {})
        self._index_mtime = st.st_mtime_ns

    def _save(self) -> None:
        data = {"version": 1, "roots": self._roots, "entries": self._entries}
        tmp = f"{self.index_path}.{secrets.token_hex(4)}.tmp"
        self._quiet(tmp)
        self._quiet(self.index_path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.index_path)
        self._index_mtime = os.stat(self.index_path).st_mtime_ns

    def _store_copy(self, sha: str, content: bytes) -> None:
        dst = os.path.join(self.base_dir, sha)
        if os.path.exists(dst):
            return
        tmp = f"{dst}.{secrets.token_hex(4)}.tmp"
        self._quiet(tmp)
        self._quiet(dst)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, dst)

    def _read_copy(self, sha: str) -> bytes:
        with open(os.path.join(self.base_dir, sha), "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != sha:
            raise BaselineError(f"baseline copy {sha} is corrupt")
        return data

    # -- recording -----------------------------------------------------------------------------

    def _state(
        self, path: str, *, store: bool = False, base: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The current state of ``path`` (never following a symlink). With ``base``, a regular
        file whose inode, size and ctime are the baseline's is not hashed again (ctime cannot
        be set back by a user)."""
        parent, name = os.path.split(path)
        try:
            dfd = open_dir_nofollow(parent)
        except (FileNotFoundError, NotADirectoryError, UnsafePath):
            return {"exists": False}
        try:
            st = _lstat_at(dfd, name)
            if st is None:
                return {"exists": False}
            e: dict[str, Any] = {
                "exists": True,
                "type": _kind(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "size": st.st_size,
                "ino": st.st_ino,
                "dev": st.st_dev,
                "ctime_ns": st.st_ctime_ns,
            }
            if (
                e["type"] == "file"
                and base is not None
                and base.get("type") == "file"
                and all(e[f] == base.get(f) for f in ("ino", "dev", "ctime_ns", "size"))
            ):
                e.update(sha256=base["sha256"], copy=base.get("copy", False))
            elif e["type"] == "file":
                sha, content, fst = _hash_at(dfd, name, self.max_copy_bytes)
                e.update(sha256=sha, size=fst.st_size, ctime_ns=fst.st_ctime_ns)
                e["copy"] = content is not None
                if store and content is not None:
                    self._store_copy(sha, content)
            elif e["type"] == "symlink":
                e["target"] = os.readlink(name, dir_fd=dfd)
            return e
        except (FileNotFoundError, BaselineError):
            return {"exists": False}
        finally:
            os.close(dfd)

    def _walk(self, root: str) -> list[str]:
        """Paths below directory ``root`` (not following symlinks), bounded."""
        out: list[str] = []
        stack = [(root, 0)]
        while stack and len(out) < self.max_entries:
            d, depth = stack.pop()
            try:
                dfd = open_dir_nofollow(d)
            except (OSError, UnsafePath):
                continue
            try:
                names = sorted(os.listdir(dfd))
                for n in names:
                    p = os.path.join(d, n)
                    out.append(p)
                    st = _lstat_at(dfd, n)
                    if st is not None and stat.S_ISDIR(st.st_mode) and depth + 1 < self.max_depth:
                        stack.append((p, depth + 1))
            finally:
                os.close(dfd)
        return out[: self.max_entries]

    def snapshot(self, paths: Iterable[str]) -> int:
        """Record the baseline of ``paths`` (and of everything inside those that are
        directories); a path snapshotted again replaces its earlier baseline. Returns the number
        of paths recorded."""
        n = 0
        with self._lock:
            self._load()
            # Entries under each root, found by bisection: hundreds of roots (a session's
            # logs and hooks) against thousands of entries.
            keys = sorted(self._entries)
            for p in paths:
                root = canonical(p)
                lo, hi = bisect.bisect_left(keys, root), bisect.bisect_left(keys, root + "0")
                for k in [k for k in keys[lo:hi] if k in self._entries and is_under(k, root)]:
                    del self._entries[k]
                self._roots[root] = {"ts": time.time_ns()}
                e = self._state(root, store=True)
                self._entries[root] = {**e, "role": "root"}
                n += 1
                if e.get("type") == "dir":
                    for q in self._walk(root):
                        self._entries[q] = {**self._state(q, store=True), "role": "member"}
                        n += 1
                parent = os.path.dirname(root)
                if parent not in self._entries and parent != "/":
                    self._entries[parent] = {**self._state(parent), "role": "parent"}
            try:
                self._save()
            finally:
                self._settle()
        return n

    def roots(self) -> set[str]:
        """The paths snapshotted as roots (canonical), as the index on disk has them."""
        with self._lock:
            self._load()
            return set(self._roots)

    def _root_of(self, path: str) -> str | None:
        best = None
        for r in self._roots:
            if is_under(path, r) and (best is None or len(r) > len(best)):
                best = r
        return best

    def _key(self, path: str) -> str:
        p = os.path.abspath(path)
        if p in self._entries or self._root_of(p) is not None:
            return p
        return canonical(p)

    def baseline(self, path: str) -> dict[str, Any] | None:
        """The baseline entry of ``path``: recorded, or ``{"exists": False}`` for a path inside
        a watched directory that was not there; None when the path is not baselined."""
        with self._lock:
            self._load()
            k = self._key(path)
            e = self._entries.get(k)
            if e is not None and e.get("role") != "parent":
                return e
            if self._root_of(k) is not None:
                return {"exists": False, "role": "new"}
            return None

    @staticmethod
    def _same(base: dict[str, Any], cur: dict[str, Any]) -> bool:
        if not base.get("exists"):
            return not cur.get("exists")
        if not cur.get("exists") or cur["type"] != base["type"]:
            return False
        for f in ("mode", "uid", "gid"):
            if cur[f] != base[f]:
                return False
        if base["type"] == "file":
            return cur["sha256"] == base["sha256"]
        if base["type"] == "symlink":
            return cur.get("target") == base.get("target")
        return True

    def changed(self, path: str) -> bool:
        """Whether ``path`` differs from its baseline (False for a path never baselined)."""
        base = self.baseline(path)
        if base is None:
            return False
        return not self._same(base, self._state(self._key(path)))

    def rescan(self) -> list[str]:
        """Every baselined path whose state differs from the baseline, and every path that
        appeared inside a baselined directory.

        Seconds for thousands of files: the lock is taken per entry, not for the whole scan,
        so a restore asked for meanwhile waits for one entry at most. Each entry is compared
        with its baseline of that moment (a restore or snapshot meanwhile may have changed it)."""
        out: set[str] = set()
        with self._lock:
            self._load()
            keys = list(self._entries)
            roots = list(self._roots)
        for k in keys:
            with self._lock:
                base = self._entries.get(k)
                if base is None or base.get("role") == "parent":
                    continue
                if not self._same(base, self._state(k, base=base)):
                    out.add(k)
        for root in roots:
            with self._lock:
                if root not in self._roots:
                    continue
            if self._state(root).get("type") != "dir":
                continue
            found = self._walk(root)
            with self._lock:
                out.update(q for q in found if q not in self._entries)
        return sorted(out)

    # -- restore and quarantine -----------------------------------------------------------------

    def restore(self, path: str, who: dict[str, Any] | None = None) -> str:
        """Put ``path`` back as it was at baseline, moving the current version (if any) into
        the quarantine. Returns what was done, in words."""
        with self._lock:
            self._load()
            key = self._key(path)
            base = self.baseline(key)
            if base is None:
                return "not baselined: nothing restored"
            try:
                if base.get("exists") and base.get("type") == "dir":
                    return self._restore_dir(key, base, who or {})
                return self._restore_one(key, base, who or {})
            finally:
                self._settle()

    def _restore_dir(self, key: str, base: dict[str, Any], who: dict[str, Any]) -> str:
        outcomes = [self._restore_one(key, base, who)]
        members = [k for k, e in self._entries.items() if e.get("role") == "member"]
        paths = {k for k in members if is_under(k, key) and k != key}
        cur = self._state(key)
        if cur.get("type") == "dir":
            paths |= {q for q in self._walk(key) if q not in self._entries}
        fixed = 0
        for p in sorted(paths):  # parents first: a new directory is quarantined whole
            b = self._entries.get(p) or {"exists": False}
            if not self._same(b, self._state(p)):
                self._restore_one(p, b, who)
                fixed += 1
        return f"{outcomes[0]}; {fixed} path(s) inside restored"

    def _restore_one(self, key: str, base: dict[str, Any], who: dict[str, Any]) -> str:
        cur = self._state(key)
        if self._same(base, cur):
            return "unchanged (matches baseline)"
        parent, name = os.path.split(key)
        pdir = self._entries.get(parent, {})
        parent_made = not os.path.lexists(parent)
        try:
            pfd = open_dir_nofollow(parent, create=bool(base.get("exists")))
        except UnsafePath as exc:
            return f"not restored: {exc}"
        except FileNotFoundError:
            return "unchanged (did not exist at baseline; parent directory gone)"
        try:
            if parent_made and pdir.get("exists") and pdir.get("type") == "dir":
                # A directory recreated on the way gets the recorded owner and mode back.
                with contextlib.suppress(OSError):
                    os.chmod(pfd, pdir["mode"])
                    os.chown(pfd, pdir["uid"], pdir["gid"])
            qid = None
            if cur.get("exists"):
                if cur["type"] == "dir" and base.get("type") == "dir":
                    # Same directory, other mode or owner: fix in place, nothing to quarantine.
                    os.chmod(name, base["mode"], dir_fd=pfd, follow_symlinks=False)
                    os.chown(name, base["uid"], base["gid"], dir_fd=pfd, follow_symlinks=False)
                    return "restored directory mode and owner"
                replace = bool(base.get("exists")) and (
                    (base["type"] == "file" and base.get("copy")) or base["type"] == "symlink"
                )
                qid = self._quarantine(pfd, key, name, who, remove=not replace)
            q = f"; agent's version quarantined as {qid}" if qid else ""
            if not base.get("exists"):
                return f"removed (did not exist at baseline){q}"
            kind = base["type"]
            if kind == "file":
                if not base.get("copy"):
                    return (
                        f"no baseline copy (file larger than {_human(self.max_copy_bytes)}): "
                        f"quarantined only{q}"
                    )
                self._put_file(pfd, key, name, self._read_copy(base["sha256"]), base)
            elif kind == "symlink":
                self._put_symlink(pfd, key, name, base)
            elif kind == "dir":
                self._quiet(key)
                os.mkdir(name, base["mode"], dir_fd=pfd)
                os.chown(name, base["uid"], base["gid"], dir_fd=pfd, follow_symlinks=False)
                os.chmod(name, base["mode"], dir_fd=pfd, follow_symlinks=False)
            else:
                return f"cannot restore a {kind} (quarantined only){q}"
            # The baseline now matches a new inode: keep its identity for the next rescan.
            st = _lstat_at(pfd, name)
            if st is not None and key in self._entries:
                self._entries[key].update(ino=st.st_ino, dev=st.st_dev, ctime_ns=st.st_ctime_ns)
            return f"restored from baseline{q}"
        finally:
            os.close(pfd)

    def install(self, path: str, content: bytes | None, mode: int = 0o600) -> str:
        """The monitor's own change of a watched file (a policy the fleet sent): written
        atomically (``content`` None: removed) without a filesystem event, and made its new
        baseline, so a later restore puts *this* version back. Returns what was done."""
        with self._lock:
            self._load()
            key = os.path.abspath(path)
            parent, name = os.path.split(key)
            os.makedirs(parent, mode=0o700, exist_ok=True)
            pfd = open_dir_nofollow(parent, create=False)
            try:
                self._quiet(key)
                if content is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=pfd)
                    done = "removed"
                else:
                    meta = {"uid": os.geteuid(), "gid": os.getegid(), "mode": mode}
                    self._put_file(pfd, key, name, content, meta)
                    done = "installed"
                if self._root_of(key) is not None or key in self._entries:
                    role = "root" if key in self._roots else "member"
                    self._entries[key] = {**self._state(key, store=True), "role": role}
                    self._save()
            finally:
                os.close(pfd)
                self._settle()
            return done

    # -- paths with no baseline ---------------------------------------------------------------

    def quarantine_path(self, path: str, who: dict[str, Any], *, remove: bool) -> str | None:
        """Keep the current version of ``path`` (never followed) in a new quarantine entry, and
        remove it when ``remove``; the entry's id, or None when there is nothing there."""
        try:
            with self._in_parent(path) as (pfd, key, name):
                if _lstat_at(pfd, name) is None:
                    return None
                return self._quarantine(pfd, key, name, who, remove=remove)
        except UnsafeParent:
            return None

    def replace_content(
        self, path: str, content: bytes, mode: int, who: dict[str, Any]
    ) -> str:  # fmt: skip
        """Put ``content`` (a pristine copy) at ``path`` with ``mode`` and its current owner,
        the agent's version quarantined first; the quarantine id."""
        with self._in_parent(path, strict=True) as (pfd, key, name):
            st = _lstat_at(pfd, name)
            uid, gid = (st.st_uid, st.st_gid) if st is not None else (0, 0)
            qid = self._quarantine(pfd, key, name, who, remove=False) if st else ""
            self._put_file(pfd, key, name, content, {"uid": uid, "gid": gid, "mode": mode})
            return qid

    def baseline_content(self, path: str) -> bytes | None:
        """The content ``path`` had at baseline, when it was a regular file small enough to
        copy; None otherwise."""
        with self._lock:
            e = self.baseline(path)
            if not e or not e.get("exists") or e.get("type") != "file" or not e.get("copy"):
                return None
            return self._read_copy(e["sha256"])

    def clear_setid(self, path: str) -> int | None:
        """Remove the setuid and setgid bits of regular file ``path`` (never followed); the
        new mode, or None when it is no regular file with one of them."""
        try:
            with self._in_parent(path) as (pfd, key, name):
                st = _lstat_at(pfd, name)
                if st is None or not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o6000:
                    return None
                mode = stat.S_IMODE(st.st_mode) & ~0o6000
                self._quiet(key)
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=pfd)  # fmt: skip
                try:
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
                return mode
        except UnsafeParent:
            return None

    @contextlib.contextmanager
    def _in_parent(self, path: str, strict: bool = False):
        """Under the lock: (the parent directory's fd, never followed; the absolute path; the
        name in it), the fd closed and the watchers settled after. A parent that cannot be
        opened raises UnsafeParent (``strict``: the OSError or UnsafePath itself)."""
        key = os.path.abspath(path)
        parent, name = os.path.split(key)
        with self._lock:
            try:
                pfd = open_dir_nofollow(parent)
            except (OSError, UnsafePath):
                if strict:
                    raise
                raise UnsafeParent(parent) from None
            try:
                yield pfd, key, name
            finally:
                os.close(pfd)
                self._settle()

    def _tmp_name(self, name: str) -> str:
        return f".{name[:64]}.rw-{secrets.token_hex(4)}"

    def _put_file(
        self, pfd: int, key: str, name: str, content: bytes, meta: dict[str, Any]
    ) -> None:
        tmp = self._tmp_name(name)
        parent = os.path.dirname(key)
        self._quiet(os.path.join(parent, tmp))
        self._quiet(key)
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
            dir_fd=pfd,
        )  # fmt: skip
        try:
            try:
                os.fchown(fd, meta["uid"], meta["gid"])
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, meta["mode"])  # after chown: chown clears setuid bits
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=pfd)
            raise

    def _put_symlink(self, pfd: int, key: str, name: str, meta: dict[str, Any]) -> None:
        tmp = self._tmp_name(name)
        self._quiet(os.path.join(os.path.dirname(key), tmp))
        self._quiet(key)
        os.symlink(meta["target"], tmp, dir_fd=pfd)
        try:
            os.chown(tmp, meta["uid"], meta["gid"], dir_fd=pfd, follow_symlinks=False)
            os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=pfd)
            raise

    def _new_qid(self) -> str:
        return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)

    def _quarantine(
        self, pfd: int, key: str, name: str, who: dict[str, Any], *, remove: bool = True
    ) -> str:
        """Put ``name`` (in directory ``pfd``, spelled ``key``) into a new quarantine entry.

        A file or symlink is *copied* (never followed), then removed unless ``remove`` is false
        (the caller renames the baseline over it: one atomic replacement, no window without the
        file). Moving it out would leave an unpaired IN_MOVED_FROM in the watched directory,
        which watchdog holds for 0.5 s, delaying every later event of that directory. A
        directory is moved whole."""
        qid = self._new_qid()
        qdir = os.path.join(self.quarantine_dir, qid)
        self._quiet(qdir)
        os.mkdir(qdir, 0o700)
        qfd = open_dir_nofollow(qdir)
        try:
            cur = self._state(key)  # before the move: what the agent left (hash, mode, owner)
            self._quiet(key)
            self._quiet(os.path.join(qdir, "content"))
            if cur.get("type") == "dir":
                try:
                    os.rename(name, "content", src_dir_fd=pfd, dst_dir_fd=qfd)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    self._copy_across(pfd, name, qfd, qdir)
                    shutil.rmtree(name, dir_fd=pfd)
            else:
                self._copy_across(pfd, name, qfd, qdir)
                if remove:
                    os.unlink(name, dir_fd=pfd)
            side = {
                "id": qid,
                "path": key,
                "ts": time.time_ns(),
                "who": json.loads(json.dumps(who, default=str)),
                "type": cur.get("type", ""),
                "sha256": cur.get("sha256", ""),
                "size": cur.get("size", 0),
                "mode": cur.get("mode", 0),
                "uid": cur.get("uid", -1),
                "gid": cur.get("gid", -1),
                "target": cur.get("target", ""),
                "released": 0,
            }
            self._write_sidecar(qid, side)
        finally:
            os.close(qfd)
        return qid

    def _copy_across(self, pfd: int, name: str, qfd: int, qdir: str) -> None:
        st = _lstat_at(pfd, name)
        assert st is not None
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=pfd), "content", dir_fd=qfd)
        elif stat.S_ISDIR(st.st_mode):
            shutil.copytree(f"/proc/self/fd/{pfd}/{name}", os.path.join(qdir, "content"),
                            symlinks=True)  # fmt: skip
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=pfd)
            try:
                out = os.open("content", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=qfd)
                try:
                    while b := os.read(fd, 1 << 20):
                        view = memoryview(b)
                        while view:
                            view = view[os.write(out, view) :]
                    # No setuid/setgid copy owned by root: the sidecar keeps the real mode.
                    os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o777)
                finally:
                    os.close(out)
            finally:
                os.close(fd)
        # A FIFO or device node is not read: the sidecar describes it, there is no content.

    def _sidecar_path(self, qid: str) -> str:
        if not _ID_RE.match(qid):
            raise BaselineError(f"bad quarantine id {qid!r}")
        return os.path.join(self.quarantine_dir, qid, "meta.json")

    def _write_sidecar(self, qid: str, side: dict[str, Any]) -> None:
        p = self._sidecar_path(qid)
        tmp = p + ".tmp"
        self._quiet(tmp)
        self._quiet(p)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(side, f, indent=1, sort_keys=True)
            f.write("\n")
        os.rename(tmp, p)

    def quarantine_list(self) -> list[dict[str, Any]]:
        """Every quarantine entry's sidecar, oldest first."""
        out = []
        try:
            names = os.listdir(self.quarantine_dir)
        except FileNotFoundError:
            return []
        for n in names:
            with contextlib.suppress(BaselineError, OSError, ValueError):
                out.append(self.quarantine_show(n))
        return sorted(out, key=lambda s: (s.get("ts", 0), s.get("id", "")))

    def quarantine_show(self, qid: str) -> dict[str, Any]:
        """The sidecar of entry ``qid``, plus ``content_path`` (where the agent's version is)."""
        with open(self._sidecar_path(qid)) as f:
            side = json.load(f)
        side["content_path"] = os.path.join(self.quarantine_dir, qid, "content")
        return side

    def quarantine_release(self, qid: str, who: dict[str, Any] | None = None) -> str:
        """Put the agent's version of entry ``qid`` back at its path and make it the new
        baseline (the change was wanted)."""
        with self._lock:
            self._load()
            side = self.quarantine_show(qid)
            if side.get("released"):
                raise BaselineError(f"{qid} was already released")
            key = side["path"]
            parent, name = os.path.split(key)
            qdir = os.path.join(self.quarantine_dir, qid)
            qfd = open_dir_nofollow(qdir)
            try:
                if _lstat_at(qfd, "content") is None:
                    raise BaselineError(f"{qid}: the quarantined content is missing")
                pfd = open_dir_nofollow(parent, create=True)
                try:
                    tmp = self._tmp_name(name)
                    self._quiet(os.path.join(parent, tmp))
                    self._quiet(key)
                    try:
                        os.rename("content", tmp, src_dir_fd=qfd, dst_dir_fd=pfd)
                    except OSError as exc:
                        if exc.errno != errno.EXDEV:
                            raise
                        self._copy_back(qfd, pfd, tmp, side)
                    tst = _lstat_at(pfd, tmp)
                    if tst is not None and side.get("uid", -1) >= 0:
                        os.chown(tmp, side["uid"], side["gid"], dir_fd=pfd, follow_symlinks=False)
                        if not stat.S_ISLNK(tst.st_mode):
                            os.chmod(tmp, side["mode"], dir_fd=pfd, follow_symlinks=False)
                    cur = _lstat_at(pfd, name)
                    if cur is not None and stat.S_ISDIR(cur.st_mode) and side["type"] != "dir":
                        self._quarantine(pfd, key, name, {"reason": f"released {qid}"})
                    os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
                finally:
                    os.close(pfd)
            finally:
                os.close(qfd)
            role = self._entries.get(key, {}).get("role")
            if role == "member" or (role is None and self._root_of(key) not in (None, key)):
                self._entries[key] = {**self._state(key, store=True), "role": "member"}
                self._save()
            else:
                self.snapshot([key])
            side.pop("content_path", None)
            side["released"] = time.time_ns()
            side["released_by"] = json.loads(json.dumps(who or {}, default=str))
            self._write_sidecar(qid, side)
            self._settle()
            return f"released {qid}: {key} put back and made the new baseline"

    def _copy_back(self, qfd: int, pfd: int, tmp: str, side: dict[str, Any]) -> None:
        st = _lstat_at(qfd, "content")
        assert st is not None
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink("content", dir_fd=qfd), tmp, dir_fd=pfd)
        elif stat.S_ISDIR(st.st_mode):
            shutil.copytree(f"/proc/self/fd/{qfd}/content", f"/proc/self/fd/{pfd}/{tmp}",
                            symlinks=True)  # fmt: skip
        else:
            fd = os.open("content", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=qfd)
            try:
                out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                              dir_fd=pfd)  # fmt: skip
                try:
                    while b := os.read(fd, 1 << 20):
                        os.write(out, b)
                    if side.get("uid", -1) >= 0:
                        os.fchown(out, side["uid"], side["gid"])
                    os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o777)
                finally:
                    os.close(out)
            finally:
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink("content", dir_fd=qfd)
