"""The content store and hash cache shared between runs (roguewatch.blobstore)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from roguewatch.respond.blobstore import BlobError, BlobStore, HashCache, is_sha


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_put_get_and_a_corrupt_blob_is_refused(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path / "blobs"))
    s = store.put(b"hello\n")
    assert s == sha(b"hello\n") and store.has(s) and store.get(s) == b"hello\n"
    assert store.put(b"hello\n") == s  # once
    assert oct(os.stat(store.path(s)).st_mode & 0o777) == "0o600"
    assert oct(os.stat(store.root).st_mode & 0o777) == "0o700"
    Path(store.path(s)).write_bytes(b"planted\n")
    with pytest.raises(BlobError, match="corrupt"):
        store.get(s)
    with pytest.raises(BlobError):
        store.get(sha(b"never stored"))
    with pytest.raises(BlobError):
        store.path("../../etc/shadow")


def test_seed_links_every_blob_and_keeps_what_is_there(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path / "blobs"))
    a, b = store.put(b"a"), store.put(b"b")
    (tmp_path / "blobs" / "index.json").write_text("{}")  # not a blob: never linked
    dst = tmp_path / "state" / "baseline"
    dst.mkdir(parents=True)
    (dst / b).write_bytes(b"b")  # already there (another inode): left alone
    assert store.seed(str(dst)) == 1
    assert sorted(os.listdir(dst)) == sorted([a, b])
    assert os.stat(dst / a).st_ino == os.stat(store.path(a)).st_ino  # a hard link, no copy
    assert os.stat(dst / b).st_ino != os.stat(store.path(b)).st_ino
    assert store.seed(str(tmp_path / "fresh")) == 2  # made, root-only
    assert oct(os.stat(tmp_path / "fresh").st_mode & 0o777) == "0o700"


def test_harvest_takes_only_copies_that_are_what_their_name_says(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path / "blobs"))
    src = tmp_path / "baseline"
    src.mkdir()
    good = sha(b"good")
    (src / good).write_bytes(b"good")
    (src / sha(b"claimed")).write_bytes(b"something else")  # a lie: never shared
    (src / "index.json").write_text("{}")
    (src / f"{sha(b'x')}.1234.tmp").write_bytes(b"x")
    os.symlink("/etc/passwd", src / sha(b"link"))
    assert store.harvest(str(src)) == 1
    assert sorted(n for n in os.listdir(store.root) if is_sha(n)) == [good]
    assert store.get(good) == b"good"
    assert store.harvest(str(src)) == 0  # nothing new


def test_prune_keeps_blobs_a_state_directory_still_links(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path / "blobs"), max_bytes=10)
    linked = store.put(b"l" * 8)
    os.link(store.path(linked), tmp_path / "linked")
    loose = [store.put(bytes([65 + i]) * 8) for i in range(3)]
    removed = store.prune()
    assert store.has(linked)
    assert removed == 3 and not any(store.has(x) for x in loose)


def test_the_hash_cache_is_keyed_by_identity_and_times(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"one")
    cache_path = str(tmp_path / "state" / "hashcache.json")
    cache = HashCache(cache_path)
    st = os.stat(f)
    assert cache.lookup(str(f), st) is None
    cache.remember(str(f), st, sha(b"one"))
    cache.save()
    again = HashCache(cache_path)
    assert len(again) == 1 and again.lookup(str(f), os.stat(f)) == sha(b"one")
    f.write_bytes(b"two")  # same size, new mtime and ctime
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: ctime still moved
    assert again.lookup(str(f), os.stat(f)) is None
    g = tmp_path / "g"
    g.write_bytes(b"one")
    os.replace(g, f)  # another inode under the same name
    assert again.lookup(str(f), os.stat(f)) is None
    with pytest.raises(BlobError):
        again.remember(str(f), os.stat(f), "not-a-sha")


def test_a_damaged_hash_cache_is_ignored(tmp_path: Path) -> None:
    p = tmp_path / "hashcache.json"
    p.write_text("{not json")
    assert len(HashCache(str(p))) == 0
    p.write_text('{"version": 1, "entries": {"/x": [1, 2, 3, 4, 5, "bad"]}}')
    assert len(HashCache(str(p))) == 0
