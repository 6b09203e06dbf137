"""The package database as a baseline: a changed packaged file with no baseline of ours is
put back from its archive in apt's cache, checked against dpkg's md5 (the real dpkg, the real
archives of this host)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from roguewatch.respond import packages
from roguewatch.respond.baseline import Baselines
from roguewatch.runtime.fileguard import restore_from_package

from tests.conftest import require, require_root


def cached_package_file() -> tuple[str, str]:
    """A small documentation file of an installed package whose archive (same version) is in
    apt's cache: (package, path)."""
    require(os.path.isdir(packages.APT_ARCHIVES), "no apt cache on this host")
    for deb in sorted(Path(packages.APT_ARCHIVES).glob("*.deb")):
        name, version, _ = deb.stem.split("_", 2)
        q = subprocess.run(["dpkg-query", "-W", "-f=${Version} ${db:Status-Status}", name],
                           capture_output=True, text=True)  # fmt: skip
        if q.returncode or q.stdout.strip() != f"{version.replace('%3a', ':')} installed":
            continue
        for md5s in (Path(packages.DPKG_INFO) / f"{name}.md5sums",
                     *Path(packages.DPKG_INFO).glob(f"{name}:*.md5sums")):  # fmt: skip
            if not md5s.exists():
                continue
            for line in md5s.read_text().splitlines():
                rel = line.split(None, 1)[1]
                p = "/" + rel
                doc = rel.startswith("usr/share/doc/") and not os.path.islink(p)
                if doc and os.path.isfile(p) and os.path.getsize(p) < 64 << 10:
                    return name, p
    require(False, "no cached archive of an installed package")
    return "", ""


def test_owner_names_the_package_and_its_pristine_md5() -> None:
    name, path = cached_package_file()
    pkg = packages.owner(path)
    assert pkg is not None and pkg.name == name
    assert pkg.md5 == hashlib.md5(Path(path).read_bytes(), usedforsecurity=False).hexdigest()
    assert packages.owner("/nonexistent/rwtest") is None


def test_a_changed_packaged_file_is_put_back_from_the_archive(tmp_path: Path) -> None:
    require_root("changes a packaged file (and puts it back)")
    name, path = cached_package_file()
    original, mode = Path(path).read_bytes(), os.stat(path).st_mode & 0o7777
    b = Baselines(str(tmp_path / "state"))
    try:
        with open(path, "ab") as f:
            f.write(b"\nrwtest: changed\n")
        out = restore_from_package(b, path, {"session": "1", "rule": "test"})
        assert out is not None and out.startswith(f"restored from package {name} "), out
        assert Path(path).read_bytes() == original
        assert os.stat(path).st_mode & 0o7777 == mode
        (entry,) = b.quarantine_list()
        assert entry["path"] == path and entry["who"]["rule"] == "test"
        assert Path(entry["content_path"]).read_bytes().endswith(b"rwtest: changed\n")
        # Unchanged now: nothing to do.
        assert restore_from_package(b, path, {}) is None
    finally:
        if Path(path).read_bytes() != original:
            Path(path).write_bytes(original)
            os.chmod(path, mode)


@pytest.mark.parametrize("path", ["/etc/hostname", "/nonexistent/rwtest"])
def test_an_unpackaged_file_is_not_the_package_databases(tmp_path: Path, path: str) -> None:
    assert restore_from_package(Baselines(str(tmp_path / "s")), path, {}) is None
