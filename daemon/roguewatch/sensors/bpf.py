"""Loading roguewatch's BPF probes into the kernel, and the maps user space shares with them.

Owns: compiling ``probes/*.bpf.c`` with bcc into a *probe image* (bytecode of every tracepoint
program plus the definitions of the maps it uses), caching that image on disk, and loading an
image: creating the maps, patching their fds into the bytecode, loading and attaching the
programs. Also owns the typed operations on the shared maps (sessions, adoption selectors,
the guard set, loss counters).

Why an image: bcc compiles with clang at every start (seconds, and all of LLVM in the
process: bench/README.md). The image is compiled once per (sources, options, kernel, bcc) in
a subprocess and loaded in a fraction of that time, so start-up stays short and the
collector never compiles (libbcc, which it uses for map and program syscalls, still maps
LLVM's shared libraries: a good part of its resident memory). bcc's own program loading is not
used at run time.

It must not decode records (``roguewatch.probes.layout``) or poll the ring buffer
(``roguewatch.sensors.ringbuf``).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import hashlib
import importlib.resources
import json
import logging
import os
import platform
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import msgpack

from roguewatch.core import procfs
from roguewatch.core.paths import CACHE_DIR, EGRESS_REGISTRY
from roguewatch.host import kernelenv
from roguewatch.policy import egress
from roguewatch.policy.hostnames import system_addresses
from roguewatch.probes import layout
from roguewatch.sensors import pins as pins_mod

log = logging.getLogger("roguewatch.bpf")

PROBE_FILES = ("process", "network", "files", "signals", "system", "egress")
HEADER = "roguewatch.h"
DEFAULT_RINGBUF_PAGES = 2048  # 8 MiB

BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH = 5, 8, 9
BPF_LINK_CREATE = 28
BPF_PERF_EVENT = 41  # the attach type of a perf event (tracepoint) link
SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(platform.machine(), 298)
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
BPF_F_ALLOW_MULTI = 2
# The egress programs (probes/egress.bpf.c) and the cgroup hook each one is for.
# The image's category of the egress programs (a tracepoint category is a tracefs group name:
# `cgroup` is one, so this must not be).
SOCK_ADDR_CATEGORY = "cgroup/sock_addr"
SOCK_ADDR_PROGS = {
    "rw_egress_connect4": 10,  # BPF_CGROUP_INET4_CONNECT
    "rw_egress_connect6": 11,  # BPF_CGROUP_INET6_CONNECT
    "rw_egress_sendmsg4": 14,  # BPF_CGROUP_UDP4_SENDMSG
    "rw_egress_sendmsg6": 15,  # BPF_CGROUP_UDP6_SENDMSG
}
BPF_PSEUDO_MAP_FD = 1
BPF_LD_IMM64 = 0x18
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_TYPE_RINGBUF = 27
BPF_MAP_TYPE_TASK_STORAGE = 29
BPF_MAP_CREATE = 0
BPF_BTF_LOAD = 18
SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)

# Tracepoints whose absence means "not on this kernel"; the C guards them with these macros.
OPTIONAL_GROUPS: dict[str, tuple[tuple[str, str], ...]] = {
    "RW_HAVE_MODULE_TRACEPOINTS": (
        ("syscalls", "sys_enter_init_module"),
        ("syscalls", "sys_enter_finit_module"),
    ),
    "RW_HAVE_FCHMODAT2": (("syscalls", "sys_enter_fchmodat2"),),
    "RW_HAVE_SETXATTRAT": (("syscalls", "sys_enter_setxattrat"),),
}


class ProbeError(Exception):
    """Probes that cannot be built or loaded, with what to do about it."""


_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


class _MapInfo(ct.Structure):
    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
        ("rest", ct.c_uint8 * 64),
    ]


class _InfoAttr(ct.Structure):
    _fields_ = [("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64)]


class _MapCreateAttr(ct.Structure):
    _fields_ = [
        ("map_type", ct.c_uint32), ("key_size", ct.c_uint32), ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32), ("inner_map_fd", ct.c_uint32),
        ("numa_node", ct.c_uint32), ("map_name", ct.c_char * 16), ("map_ifindex", ct.c_uint32),
        ("btf_fd", ct.c_uint32), ("btf_key_type_id", ct.c_uint32),
        ("btf_value_type_id", ct.c_uint32),
    ]  # fmt: skip


class _BtfLoadAttr(ct.Structure):
    _fields_ = [
        ("btf", ct.c_uint64), ("btf_log_buf", ct.c_uint64), ("btf_size", ct.c_uint32),
        ("btf_log_size", ct.c_uint32), ("btf_log_level", ct.c_uint32),
    ]  # fmt: skip


def storage_btf(value_size: int) -> bytes:
    """The smallest BTF a task storage map accepts: type 1 `int` (its key), type 3 an array
    of `value_size` chars (its value). The kernel asks for BTF to create such a map, and
    our loader (which keeps no program BTF) describes the value as plain bytes."""
    strings = b"\0int\0char\0"
    types = struct.pack(
        "<IIII" "IIII" "IIIIII",
        1, 1 << 24, 4, (1 << 24) | 32,  # [1] int: KIND_INT, 4 bytes, signed, 32 bits
        5, 1 << 24, 1, 8,  # [2] char: KIND_INT, 1 byte, 8 bits
        0, 3 << 24, 0, 2, 1, value_size,  # [3] char[value_size]: KIND_ARRAY of [2], index [1]
    )  # fmt: skip
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def create_task_storage_map(name: str, value_size: int, flags: int) -> int:
    """bpf(BPF_MAP_CREATE) for a task storage map, with the BTF it needs; its fd."""
    blob = ct.create_string_buffer(storage_btf(value_size))
    log = ct.create_string_buffer(4096)
    battr = _BtfLoadAttr(ct.addressof(blob), ct.addressof(log), len(blob.raw) - 1, len(log), 1)
    btf = _libc.syscall(SYS_BPF, BPF_BTF_LOAD, ct.byref(battr), ct.sizeof(battr))
    if btf < 0:
        err = ct.get_errno()
        raise ProbeError(f"loading the BTF of map {name}: {os.strerror(err)}: "
                         f"{log.value.decode(errors='replace').strip()[-200:]}")  # fmt: skip
    try:
        attr = _MapCreateAttr(BPF_MAP_TYPE_TASK_STORAGE, 4, value_size, 0, flags, 0, 0,
                              name[:15].encode(), 0, btf, 1, 3)  # fmt: skip
        fd = _libc.syscall(SYS_BPF, BPF_MAP_CREATE, ct.byref(attr), ct.sizeof(attr))
        if fd < 0:
            err = ct.get_errno()
            raise ProbeError(
                f"creating task storage map {name}: {os.strerror(err)} (the probes keep each "
                "syscall's record in BPF task local storage: Linux 5.11+ with BTF; see "
                "`roguewatch doctor`)"
            )
        return fd
    finally:
        os.close(btf)  # the map holds its own reference


def map_info(fd: int) -> _MapInfo:
    info = _MapInfo()
    attr = _InfoAttr(fd, ct.sizeof(info), ct.addressof(info))
    if _libc.syscall(SYS_BPF, BPF_OBJ_GET_INFO_BY_FD, ct.byref(attr), ct.sizeof(attr)) < 0:
        err = ct.get_errno()
        raise ProbeError(f"bpf(OBJ_GET_INFO_BY_FD, {fd}): {os.strerror(err)}")
    return info


def _libbcc() -> ct.CDLL:
    try:
        lib = ct.CDLL("libbcc.so.0", use_errno=True)
    except OSError as exc:
        raise ProbeError(f"libbcc not found ({exc}): apt-get install python3-bpfcc") from None
    lib.bcc_create_map.restype = ct.c_int
    lib.bcc_create_map.argtypes = [ct.c_int, ct.c_char_p, ct.c_int, ct.c_int, ct.c_int, ct.c_int]
    lib.bcc_prog_load.restype = ct.c_int
    lib.bcc_prog_load.argtypes = [
        ct.c_int, ct.c_char_p, ct.c_void_p, ct.c_int, ct.c_char_p,
        ct.c_uint, ct.c_int, ct.c_char_p, ct.c_uint,
    ]  # fmt: skip
    lib.bpf_attach_tracepoint.restype = ct.c_int
    lib.bpf_attach_tracepoint.argtypes = [ct.c_int, ct.c_char_p, ct.c_char_p]
    lib.bpf_update_elem.restype = ct.c_int
    lib.bpf_update_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_ulonglong]
    lib.bpf_lookup_elem.restype = ct.c_int
    lib.bpf_lookup_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
    lib.bpf_delete_elem.restype = ct.c_int
    lib.bpf_delete_elem.argtypes = [ct.c_int, ct.c_void_p]
    lib.bpf_get_next_key.restype = ct.c_int
    lib.bpf_get_next_key.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
    return lib


# ---------------------------------------------------------------------------------------------
# The probe image


@dataclass
class MapDef:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass
class ProgDef:
    category: str
    event: str
    insns: bytes
    relocs: list[tuple[int, str]]  # (instruction index, map name) of each map fd load


@dataclass
class ProbeImage:
    key: str
    maps: list[MapDef]
    progs: list[ProgDef]
    missing: list[str] = field(default_factory=list)  # optional tracepoints not on this kernel

    def dumps(self) -> bytes:
        return msgpack.packb(
            {
                "key": self.key,
                "maps": [vars(m) for m in self.maps],
                "progs": [
                    {"category": p.category, "event": p.event, "insns": p.insns, "relocs": p.relocs}
                    for p in self.progs
                ],
                "missing": self.missing,
            },
            use_bin_type=True,
        )

    @classmethod
    def loads(cls, data: bytes) -> ProbeImage:
        d = msgpack.unpackb(data, raw=False)
        return cls(
            key=d["key"],
            maps=[MapDef(**m) for m in d["maps"]],
            progs=[
                ProgDef(p["category"], p["event"], p["insns"], [tuple(r) for r in p["relocs"]])
                for p in d["progs"]
            ],
            missing=list(d["missing"]),
        )


@dataclass(frozen=True)
class BuildOptions:
    ringbuf_pages: int = DEFAULT_RINGBUF_PAGES
    max_procs: int = layout.MAX_PROCS  # tracked processes (the session map), all sessions
    max_sessions: int = layout.MAX_SESSIONS  # sessions with a budget (roguewatch.h)

    def cflags(self, have: list[str]) -> list[str]:
        flags = [f"-DRW_RINGBUF_PAGES={self.ringbuf_pages}", "-Wno-macro-redefined"]
        if self.max_procs != layout.MAX_PROCS:
            flags.append(f"-DRW_MAX_PROCS={self.max_procs}")
        if self.max_sessions != layout.MAX_SESSIONS:
            flags.append(f"-DRW_MAX_SESSIONS={self.max_sessions}")
        flags += [f"-D{m}=1" for m in have]
        return flags


def probe_source() -> str:
    base = importlib.resources.files("roguewatch.probes")
    text = base.joinpath(HEADER).read_text()
    for name in PROBE_FILES:
        text += f"\n/* ---- {name}.bpf.c ---- */\n" + base.joinpath(f"{name}.bpf.c").read_text()
    return text


def optional_macros() -> tuple[list[str], list[str]]:
    """(macros for optional tracepoint groups present here, tracepoints missing here)."""
    have, missing = [], []
    for macro, tps in OPTIONAL_GROUPS.items():
        absent = [f"{c}:{n}" for c, n in tps if not kernelenv.tracepoint_exists(c, n)]
        if absent:
            missing += absent
        else:
            have.append(macro)
    return have, missing


# The layout of an image as this loader writes and reads it (the programs' categories...):
# a change makes every cached image a stale one.
IMAGE_FORMAT = "3"


def image_key(opts: BuildOptions) -> str:
    try:
        import bcc

        bcc_version = getattr(bcc, "__version__", "?")
    except ImportError:
        bcc_version = "none"
    have, _ = optional_macros()
    h = hashlib.sha256()
    parts = (IMAGE_FORMAT, probe_source(), repr(opts.cflags(have)), platform.release(),
             bcc_version)  # fmt: skip
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def compile_image(opts: BuildOptions) -> ProbeImage:
    """Compile the probes with bcc (clang) without loading them, and extract the image."""
    try:
        from bcc import BPF
    except ImportError:
        raise ProbeError(
            "bcc is not importable: apt-get install python3-bpfcc, and run from a venv made "
            "with /usr/bin/python3 -m venv --system-site-packages (or `make deps`)"
        ) from None

    class _CompileOnly(BPF):
        def _trace_autoload(self) -> None:  # compile, do not load or attach
            pass

    kernelenv.tracefs_dir()
    have, missing = optional_macros()
    try:
        b = _CompileOnly(text=probe_source(), cflags=opts.cflags(have))
    except Exception as exc:
        raise ProbeError(f"compiling the probes failed: {exc}") from None
    lib = _libbcc()
    del lib
    from bcc.libbcc import lib as bcclib

    maps: dict[str, MapDef] = {}
    fd_names: dict[int, str] = {}
    progs: list[ProgDef] = []
    for i in range(bcclib.bpf_num_functions(b.module)):
        fname = bcclib.bpf_function_name(b.module, i).decode()
        if fname.startswith("tracepoint__"):
            _, category, event = fname.split("__", 2)
        elif fname in SOCK_ADDR_PROGS:
            category, event = SOCK_ADDR_CATEGORY, fname
        else:
            continue
        insns = bytes(b.dump_func(fname))
        relocs: list[tuple[int, str]] = []
        for idx in range(len(insns) // 8):
            code, regs = insns[idx * 8], insns[idx * 8 + 1]
            if code == BPF_LD_IMM64 and (regs >> 4) == BPF_PSEUDO_MAP_FD:
                fd = struct.unpack_from("<i", insns, idx * 8 + 4)[0]
                if fd == layout.EVENTS_FD:  # the ring, named by hand (roguewatch.h)
                    relocs.append((idx, "events"))
                    continue
                if fd not in fd_names:
                    info = map_info(fd)
                    name = info.name.decode()
                    if name in maps:
                        raise ProbeError(f"two maps named {name!r} (15-byte kernel names)")
                    maps[name] = MapDef(
                        name, info.type, info.key_size, info.value_size,
                        info.max_entries, info.map_flags,
                    )  # fmt: skip
                    fd_names[fd] = name
                relocs.append((idx, fd_names[fd]))
        progs.append(ProgDef(category, event, insns, relocs))
    # Maps no program references (none today) would be missing: name them all explicitly.
    for name in ("events", "sessions", "adopt_uids", "adopt_comms", "guarded", "lost", "counters"):
        if name not in maps:
            fd = b.get_table(name).map_fd
            info = map_info(fd)
            maps[name] = MapDef(
                name, info.type, info.key_size, info.value_size, info.max_entries, info.map_flags
            )
    b.cleanup()
    return ProbeImage(image_key(opts), list(maps.values()), progs, missing)


def cached_image(opts: BuildOptions, cache_dir: str = CACHE_DIR) -> ProbeImage:
    """The image for these options: from the cache, or compiled in a subprocess and cached."""
    key = image_key(opts)
    path = os.path.join(cache_dir, f"probes-{key}.img")
    try:
        with open(path, "rb") as f:
            img = ProbeImage.loads(f.read())
        if img.key == key:
            return img
    except (OSError, ValueError, KeyError, TypeError):
        pass
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    # Compile in a child so clang's memory never stays in a long-running process. It writes
    # a file of this call's own, read here before it is put in the cache: whatever another
    # process does to the cache meanwhile (another start, a clean-up), this start has its image.
    fd, own = tempfile.mkstemp(dir=cache_dir, prefix=".probes-build-")
    os.close(fd)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "roguewatch.sensors.bpf", "--build", own,
             "--ringbuf-pages", str(opts.ringbuf_pages), "--max-procs", str(opts.max_procs),
             "--max-sessions", str(opts.max_sessions)],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            raise ProbeError(
                proc.stderr.strip().splitlines()[-1] if proc.stderr else "compile failed"
            )
        with open(own, "rb") as f:
            img = ProbeImage.loads(f.read())
        if img.key != key:  # the build was given other options than these: never use it
            raise ProbeError(f"the probe image built for {opts} does not match its options")
        os.replace(own, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(own)
    return img


def _write_image(path: str, opts: BuildOptions) -> None:
    img = compile_image(opts)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".probes-")
    with os.fdopen(fd, "wb") as f:
        f.write(img.dumps())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Loaded probes


@dataclass
class Attached:
    category: str
    event: str
    prog_fd: int
    link_fd: int


class Probes:
    """The probes, loaded and attached; the shared maps by name. Close to detach."""

    def __init__(
        self, image: ProbeImage, pins: pins_mod.PinSet | None = None,
        expected: dict[str, int] | None = None,
    ) -> None:  # fmt: skip
        """``pins``: keep the kernel side in bpffs there (``roguewatch.sensors.pins``),
        taking over what a collector of the same instance and layout left pinned.
        ``expected``: the ids that collector said it pinned (``core.sessionstate``); pinned
        objects with other ids were put there by someone else, and are not taken over."""
        self._lib = _libbcc()
        self.image = image
        self.map_fds: dict[str, int] = {}
        self.attached: list[Attached] = []
        self.failed: list[tuple[str, str]] = []
        self.sock_progs: dict[str, int] = {}
        self.pins = pins
        self.pin_ids: dict[str, int] = {}  # entry name -> kernel id of what we pinned
        self.reused = False  # taken over from the pins of a collector before us
        self.findings: list[pins_mod.Finding] = []  # pins found not ours at the start
        self.links = True  # tracepoints attached by BPF links (pinnable)
        kernelenv.tracefs_dir()
        if pins is not None:
            _register(pins=os.path.basename(pins.instance_dir))  # before anything is pinned
            # Off the start's path: unpinning an instance detaches its tracepoints, an RCU
            # grace period each (seconds in all: bench/README.md).
            keep = [os.path.basename(pins.instance_dir), *_live_instances()]
            gc = threading.Thread(
                target=_collect_quietly,
                daemon=True,
                args=(pins.root, keep, _tracks_live),
                name="pins-gc",
            )
            gc.start()
            pins.remove_stale()
            objs = pins.load()
            if objs is not None and self._take_over(objs, expected or {}):
                self.reused = True
                return
        try:
            for m in image.maps:
                if m.type == BPF_MAP_TYPE_TASK_STORAGE:
                    self.map_fds[m.name] = create_task_storage_map(m.name, m.value_size, m.flags)
                    continue
                fd = self._lib.bcc_create_map(
                    m.type, m.name.encode(), m.key_size, m.value_size, m.max_entries, m.flags
                )
                if fd < 0:
                    err = ct.get_errno()
                    raise ProbeError(f"creating map {m.name}: {os.strerror(err)}")
                self.map_fds[m.name] = fd
            # The key of the folding's string hash: fresh at each load, before any program
            # runs (roguewatch.h, "Repeats folded"), so that no agent can know it.
            if "fold_key" not in self.map_fds:
                raise ProbeError("the probe image has no fold_key map (rebuild it)")
            self._update("fold_key", struct.pack("<I", 0), layout.FOLD_KEY.pack(
                *struct.unpack("<QQ", os.urandom(16))))  # fmt: skip
            # Two at a time: the kernel verifies each program in the loading thread, and
            # ctypes lets go of the GIL, so both cores verify.
            with ThreadPoolExecutor(max_workers=2) as pool:
                outcomes = list(pool.map(self._load_quietly, image.progs))
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            for o in outcomes:
                if isinstance(o, Attached):
                    self.attached.append(o)
                elif isinstance(o, tuple) and len(o) == 2 and isinstance(o[1], str):
                    self.failed.append(o)
            if errors:
                raise errors[0]
        except BaseException:
            self.close()
            raise
        if not self.attached:
            self.close()
            raise ProbeError(f"no probe could be attached: {self.failed[:3]}")
        if pins is not None:
            if not self.links:
                log.warning(
                    "this kernel attaches no tracepoint by a BPF link: the tracepoints "
                    "stop with the collector (its maps and egress programs are pinned)"
                )
            try:
                objs = self.pinned_objects()
                pins.publish(objs)
                self.pin_ids = {n: pins_mod.obj_id(fd) for n, fd in objs.items()}
            except OSError as exc:
                log.warning("cannot pin the probes in %s (%s): they end with the collector",
                            pins.dir, exc)  # fmt: skip
                self.pins = None

    # -- pinned in bpffs (roguewatch.sensors.pins) ---------------------------------------------

    def pinned_objects(self) -> dict[str, int]:
        """What outlives the collector: entry name -> fd (maps, egress programs, links)."""
        objs = {f"map__{n}": fd for n, fd in self.map_fds.items()}
        objs.update({f"prog__{n}": fd for n, fd in self.sock_progs.items()})
        if self.links:
            objs.update({f"link__{a.category}__{a.event}": a.link_fd for a in self.attached})
        return objs

    def _take_over(self, objs: dict[str, int], expected: dict[str, int]) -> bool:
        """Use what a collector before us pinned, if it is whole and what it said it pinned;
        False (every fd closed) when not."""
        ids = {}
        problem = ""
        for name, fd in objs.items():
            try:
                ids[name] = pins_mod.obj_id(fd)
            except OSError as exc:
                problem = f"{name}: {exc}"
        for m in self.image.maps:
            fd = objs.get(f"map__{m.name}")
            if fd is None:
                problem = problem or f"map {m.name} is not pinned"
                continue
            if m.type == BPF_MAP_TYPE_TASK_STORAGE:
                self.map_fds[m.name] = fd
                continue
            info = map_info(fd)
            got = (info.type, info.key_size, info.value_size, info.max_entries)
            if got != (m.type, m.key_size, m.value_size, m.max_entries):
                problem = problem or f"map {m.name} is {got}, not {m}"
            self.map_fds[m.name] = fd
        for name in SOCK_ADDR_PROGS:
            fd = objs.get(f"prog__{name}")
            if fd is None:
                problem = problem or f"program {name} is not pinned"
            else:
                self.sock_progs[name] = fd
        for p in self.image.progs:
            if p.category == SOCK_ADDR_CATEGORY:
                continue
            fd = objs.get(f"link__{p.category}__{p.event}")
            if fd is None:
                self.failed.append((f"{p.category}:{p.event}", "not attached when pinned"))
            else:
                self.attached.append(Attached(p.category, p.event, -1, fd))
        # Ids are the kernel's, unique while the object lives: pinned objects whose ids are
        # not those the last collector wrote down were put there by someone else.
        for name, want in expected.items():
            if name in ids and ids[name] != want:
                self.findings.append(pins_mod.Finding(name, "replaced", ids[name], want))
        if self.findings:
            problem = problem or "pinned objects replaced while no collector ran: " + ", ".join(
                f.name for f in self.findings
            )
        if problem or not self.attached:
            log.warning(
                "the pinned state in %s is not taken over (%s): made afresh",
                self.pins.dir if self.pins else "?",
                problem or "no tracepoint link",
            )
            for fd in objs.values():
                _close_quietly(fd)
            self.map_fds, self.sock_progs, self.attached, self.failed = {}, {}, [], []
            if self.pins is not None:
                self.pins.remove()
            return False
        self.pin_ids = ids
        return True

    def check_pins(self) -> list[pins_mod.Finding]:
        """The pins still ours? Each one removed or replaced is pinned again; what was found."""
        if self.pins is None:
            return []
        return self.pins.check(self.pinned_objects(), self.pin_ids)

    def _load_quietly(self, p: ProgDef) -> Attached | tuple[str, str] | BaseException | None:
        try:
            return self._load(p)
        except BaseException as exc:  # handed to the loading thread, which raises it
            return exc

    def _load(self, p: ProgDef) -> Attached | tuple[str, str] | None:
        """Load (and attach) one program: its attachment, or (tracepoint, why) when the
        tracepoint cannot be attached here; None for a cgroup program (attached later)."""
        insns = bytearray(p.insns)
        for idx, name in p.relocs:
            struct.pack_into("<i", insns, idx * 8 + 4, self.map_fds[name])
        if p.category == SOCK_ADDR_CATEGORY:  # loaded now, attached to the cgroup root later
            self.sock_progs[p.event] = _prog_load_sock_addr(
                p.event, bytes(insns), SOCK_ADDR_PROGS[p.event]
            )
            return None
        buf = (ct.c_char * len(insns)).from_buffer(insns)
        log = ct.create_string_buffer(65536)
        name = f"rw_{p.event}"[:15].encode()
        fd = self._lib.bcc_prog_load(
            BPF_PROG_TYPE_TRACEPOINT, name, buf, len(insns), b"GPL", 0, 0, log, len(log)
        )
        if fd < 0:
            err = ct.get_errno()
            # Retry with the verifier's log, which is what a person needs to read.
            self._lib.bcc_prog_load(
                BPF_PROG_TYPE_TRACEPOINT, name, buf, len(insns), b"GPL", 0, 1, log, len(log)
            )
            tail = log.value.decode(errors="replace").strip().splitlines()[-3:]
            raise ProbeError(f"loading {p.category}:{p.event}: {os.strerror(err)}: {tail}")
        try:
            link = _tracepoint_link(fd, p.category, p.event) if self.links else -1
        except OSError as exc:
            os.close(fd)
            return (f"{p.category}:{p.event}", os.strerror(exc.errno or errno.ENOENT))
        if link < 0:  # no BPF link for perf events on this kernel: bcc's way (not pinnable)
            self.links = False
            link = self._lib.bpf_attach_tracepoint(fd, p.category.encode(), p.event.encode())
            if link < 0:
                err = ct.get_errno()
                os.close(fd)
                return (f"{p.category}:{p.event}", os.strerror(err or errno.ENOENT))
        return Attached(p.category, p.event, fd, link)

    # -- maps ------------------------------------------------------------------------------

    def fd(self, name: str) -> int:
        return self.map_fds[name]

    def _update(self, name: str, key: bytes, value: bytes) -> None:
        k, v = ct.create_string_buffer(key, len(key)), ct.create_string_buffer(value, len(value))
        if self._lib.bpf_update_elem(self.map_fds[name], k, v, 0) < 0:
            raise ProbeError(f"updating {name}: {os.strerror(ct.get_errno())}")

    def _delete(self, name: str, key: bytes) -> bool:
        k = ct.create_string_buffer(key, len(key))
        return self._lib.bpf_delete_elem(self.map_fds[name], k) == 0

    def _lookup(self, name: str, key: bytes, size: int) -> bytes | None:
        k, v = ct.create_string_buffer(key, len(key)), ct.create_string_buffer(size)
        if self._lib.bpf_lookup_elem(self.map_fds[name], k, v) < 0:
            return None
        return v.raw

    def unclaimed_denials(self, older_than_ns: int) -> list[bytes]:
        """Records of egress denials that no syscall exit claimed (io_uring's connects and
        sends have none) and that are older than ``older_than_ns``: taken out of the map."""
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        out = []
        for key in self.keys("egress_denied", 4):
            raw = self._lookup("egress_denied", key, layout.HEADER.size)
            if raw is None or now - layout.VAR.unpack_from(raw)[layout.V_TS] < older_than_ns:
                continue
            if self._delete("egress_denied", key):  # not claimed meanwhile
                out.append(raw)
        return out

    def keys(self, name: str, key_size: int) -> list[bytes]:
        out: list[bytes] = []
        cur = ct.create_string_buffer(key_size)
        nxt = ct.create_string_buffer(key_size)
        prev = None
        while self._lib.bpf_get_next_key(self.map_fds[name], prev, nxt) == 0:
            out.append(nxt.raw)
            ct.memmove(cur, nxt, key_size)
            prev = cur
        return out

    def register(
        self, pid: int, session: int, start_ns: int, pstart_ns: int = 0, ppid: int = 0,
        adopted: bool = False, observe: bool = False, policy: int = 0,
    ) -> None:  # fmt: skip
        """Put a process in a session: it and everything it starts from now on is tracked.

        ``observe``: the kernel never kills in this session (guard events still fire).
        ``policy``: the adoption policy whose allowlist judges its egress (an adopted one)."""
        flags = (layout.F_ADOPTED if adopted else 0) | (layout.P_OBSERVE if observe else 0)
        flags |= (policy & layout.P_POLICY_MASK) << layout.P_POLICY_SHIFT
        self._update(
            "sessions",
            struct.pack("<I", pid),
            layout.PROC.pack(session, start_ns, pstart_ns, ppid, flags),
        )

    def unregister(self, pid: int) -> bool:
        return self._delete("sessions", struct.pack("<I", pid))

    def process(self, pid: int) -> tuple[int, int, int, int, int] | None:
        """(session, start_ns, parent start_ns, ppid, flags) of a tracked process."""
        raw = self._lookup("sessions", struct.pack("<I", pid), layout.PROC.size)
        return layout.PROC.unpack(raw) if raw else None

    def session_of(self, pid: int) -> int | None:
        raw = self._lookup("sessions", struct.pack("<I", pid), layout.PROC.size)
        return layout.PROC.unpack(raw)[layout.PROC_SESSION] if raw else None

    def tracked(self) -> dict[int, int]:
        """pid -> session of every process the kernel tracks."""
        out = {}
        for k in self.keys("sessions", 4):
            pid = struct.unpack("<I", k)[0]
            s = self.session_of(pid)
            if s is not None:
                out[pid] = s
        return out

    def adopt_uid(self, uid: int, policy: int = 1) -> None:
        """Processes of ``uid`` start a session at exec, under adoption policy ``policy``
        (1-255: whose egress allowlist judges them, see ``allow_egress``)."""
        self._update("adopt_uids", struct.pack("<I", uid), bytes([policy]))

    def adopt_comm(self, comm: str, policy: int = 1) -> None:
        self._update("adopt_comms", comm.encode()[:15].ljust(16, b"\0"), bytes([policy]))

    def unadopt_uid(self, uid: int) -> None:
        self._delete("adopt_uids", struct.pack("<I", uid))

    def unadopt_comm(self, comm: str) -> None:
        self._delete("adopt_comms", comm.encode()[:15].ljust(16, b"\0"))

    def guard(self, pid: int) -> None:
        """Signals and ptrace aimed at this task become guard events, from any process."""
        self._update("guarded", struct.pack("<I", pid), b"\1")

    def unguard(self, tid: int) -> None:
        self._delete("guarded", struct.pack("<I", tid))

    def guarded_tids(self) -> list[int]:
        return [struct.unpack("<I", k)[0] for k in self.keys("guarded", 4)]

    def selectors(self) -> tuple[dict[int, int], dict[str, int]]:
        """The adoption selectors in the kernel now: uid -> policy, comm -> policy."""
        uids, comms = {}, {}
        for k in self.keys("adopt_uids", 4):
            v = self._lookup("adopt_uids", k, 1)
            if v is not None:
                uids[struct.unpack("<I", k)[0]] = v[0]
        for k in self.keys("adopt_comms", 16):
            v = self._lookup("adopt_comms", k, 1)
            if v is not None:
                comms[k.split(b"\0", 1)[0].decode(errors="replace")] = v[0]
        return uids, comms

    def egress_owner_ids(self) -> list[int]:
        """The owners whose allowlist is in force in the kernel."""
        return [struct.unpack("<Q", k)[0] for k in self.keys("egress_owners", 8)]

    def is_guarded(self, pid: int) -> bool:
        """Whether this task is one of roguewatch's own (the guarded map)."""
        return self._lookup("guarded", struct.pack("<I", pid), 1) is not None

    def lost_by_type(self) -> list[int]:
        """Records the kernel could not write, per event type number (summed over CPUs)."""
        m = next(m for m in self.image.maps if m.name == "lost")
        # Per-CPU values are 8-byte aligned slots, one per possible CPU.
        ncpu = _possible_cpus()
        out = []
        for t in range(m.max_entries):
            raw = self._lookup("lost", struct.pack("<I", t), 8 * ncpu)
            out.append(sum(struct.unpack(f"<{ncpu}Q", raw)) if raw else 0)
        return out

    def _counter(self, index: layout.Counter) -> int:
        raw = self._lookup("counters", struct.pack("<I", index), 8)
        return struct.unpack("<Q", raw)[0] if raw else 0

    def pending_overflows(self) -> int:
        return self._counter(layout.Counter.PENDING_OVERFLOW)

    def folded(self) -> int:
        """Records the kernel folded into `repeats` records (roguewatch.h)."""
        return self._counter(layout.Counter.FOLDED)

    def untracked_forks(self) -> int:
        """Children that escaped tracking because the session map was full."""
        return self._counter(layout.Counter.UNTRACKED_FORKS)

    # -- budgets per session (roguewatch.h, "Budgets per session") --------------------------

    def set_budget(self, rate: int, burst: int) -> None:
        """Each session may write ``rate`` records a second of each tier that gives way,
        ``burst`` at most at once, while the collector is behind; 0: no budgets."""
        if rate < 0 or burst < 0 or (rate and not burst):
            raise ValueError(f"a budget of {rate}/s, burst {burst}: both must be positive")
        interval = 1_000_000_000 // rate if rate else 0
        interval = max(interval, 1) if rate else 0
        self._update("budget_conf", struct.pack("<I", 0),
                     layout.BUDGET_CONF.pack(interval, interval * burst))  # fmt: skip

    def budget_dropped(self) -> int:
        """Records dropped over their session's budget, all sessions (the kernel's total)."""
        return self._counter(layout.Counter.BUDGET_DROPPED)

    def budget_losses(self) -> dict[int, dict[str, int]]:
        """session -> tier name -> records of it dropped over budget, as the kernel has them."""
        out: dict[int, dict[str, int]] = {}
        for key in self.keys("budget_lost", layout.BUDGET_KEY.size):
            raw = self._lookup("budget_lost", key, 8)
            session, tier, _ = layout.BUDGET_KEY.unpack(key)
            if raw is None or tier >= len(layout.BUDGET_TIERS):
                continue
            by = out.setdefault(session, {})
            by[layout.BUDGET_TIERS[tier]] = struct.unpack("<Q", raw)[0]
        return out

    def forget_budget(self, session: int) -> None:
        """A session that ended: its loss counters go (its buckets age out of their LRU)."""
        for tier in range(len(layout.BUDGET_TIERS)):
            key = layout.BUDGET_KEY.pack(session, tier, 0)
            self._delete("budget_lost", key)
            self._delete("budgets", key)

    # -- egress denial -----------------------------------------------------------------------

    def attach_egress(self, root_fd: int, sweep: bool = True) -> int:
        """Attach the egress programs to the root of the cgroup v2 hierarchy (``root_fd``): from
        now on every connect and send of every process of the host is judged, in the kernel, by
        its session's allowlist (untracked processes and sessions without one pass).

        A collector that died without detaching (SIGKILL) left its programs there (they keep
        its sessions' egress refused); with ``sweep`` they are detached once ours are
        attached, unless their collector lives (``EGRESS_REGISTRY``) or they are pinned
        (a collector of theirs is to take them over). Ours, taken over from pins, are
        attached already. Returns how many were swept."""
        if len(self.sock_progs) != len(SOCK_ADDR_PROGS):
            raise ProbeError("the egress programs are not loaded (rebuild the probe image)")
        for name, attach_type in SOCK_ADDR_PROGS.items():
            # (taken over from pins: still attached, by the collector before us)
            if _prog_id(self.sock_progs[name]) not in _prog_query(root_fd, attach_type):
                _prog_attach(BPF_PROG_ATTACH, root_fd, self.sock_progs[name], attach_type)
        self._egress_root = root_fd
        _register(
            progs=[_prog_id(fd) for fd in self.sock_progs.values()],
            pins=os.path.basename(self.pins.instance_dir) if self.pins else None,
        )
        return self.sweep_stale_egress() if sweep else 0

    def sweep_stale_egress(self) -> int:
        """Detach the egress programs of dead collectors that nobody pinned (after ours are
        attached: never a moment without). How many."""
        fd = getattr(self, "_egress_root", None)
        return 0 if fd is None else _sweep_stale_egress(fd)

    def egress_attached(self) -> list[str]:
        """The egress programs attached to the root now (BPF_PROG_QUERY), by attach type."""
        fd = getattr(self, "_egress_root", None)
        if fd is None:
            return []
        out = []
        ours = {_prog_id(p) for p in self.sock_progs.values()}
        for name, attach_type in SOCK_ADDR_PROGS.items():
            if ours & set(_prog_query(fd, attach_type)):
                out.append(name)
        return out

    def detach_egress_root(self) -> None:
        fd = getattr(self, "_egress_root", None)
        if fd is None:
            return
        for name, attach_type in SOCK_ADDR_PROGS.items():
            try:
                _prog_attach(BPF_PROG_DETACH, fd, self.sock_progs[name], attach_type)
            except ProbeError:
                pass  # already detached (by someone else: the reconciler says so)
        self._egress_root = None
        with contextlib.suppress(OSError):
            os.unlink(_registry_file(os.getpid()))

    def allow_egress(
        self, owner: int, allow: list[str], addresses: Callable[[str], list[str]] | None = None
    ) -> None:
        """Put ``owner``'s allowlist in force: a session of `run`, or ``policy_owner(n)`` for
        adoption policy n. Every other destination is refused in the kernel."""
        self.update_egress(owner, allow, addresses)
        self._update("egress_owners", struct.pack("<Q", owner), b"\1")

    @staticmethod
    def policy_owner(policy: int) -> int:
        """The allowlist owner of adoption policy ``policy`` (1-255)."""
        return layout.EGRESS_POLICY_BASE | policy

    def update_egress(
        self, owner: int, allow: list[str], addresses: Callable[[str], list[str]] | None = None
    ) -> None:
        """Write an owner's allowlist entries: the new ones first, then drop the stale ones,
        so a destination allowed before and after is never refused in between."""
        new = egress_entries(owner, allow, addresses)
        for key, value in new:
            self._update(
                "egress_allow4" if len(key) == layout.EGRESS_KEY4_SIZE else "egress_allow6",
                key, value,
            )  # fmt: skip
        keep = {k for k, _ in new}
        for mapname, klen in _EGRESS_MAPS:
            for k in self.keys(mapname, klen):
                if _key_owner(k) == owner and k not in keep:
                    self._delete(mapname, k)

    def forget_egress(self, owner: int) -> None:
        """An owner's allowlist out of force and gone (its session ended)."""
        self._delete("egress_owners", struct.pack("<Q", owner))
        for mapname, klen in _EGRESS_MAPS:
            for k in self.keys(mapname, klen):
                if _key_owner(k) == owner:
                    self._delete(mapname, k)

    def ringbuf_size(self) -> int:
        return next(m.max_entries for m in self.image.maps if m.name == "events")

    def close(self, unpin: bool = False) -> None:
        """``unpin``: the pinned state goes too (a clean end). Without it, what is pinned
        stays in force for the next collector: only this process's fds are closed."""
        if unpin and self.pins is not None:
            self.pins.remove()
            self.pins = None
        # Each tracepoint detach waits for an RCU grace period: one after the other, all of
        # them take seconds (bench/README.md). Closed from many threads, they share grace
        # periods.
        links = [a.link_fd for a in self.attached]
        if links:
            with ThreadPoolExecutor(max_workers=min(64, len(links))) as pool:
                list(pool.map(_close_quietly, links))
        for a in self.attached:
            _close_quietly(a.prog_fd)
        self.attached = []
        for fd in self.sock_progs.values():
            _close_quietly(fd)
        self.sock_progs = {}
        for fd in self.map_fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.map_fds = {}
        with contextlib.suppress(OSError):
            os.unlink(_registry_file(os.getpid()))

    def __enter__(self) -> Probes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tracepoint_link(prog_fd: int, category: str, event: str) -> int:
    """Attach a tracepoint program by a BPF link (BPF_LINK_CREATE on the tracepoint's perf
    event): the link can be pinned, and a pinned link keeps the program attached once no
    process holds it. -1 when this kernel makes no such link (the caller attaches the old
    way); OSError when the tracepoint cannot be opened here."""
    try:
        with open(os.path.join(kernelenv.tracefs_dir(), "events", category, event, "id")) as f:
            tp_id = int(f.read())
    except (OSError, ValueError) as exc:
        raise OSError(errno.ENOENT, str(exc)) from None
    attr = bytearray(128)  # struct perf_event_attr (its first 64 bytes are what we set)
    struct.pack_into("<IIQQ", attr, 0, PERF_TYPE_TRACEPOINT, len(attr), tp_id, 1)
    struct.pack_into("<I", attr, 48, 1)  # wakeup_events
    buf = (ct.c_char * len(attr)).from_buffer(attr)
    pfd = _libc.syscall(SYS_PERF_EVENT_OPEN, buf, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    if pfd < 0:
        err = ct.get_errno()
        raise OSError(err, f"perf_event_open({category}:{event}): {os.strerror(err)}")
    try:
        la = (ct.c_uint32 * 8)(prog_fd, pfd, BPF_PERF_EVENT, 0, 0, 0, 0, 0)
        link = _libc.syscall(SYS_BPF, BPF_LINK_CREATE, ct.byref(la), ct.sizeof(la))
        if link < 0:
            err = ct.get_errno()
            if err in (errno.EINVAL, errno.EOPNOTSUPP, 524):  # 524: the kernel's ENOTSUPP
                return -1
            raise OSError(err, f"bpf(LINK_CREATE, {category}:{event}): {os.strerror(err)}")
        return int(link)
    finally:
        os.close(pfd)  # the link holds the perf event


def link_create_supported() -> bool:
    """Whether this kernel attaches a tracepoint program by a pinnable BPF link (what keeps
    the tracepoints attached while no collector runs): a two-instruction program tried on
    sched:sched_process_fork."""
    lib = _libbcc()
    insns = ct.create_string_buffer(bytes.fromhex("b7000000000000009500000000000000"), 16)
    log_buf = ct.create_string_buffer(4096)
    fd = lib.bcc_prog_load(BPF_PROG_TYPE_TRACEPOINT, b"rw_doctor_link", insns, 16, b"GPL", 0,
                           0, log_buf, len(log_buf))  # fmt: skip
    if fd < 0:
        raise ProbeError(f"loading a tracepoint program: {os.strerror(ct.get_errno())}")
    try:
        link = _tracepoint_link(fd, "sched", "sched_process_fork")
    finally:
        os.close(fd)
    if link < 0:
        return False
    os.close(link)
    return True


class _ProgLoadAttr(ct.Structure):
    _fields_ = [
        ("prog_type", ct.c_uint32), ("insn_cnt", ct.c_uint32), ("insns", ct.c_uint64),
        ("license", ct.c_uint64), ("log_level", ct.c_uint32), ("log_size", ct.c_uint32),
        ("log_buf", ct.c_uint64), ("kern_version", ct.c_uint32), ("prog_flags", ct.c_uint32),
        ("prog_name", ct.c_char * 16), ("prog_ifindex", ct.c_uint32),
        ("expected_attach_type", ct.c_uint32),
    ]  # fmt: skip


def _prog_load_sock_addr(name: str, insns: bytes, attach_type: int) -> int:
    """bpf(BPF_PROG_LOAD) for a cgroup sock_addr program: it needs its expected attach type
    at load time, which libbcc's bcc_prog_load cannot pass."""
    code = ct.create_string_buffer(insns, len(insns))
    lic = ct.create_string_buffer(b"GPL")
    log = ct.create_string_buffer(65536)
    attr = _ProgLoadAttr(
        BPF_PROG_TYPE_CGROUP_SOCK_ADDR, len(insns) // 8, ct.addressof(code), ct.addressof(lic),
        0, 0, 0, 0, 0, name[:15].encode(), 0, attach_type,
    )  # fmt: skip
    fd = _libc.syscall(SYS_BPF, BPF_PROG_LOAD, ct.byref(attr), ct.sizeof(attr))
    if fd < 0:
        err = ct.get_errno()
        attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ct.addressof(log)
        _libc.syscall(SYS_BPF, BPF_PROG_LOAD, ct.byref(attr), ct.sizeof(attr))
        tail = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise ProbeError(f"loading {name}: {os.strerror(err)}: {tail}")
    return fd


BPF_PROG_QUERY = 16
BPF_PROG_GET_FD_BY_ID = 13


def _registry_file(pid: int) -> str:
    return os.path.join(EGRESS_REGISTRY, f"{pid}.json")


def _register(progs: list[int] | None = None, pins: str | None = None) -> None:
    """Say which egress programs this collector attached and which pinned instance is its
    own (EGRESS_REGISTRY): what a live collector holds is never swept or collected."""
    os.makedirs(EGRESS_REGISTRY, mode=0o700, exist_ok=True)
    os.chmod(EGRESS_REGISTRY, 0o700)
    me = os.getpid()
    entry = {"pid": me, "start": procfs.start_ns(me), "progs": [], "pins": None}
    with contextlib.suppress(OSError, ValueError, TypeError):
        with open(_registry_file(me)) as f:
            old = json.load(f)
        if old.get("start") == entry["start"]:
            entry.update(progs=old.get("progs") or [], pins=old.get("pins"))
    if progs is not None:
        entry["progs"] = progs
    if pins is not None:
        entry["pins"] = pins
    tmp = _registry_file(me) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(entry, f)
    os.replace(tmp, _registry_file(me))


def _live_entries() -> list[dict]:
    """The registry entries of live collectors; dead ones' files go."""
    live: list[dict] = []
    try:
        names = os.listdir(EGRESS_REGISTRY)
    except OSError:
        return live
    for name in names:
        if name.endswith(".tmp"):
            continue
        path = os.path.join(EGRESS_REGISTRY, name)
        try:
            with open(path) as f:
                entry = json.load(f)
            pid, start = int(entry["pid"]), entry.get("start")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if procfs.start_ns(pid) == start and start is not None:
            live.append(entry)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return live


def _live_instances() -> list[str]:
    return [str(e["pins"]) for e in _live_entries() if e.get("pins")]


def _live_egress_progs() -> set[int]:
    """Program ids of the egress programs whose collector is alive, or that are pinned (the
    next collector of their instance takes them over; ``pins.collect_abandoned`` removes
    the pins nobody will)."""
    live = {int(p) for e in _live_entries() for p in e.get("progs") or []}
    with contextlib.suppress(pins_mod.PinError, OSError):
        root = pins_mod.pin_root(create=False)
        for inst in pins_mod.instances(root):
            idir = os.path.join(root, inst)
            for lay in os.listdir(idir):
                for name in SOCK_ADDR_PROGS:
                    pid = pins_mod.pinned_id(os.path.join(idir, lay, f"prog__{name}"))
                    if pid is not None:
                        live.add(pid)
    return live


def _collect_quietly(root: str, keep: list[str], tracks_live: Callable[[str], bool]) -> None:
    try:
        pins_mod.collect_abandoned(root, keep, tracks_live)
    except Exception as exc:  # a clean-up that failed must never end the collector
        log.warning("could not remove abandoned pins: %s", exc)


def _tracks_live(layout_dir: str) -> bool:
    """Whether the session map pinned in ``layout_dir`` holds a process that is alive."""
    try:
        fd = pins_mod.obj_get(os.path.join(layout_dir, "map__sessions"))
    except OSError:
        return False
    try:
        lib = _libbcc()
        cur, nxt = ct.create_string_buffer(4), ct.create_string_buffer(4)
        prev = None
        while lib.bpf_get_next_key(fd, prev, nxt) == 0:
            pid = struct.unpack("<I", nxt.raw)[0]
            st = procfs.stat(pid)
            if st is not None and not st.exiting:
                return True
            ct.memmove(cur, nxt, 4)
            prev = cur
        return False
    finally:
        os.close(fd)


def release_kernel_side() -> tuple[int, int]:
    """What stopped collectors kept in the kernel for the next one (``keep_sensors_on_exit``),
    let go: every pin instance removed (its tracepoint links detach with the last reference)
    and every roguewatch egress program off the cgroup root. For a host that will run no
    collector again (the package removed). Refused (ProbeError) while a collector is alive.
    Returns (pin instances removed, egress programs detached)."""
    live = _live_entries()
    if live:
        pids = ", ".join(str(e["pid"]) for e in live)
        raise ProbeError(f"a collector is running (pid {pids}): stop it first")
    removed = 0
    with contextlib.suppress(pins_mod.PinError):
        root = pins_mod.pin_root(create=False)
        if os.path.isdir(root):
            removed = len(pins_mod.instances(root))
            pins_mod.remove_all(root)
    detached = 0
    cg = kernelenv.cgroup2_mount()
    if cg:
        fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
        try:
            detached = _sweep_stale_egress(fd, live=set())
        finally:
            os.close(fd)
    return removed, detached


def _detach_all_egress(root_fd: int) -> int:
    """Every roguewatch egress program off the root, live collectors' too (tests: what an
    attacker with bpf() would do)."""
    return _sweep_stale_egress(root_fd, live=set())


def _sweep_stale_egress(root_fd: int, live: set[int] | None = None) -> int:
    """Detach from the root the roguewatch egress programs no live collector owns."""
    if live is None:
        live = _live_egress_progs()
    swept = 0
    for attach_type in SOCK_ADDR_PROGS.values():
        for pid in _prog_query(root_fd, attach_type):
            if pid in live:
                continue
            attr = (ct.c_uint32 * 4)(pid, 0, 0, 0)
            fd = _libc.syscall(SYS_BPF, BPF_PROG_GET_FD_BY_ID, ct.byref(attr), ct.sizeof(attr))
            if fd < 0:
                continue
            try:
                info = _ProgInfo()
                a = _InfoAttr(fd, ct.sizeof(info), ct.addressof(info))
                if _libc.syscall(SYS_BPF, BPF_OBJ_GET_INFO_BY_FD, ct.byref(a), ct.sizeof(a)) < 0:
                    continue
                if not bytes(info.name).split(b"\0", 1)[0].startswith(b"rw_egress_"):
                    continue  # somebody else's program: never ours to touch
                with contextlib.suppress(ProbeError):
                    _prog_attach(BPF_PROG_DETACH, root_fd, fd, attach_type)
                    swept += 1
            finally:
                os.close(fd)
    return swept


def _prog_query(target_fd: int, attach_type: int) -> list[int]:
    """Ids of the programs attached to a cgroup for one attach type."""
    ids = (ct.c_uint32 * 64)()

    class _QueryAttr(ct.Structure):
        _fields_ = [
            ("target_fd", ct.c_uint32), ("attach_type", ct.c_uint32),
            ("query_flags", ct.c_uint32), ("attach_flags", ct.c_uint32),
            ("prog_ids", ct.c_uint64), ("prog_cnt", ct.c_uint32),
        ]  # fmt: skip

    attr = _QueryAttr(target_fd, attach_type, 0, 0, ct.addressof(ids), len(ids))
    if _libc.syscall(SYS_BPF, BPF_PROG_QUERY, ct.byref(attr), ct.sizeof(attr)) < 0:
        raise ProbeError(f"querying the egress programs: {os.strerror(ct.get_errno())}")
    return list(ids[: attr.prog_cnt])


class _ProgInfo(ct.Structure):
    # struct bpf_prog_info up to its name (the rest, zeroed, is room for what the kernel adds)
    _fields_ = [
        ("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64), ("created_by_uid", ct.c_uint32),
        ("nr_map_ids", ct.c_uint32), ("map_ids", ct.c_uint64), ("name", ct.c_char * 16),
        ("rest", ct.c_uint8 * 256),
    ]  # fmt: skip


def _prog_id(prog_fd: int) -> int:
    info = _ProgInfo()
    attr = _InfoAttr(prog_fd, ct.sizeof(info), ct.addressof(info))
    if _libc.syscall(SYS_BPF, BPF_OBJ_GET_INFO_BY_FD, ct.byref(attr), ct.sizeof(attr)) < 0:
        raise ProbeError(f"bpf(OBJ_GET_INFO_BY_FD) of a program: {os.strerror(ct.get_errno())}")
    return info.id


def _prog_attach(cmd: int, target_fd: int, prog_fd: int, attach_type: int) -> None:
    # (a detach with attach flags set is EINVAL: they are the attach's alone)
    flags = BPF_F_ALLOW_MULTI if cmd == BPF_PROG_ATTACH else 0
    attr = (ct.c_uint32 * 5)(target_fd, prog_fd, attach_type, flags, 0)
    if _libc.syscall(SYS_BPF, cmd, ct.byref(attr), ct.sizeof(attr)) < 0:
        what = "attaching" if cmd == BPF_PROG_ATTACH else "detaching"
        raise ProbeError(f"{what} an egress program: {os.strerror(ct.get_errno())}")


def egress_entries(
    owner: int, allow: list[str], addresses: Callable[[str], list[str]] | None = None
) -> list[tuple[bytes, bytes]]:
    """LPM trie entries (key, value) for an owner's allowlist.

    A lookup finds only the longest matching prefix, so each entry also carries the port
    ranges of every shorter entry that contains it. Host names are resolved by
    ``addresses(host)`` (the collector's HostRefresher), or now by the system's resolver; one
    that does not resolve allows nothing (the evaluator still alerts).
    """
    nets = egress.networks(allow, addresses or (lambda h: system_addresses(h) or []))
    out = []
    seen: set[object] = set()
    n_max = layout.EGRESS_RANGES
    for net, *_ in nets:
        if net in seen:
            continue
        seen.add(net)
        ranges = [(lo, hi, pr) for n2, lo, hi, pr in nets
                  if n2.version == net.version and net.subnet_of(n2)][:n_max]  # fmt: skip
        pad = [0] * (n_max - len(ranges))
        los, his, protos = ([r[j] for r in ranges] + pad for j in range(3))
        value = layout.EGRESS_ALLOW.pack(*los, *his, *protos, len(ranges))
        # the prefix: the 64 bits of the owner, then the address's
        key = layout.EGRESS_KEY.pack(64 + net.prefixlen, owner) + net.network_address.packed
        out.append((key, value))
    return out


# The two allowlist maps and the size of their keys.
_EGRESS_MAPS = (
    ("egress_allow4", layout.EGRESS_KEY4_SIZE),
    ("egress_allow6", layout.EGRESS_KEY6_SIZE),
)


def _key_owner(key: bytes) -> int:
    """The owner (session or adoption policy) of an allowlist key."""
    return struct.unpack_from("<Q", key, layout.EGRESS_KEY_OWNER_OFF)[0]


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _possible_cpus() -> int:
    with open("/sys/devices/system/cpu/possible") as f:
        spec = f.read().strip()
    n = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n


def load(
    opts: BuildOptions | None = None, cache_dir: str = CACHE_DIR, pin_for: str | None = None,
    expected: dict[str, int] | None = None,
) -> Probes:  # fmt: skip
    """``pin_for``: the state directory of the collector whose kernel side is kept pinned
    (``Probes``); bpffs that cannot hold it is said and the probes load unpinned."""
    image = cached_image(opts or BuildOptions(), cache_dir)
    pinset = None
    if pin_for:
        try:
            pinset = pins_mod.PinSet(pins_mod.pin_root(), pins_mod.instance_name(pin_for),
                                     pins_mod.layout_name(image.key))  # fmt: skip
        except (pins_mod.PinError, OSError) as exc:
            log.warning("the probes are not pinned (%s): they end with the collector", exc)
    return Probes(image, pinset, expected)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="build the probe image (used by the loader)")
    ap.add_argument("--build", metavar="PATH", required=True)
    ap.add_argument("--ringbuf-pages", type=int, default=DEFAULT_RINGBUF_PAGES)
    ap.add_argument("--max-procs", type=int, default=BuildOptions.max_procs)
    ap.add_argument("--max-sessions", type=int, default=BuildOptions.max_sessions)
    args = ap.parse_args(argv)
    try:
        _write_image(
            args.build, BuildOptions(args.ringbuf_pages, args.max_procs, args.max_sessions)
        )
    except ProbeError as exc:
        print(f"roguewatch: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
