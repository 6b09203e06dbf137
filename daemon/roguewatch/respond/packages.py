"""What the package database knows of a file: its package, its pristine checksum, and its
pristine content when the package's archive is still on the host.

A file that existed before a session but was never baselined (a maintainer script in
/var/lib/dpkg/info, a module under /lib/modules, a ``.pth`` shipped in dist-packages) is known
to the host through dpkg: ``/var/lib/dpkg/info/PKG.md5sums`` says whether it was changed, and
the ``.deb`` in apt's cache (``/var/cache/apt/archives``) holds the content to put back. This
module only reads; putting a file back is ``respond.baseline``'s.

Debian's dpkg only: on a host without it, every answer is None.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from dataclasses import dataclass

DPKG_INFO = "/var/lib/dpkg/info"
APT_ARCHIVES = "/var/cache/apt/archives"
QUERY_TIMEOUT_S = 5.0
MAX_MEMBER_BYTES = 64 << 20


@dataclass(frozen=True)
class Packaged:
    package: str  # as dpkg names it (``libc6:amd64`` for a multi-arch package)
    md5: str  # the pristine content's md5 ("" when the package lists none for it)
    version: str
    arch: str

    @property
    def name(self) -> str:
        return self.package.split(":", 1)[0]


def _query(args: list[str]) -> str | None:
    try:
        p = subprocess.run(
            args, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S, check=False,
            env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"},
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def owner(path: str) -> Packaged | None:
    """The package that ships ``path`` (and its pristine md5), or None: not packaged, or no
    dpkg on this host."""
    if not os.path.isdir(DPKG_INFO):
        return None
    out = _query(["dpkg-query", "-S", path])
    if not out:
        return None
    pkg = ""
    for line in out.splitlines():
        if line.startswith("diversion ") or ": " not in line:
            continue
        names, listed = line.split(": ", 1)
        if listed.strip() == path:
            pkg = names.split(",")[0].strip()
            break
    if not pkg:
        return None
    md5 = ""
    rel = path.lstrip("/")
    for fname in (f"{pkg}.md5sums", f"{pkg.split(':', 1)[0]}.md5sums"):
        try:
            with open(os.path.join(DPKG_INFO, fname), encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.rstrip("\n").split(None, 1)
                    if len(parts) == 2 and parts[1] == rel:
                        md5 = parts[0]
                        break
        except OSError:
            continue
        if md5:
            break
    meta = _query(["dpkg-query", "-W", "-f=${Version} ${Architecture}", pkg]) or ""
    version, _, arch = meta.strip().partition(" ")
    return Packaged(pkg, md5, version, arch)


def md5_of(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    h = hashlib.md5(usedforsecurity=False)
    with os.fdopen(fd, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def archive_of(pkg: Packaged) -> str | None:
    """The package's ``.deb`` in apt's cache, for the installed version."""
    if not pkg.version:
        return None
    version = pkg.version.replace(":", "%3a")
    for arch in dict.fromkeys((pkg.arch, "all")):
        p = os.path.join(APT_ARCHIVES, f"{pkg.name}_{version}_{arch}.deb")
        if os.path.isfile(p):
            return p
    return None


def pristine(pkg: Packaged, path: str) -> tuple[bytes, int] | None:
    """The packaged content and mode of ``path`` from the package's archive (checked against
    the md5 dpkg recorded), or None when there is no archive or it does not hold the file."""
    deb = archive_of(pkg)
    if deb is None:
        return None
    want = {"./" + path.lstrip("/"), path.lstrip("/")}
    try:
        proc = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        )  # fmt: skip
    except OSError:
        return None
    try:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                if m.name not in want or not m.isfile() or m.size > MAX_MEMBER_BYTES:
                    continue
                f = tar.extractfile(m)
                if f is None:
                    return None
                data = f.read()
                if pkg.md5 and hashlib.md5(data, usedforsecurity=False).hexdigest() != pkg.md5:
                    return None
                return data, m.mode & 0o7777
    except (tarfile.TarError, OSError):
        return None
    finally:
        proc.kill()
        proc.wait()
    return None
