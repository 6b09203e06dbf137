"""Contents of baselined files, shared between runs: a content-addressed store and a hash cache.

Every `roguewatch run` starts a private collector whose baseline snapshot (every watched
file) must exist before the agent's first instruction. Most of that snapshot's time goes to
writing, and fsyncing, a copy of every small file into a fresh state directory, and to hashing
files that did not change since the last run. This module keeps both across runs, under the
root-only ``/var/lib/roguewatch``:

- ``BlobStore``: ``blobs/<sha256>``, one immutable file per distinct content (0600, written
  to a temporary name, fsynced, renamed). Names are verified on the way in (``put``,
  ``harvest``) and contents on the way out (``get``), so a corrupt or planted blob is never
  restored. ``seed(dir)`` hard-links every blob into a baseline directory (the layout of
  ``baseline.Baselines``: ``baseline/<sha256>``), where an existing copy is not written again;
  ``harvest(dir)`` takes the new copies a snapshot wrote into the store. Hard links: nothing
  is copied, and a blob is never modified in place (``Baselines`` replaces by rename), so a
  link shared by several state directories cannot change under one of them.
- ``HashCache``: sha256 of a file by path, valid while its ``(dev, ino, size, mtime_ns,
  ctime_ns)`` are unchanged. ctime cannot be set by a user (it moves to *now* on every change
  of content or inode), so a file written since has another key and is hashed again.

It does not decide what is baselined, nor restore anything: that is ``baseline.Baselines``'.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import stat

from roguewatch.core.paths import STATE_DIR

STORE_DIR = os.path.join(STATE_DIR, "blobs")
HASH_CACHE = os.path.join(STATE_DIR, "hashcache.json")
MAX_STORE_BYTES = 256 << 20  # least recently used blobs beyond this are pruned
MAX_CACHE_ENTRIES = 100_000
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobError(Exception):
    pass


def is_sha(name: str) -> bool:
    return bool(_SHA_RE.match(name))


def _private_dir(path: str) -> None:
    """``path`` a real directory (not a symlink), root-only when we are root."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise BlobError(f"{path}: not a directory")
    if os.geteuid() == 0 and st.st_uid != 0:
        raise BlobError(f"{path}: owned by uid {st.st_uid}, not root")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)


def _sha_of_file(path: str, limit: int) -> str | None:
    """sha256 of regular file ``path`` (not following a symlink); None beyond ``limit``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        h = hashlib.sha256()
        while b := os.read(fd, 1 << 20):
            h.update(b)
        return h.hexdigest()
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: str = STORE_DIR, max_bytes: int = MAX_STORE_BYTES) -> None:
        self.root = os.path.abspath(root)
        self.max_bytes = max_bytes
        _private_dir(self.root)

    def path(self, sha: str) -> str:
        if not is_sha(sha):
            raise BlobError(f"not a sha256: {sha!r}")
        return os.path.join(self.root, sha)

    def has(self, sha: str) -> bool:
        return os.path.exists(self.path(sha))

    def put(self, content: bytes) -> str:
        """Store ``content`` (once); its sha256."""
        sha = hashlib.sha256(content).hexdigest()
        dst = self.path(sha)
        if os.path.exists(dst):
            return sha
        tmp = f"{dst}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, dst)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return sha

    def get(self, sha: str) -> bytes:
        """The content stored as ``sha`` (BlobError when missing or corrupt)."""
        try:
            with open(self.path(sha), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise BlobError(f"no blob {sha}") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise BlobError(f"blob {sha} is corrupt")
        return data

    def seed(self, directory: str) -> int:
        """Hard-link every blob into ``directory`` (made root-only if missing); how many were
        linked. Best effort: another filesystem (EXDEV) or any error links nothing more."""
        _private_dir(directory)
        n = 0
        try:
            names = os.listdir(self.root)
        except OSError:
            return 0
        for name in names:
            if not is_sha(name):
                continue
            try:
                os.link(os.path.join(self.root, name), os.path.join(directory, name),
                        follow_symlinks=False)  # fmt: skip
                n += 1
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    return n
                continue
        return n

    def harvest(self, directory: str, limit: int = 1 << 20) -> int:
        """Take into the store the sha-named regular files of ``directory`` that it does not
        hold yet and whose content matches their name (hard links); how many were taken."""
        n = 0
        try:
            names = os.listdir(directory)
        except OSError:
            return 0
        for name in names:
            if not is_sha(name) or os.path.exists(os.path.join(self.root, name)):
                continue
            src = os.path.join(directory, name)
            try:
                if _sha_of_file(src, limit) != name:
                    continue  # not what it says it is: never shared
                os.link(src, os.path.join(self.root, name), follow_symlinks=False)
                n += 1
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    return n
                continue
        if n:
            self.prune()
        return n

    def prune(self) -> int:
        """Beyond ``max_bytes``: remove the least recently changed blobs that no state
        directory links any more (link count 1); how many were removed."""
        blobs = []
        total = 0
        for name in os.listdir(self.root):
            if not is_sha(name):
                continue
            try:
                st = os.lstat(os.path.join(self.root, name))
            except OSError:
                continue
            total += st.st_size
            blobs.append((st.st_ctime_ns, st.st_nlink, st.st_size, name))
        removed = 0
        for _, nlink, size, name in sorted(blobs):
            if total <= self.max_bytes:
                break
            if nlink > 1:
                continue
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.root, name))
                total -= size
                removed += 1
        return removed


def stat_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class HashCache:
    """sha256 by path, valid while the file's (dev, ino, size, mtime_ns, ctime_ns) hold.

    ``lookup(path, st)`` before hashing, ``remember(path, st, sha)`` after, ``save()`` once
    (atomic: a temporary file renamed over the old one). A damaged cache file is ignored."""

    def __init__(self, path: str = HASH_CACHE, max_entries: int = MAX_CACHE_ENTRIES) -> None:
        self.path = path
        self.max_entries = max_entries
        self._entries: dict[str, list] = {}
        self._dirty = False
        try:
            with open(path) as f:
                data = json.load(f)
            if isinstance(data, dict) and data.get("version") == 1:
                self._entries = {
                    k: v for k, v in data.get("entries", {}).items()
                    if isinstance(v, list) and len(v) == 6 and is_sha(str(v[5]))
                }  # fmt: skip
        except (OSError, ValueError):
            pass

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, path: str, st: os.stat_result) -> str | None:
        e = self._entries.get(path)
        if e is not None and e[:5] == stat_key(st):
            return e[5]
        return None

    def remember(self, path: str, st: os.stat_result, sha: str) -> None:
        if not is_sha(sha):
            raise BlobError(f"not a sha256: {sha!r}")
        e = [*stat_key(st), sha]
        if self._entries.get(path) != e:
            self._entries[path] = e
            self._dirty = True

    def forget(self, path: str) -> None:
        if self._entries.pop(path, None) is not None:
            self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        if len(self._entries) > self.max_entries:  # the oldest insertions go first
            excess = len(self._entries) - self.max_entries
            for k in list(self._entries)[:excess]:
                del self._entries[k]
        _private_dir(os.path.dirname(os.path.abspath(self.path)))
        tmp = f"{self.path}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "entries": self._entries}, f)
        os.rename(tmp, self.path)
        self._dirty = False
