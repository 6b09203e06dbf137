"""The collector's kernel side pinned in bpffs, so that it outlives the collector.

Owns the pinned objects of each collector *instance* (one per state directory: the service's,
each `run`'s private one) under ``<bpffs>/roguewatch/<instance>/<layout>/``: every map
(``map__NAME``), the egress programs (``prog__NAME``, attached to the cgroup root, which
keeps them running anyway) and a BPF link per tracepoint (``link__CATEGORY__EVENT``, made by
BPF_LINK_CREATE on the tracepoint's perf event: a pinned link keeps the program attached
with no process holding it). A collector killed with SIGKILL leaves them all in force: forks
are still followed into the session map, egress is still refused, kills are still made in the
kernel, and records wait in the pinned ring buffer. The next collector of the same instance
opens them by path and carries on (Tetragon's keep-sensors-on-exit).

``<layout>`` names what the objects were made for (the probe image's key: sources, build
options, kernel, bcc): pins of another layout (an older monitor, other options) are stale
and replaced, never reused. The objects' ids (unique per boot, never chosen by whoever makes
an object) are what the collector checks: a pin removed or replaced behind its back is found
by ``PinSet.check`` and pinned again. An instance whose collector is dead and whose session
map holds no live process keeps nothing worth keeping: ``collect_abandoned`` removes it.

It must not decide what is loaded (``roguewatch.sensors.bpf``) or raise alerts (the collector
does, from what ``check`` reports).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import hashlib
import logging
import os
import platform
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from roguewatch.host import kernelenv

log = logging.getLogger("roguewatch.pins")

PIN_SUBDIR = "roguewatch"
PIN_FORMAT = "1"  # the naming below: a change makes every pinned layout a stale one
# (bpffs refuses any name with a dot in it: hence the double underscores)

SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
BPF_OBJ_PIN, BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD = 6, 7, 15

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


class PinError(Exception):
    """bpffs cannot hold the collector's state here (with what to do about it)."""


def _obj_attr(path: str, fd: int = 0) -> tuple[ct.Array, ct.Array]:
    p = ct.create_string_buffer(path.encode())
    raw = struct.pack("<QIIi", ct.addressof(p), fd, 0, 0)
    return p, ct.create_string_buffer(raw, len(raw))


def obj_pin(fd: int, path: str) -> None:
    p, attr = _obj_attr(path, fd)
    if _libc.syscall(SYS_BPF, BPF_OBJ_PIN, attr, len(attr.raw)) < 0:
        err = ct.get_errno()
        raise OSError(err, f"bpf(OBJ_PIN) {path}: {os.strerror(err)}")
    del p


def obj_get(path: str) -> int:
    """A new fd of the object pinned at ``path`` (OSError: none, or not a BPF object)."""
    p, attr = _obj_attr(path)
    fd = _libc.syscall(SYS_BPF, BPF_OBJ_GET, attr, len(attr.raw))
    if fd < 0:
        err = ct.get_errno()
        raise OSError(err, f"bpf(OBJ_GET) {path}: {os.strerror(err)}")
    del p
    return int(fd)


def obj_id(fd: int) -> int:
    """The kernel's id of a map, program or link (each info struct starts type, id)."""
    buf = ct.create_string_buffer(256)
    raw = struct.pack("<IIQ", fd, len(buf), ct.addressof(buf))
    attr = ct.create_string_buffer(raw, len(raw))
    if _libc.syscall(SYS_BPF, BPF_OBJ_GET_INFO_BY_FD, attr, len(raw)) < 0:
        err = ct.get_errno()
        raise OSError(err, f"bpf(OBJ_GET_INFO_BY_FD, {fd}): {os.strerror(err)}")
    return struct.unpack_from("<I", buf.raw, 4)[0]


def pinned_id(path: str) -> int | None:
    """The id of the object pinned at ``path``; None when nothing is."""
    try:
        fd = obj_get(path)
    except OSError:
        return None
    try:
        return obj_id(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def pin_root(create: bool = True) -> str:
    """``<bpffs>/roguewatch``: root's own (0700), bpffs mounted first when it is not."""
    try:
        bpffs = kernelenv.ensure_bpffs()
    except kernelenv.KernelEnvError as exc:
        raise PinError(f"{exc} (fix: {exc.fix})") from None
    root = os.path.join(bpffs, PIN_SUBDIR)
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(root, 0o700)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return root
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        raise PinError(f"{root} is not a root-owned directory: remove it")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(root, 0o700)
    return root


def instance_name(state_dir: str) -> str:
    """The pin directory of the collector that keeps its state in ``state_dir``."""
    return hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:16]


def layout_name(image_key: str) -> str:
    return f"{PIN_FORMAT}-{image_key}"


def _rmtree(path: str) -> None:
    """bpffs has no recursive removal: entries first (an unlink drops a pin's reference)."""
    try:
        names = os.listdir(path)
    except NotADirectoryError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except FileNotFoundError:
        return
    for n in names:
        p = os.path.join(path, n)
        if os.path.isdir(p) and not os.path.islink(p):
            _rmtree(p)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rmdir(path)


def remove_all(root: str) -> None:
    """Every instance under ``root`` and ``root`` itself (no collector will take them over)."""
    _rmtree(root)


@dataclass
class Finding:
    """A pin that is not what this collector pinned: ``what`` is removed or replaced."""

    name: str
    what: str
    found: int | None  # the id pinned there now (None: nothing)
    expected: int


class PinSet:
    """The pinned objects of one instance and layout."""

    def __init__(self, root: str, instance: str, layout: str) -> None:
        self.root = root
        self.instance_dir = os.path.join(root, instance)
        self.layout = layout
        self.dir = os.path.join(self.instance_dir, layout)

    def stale_layouts(self) -> list[str]:
        try:
            names = os.listdir(self.instance_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n != self.layout)

    def remove_stale(self) -> list[str]:
        """Pins of another layout (another monitor version or build) removed, with a log
        line each; their names."""
        stale = self.stale_layouts()
        for name in stale:
            if name.startswith("new-"):
                log.info("removing a half-made pin directory %s", name)
            else:
                log.warning("stale pinned state of layout %s in %s (another monitor version "
                            "or build: this one is %s): replaced", name, self.instance_dir,
                            self.layout)  # fmt: skip
            _rmtree(os.path.join(self.instance_dir, name))
        return stale

    def load(self) -> dict[str, int] | None:
        """Every object pinned for this layout, opened: entry name -> fd. None when there is
        no such layout here, or an entry cannot be opened (the whole set is then stale)."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return None
        fds: dict[str, int] = {}
        try:
            for n in names:
                fds[n] = obj_get(os.path.join(self.dir, n))
        except OSError as exc:
            log.warning("pinned state in %s cannot be reused (%s): replaced", self.dir, exc)
            for fd in fds.values():
                os.close(fd)
            return None
        return fds

    def publish(self, objs: dict[str, int]) -> None:
        """Pin every object (entry name -> fd) under this layout, all at once: made in a
        directory of its own, then renamed into place, so a half-made set is never taken
        for a whole one."""
        os.makedirs(self.instance_dir, mode=0o700, exist_ok=True)
        tmp = os.path.join(self.instance_dir, f"new-{os.getpid()}")
        _rmtree(tmp)
        os.mkdir(tmp, 0o700)
        try:
            for name, fd in objs.items():
                obj_pin(fd, os.path.join(tmp, name))
            _rmtree(self.dir)
            os.rename(tmp, self.dir)
        except BaseException:
            _rmtree(tmp)
            raise

    def check(self, objs: dict[str, int], ids: dict[str, int]) -> list[Finding]:
        """Each pin still the object this collector holds (``ids``: entry name -> id)?
        One that is gone or replaced is pinned again (the impostor unpinned); what was found."""
        out: list[Finding] = []
        if not os.path.isdir(self.dir):
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
        for name, fd in objs.items():
            path = os.path.join(self.dir, name)
            found = pinned_id(path)
            if found == ids[name]:
                continue
            out.append(Finding(name, "removed" if found is None else "replaced", found,
                               ids[name]))  # fmt: skip
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(path)
            try:
                obj_pin(fd, path)
            except OSError as exc:
                log.warning("could not pin %s again: %s", path, exc)
        return out

    def remove(self) -> None:
        """This instance's pins gone (a clean end: nothing is to outlive the collector)."""
        _rmtree(self.instance_dir)


def instances(root: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
    except FileNotFoundError:
        return []


def collect_abandoned(
    root: str, keep: Iterable[str], tracks_live: Callable[[str], bool]
) -> list[str]:
    """Instances (other than those in ``keep``: this one, live collectors') whose pinned
    session map tracks no live process: removed (their tracepoints detach, their egress
    programs are then a dead collector's, for the sweep). ``tracks_live(layout_dir)``.
    An instance that still tracks a live process is kept: its collector may be coming back,
    and until then its sessions stay followed and their egress refused. Their names."""
    keep = set(keep)
    removed = []
    for inst in instances(root):
        if inst in keep:
            continue
        idir = os.path.join(root, inst)
        try:
            layouts = [os.path.join(idir, n) for n in os.listdir(idir)
                       if not n.startswith("new-")]  # fmt: skip
            if any(tracks_live(d) for d in layouts):
                continue
        except OSError:
            continue  # removed meanwhile (by its own collector's clean end)
        log.info("pinned state %s of a collector that is gone and tracks no live process: "
                 "removed", inst)  # fmt: skip
        _rmtree(idir)
        removed.append(inst)
    return removed
