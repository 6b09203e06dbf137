"""Facts about the running kernel and host that roguewatch depends on, and mounting tracefs/bpffs
on demand.

This module owns the answers to "can roguewatch work here, and if not, why": which tracepoints
exist, where cgroup v2 is mounted, which kernel header tree bcc will compile against, the
Landlock ABI, capabilities, and a few tiny bcc programs that prove a feature really loads
(a feature listed by the kernel is not always one the kernel lets us use: the BPF LSM is
listed as active on our CI kernel, yet its programs fail to load with EPERM).

It must not load roguewatch's own probes; the probe layer does that. The small test programs
here are self-contained, detached and freed before each function returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from roguewatch.core import procfs

__all__ = [
    "CAPABILITIES",
    "OPTIONAL_TRACEPOINTS",
    "HeaderInfo",
    "KernelEnvError",
    "bcc_version",
    "bpf_lsm_loads",
    "btf_available",
    "cgroup2_mount",
    "cgroup_freeze_supported",
    "cgroup_kill_supported",
    "effective_capabilities",
    "ensure_bpffs",
    "ensure_bpffs_mounted",
    "ensure_tracefs",
    "has_capabilities",
    "header_tree",
    "is_root",
    "landlock_abi",
    "lsm_list",
    "missing_capabilities",
    "missing_tracepoints",
    "mount_points",
    "parse_tracepoints",
    "probe_source_dir",
    "probe_tracepoints",
    "probe_tracepoints_by_file",
    "ringbuf_works",
    "sock_addr_attach_works",
    "tracefs_dir",
    "tracepoint_exists",
]

TRACEFS_DEFAULT = "/sys/kernel/tracing"
BPFFS_DEFAULT = "/sys/fs/bpf"
SECURITYFS_DEFAULT = "/sys/kernel/security"
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"
KHEADERS = "/sys/kernel/kheaders.tar.xz"

# Tracepoints whose absence means "not on this kernel" rather than a broken host: module loading
# does not exist without CONFIG_MODULES (our CI kernel), and fchmodat2 is new in Linux 6.6.
OPTIONAL_TRACEPOINTS: frozenset[str] = frozenset(
    {
        "syscalls:sys_enter_init_module",
        "syscalls:sys_exit_init_module",
        "syscalls:sys_enter_finit_module",
        "syscalls:sys_exit_finit_module",
        "syscalls:sys_enter_fchmodat2",
        "syscalls:sys_exit_fchmodat2",
    }
)

# Capabilities the daemon needs (bit numbers from linux/capability.h).
CAPABILITIES: dict[str, int] = {
    "CAP_KILL": 5,
    "CAP_SYS_ADMIN": 21,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}

# mount(2) flags; tracefs and bpffs never need suid, device nodes or executables.
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8

# landlock_create_ruleset has the same number on every architecture (it was added after the
# syscall tables were unified); with this flag it returns the highest supported ABI version.
_SYS_LANDLOCK_CREATE_RULESET = 444
_LANDLOCK_CREATE_RULESET_VERSION = 1 << 0

# How long ringbuf_works() waits for its record (the check's program load comes first).
_POLL_BUDGET_S = 1.0


class KernelEnvError(RuntimeError):
    """A kernel facility roguewatch needs is unavailable; `fix` says what a person can do."""

    def __init__(self, msg: str, fix: str) -> None:
        super().__init__(msg)
        self.msg = msg
        self.fix = fix


# --------------------------------------------------------------------------------------------
# mounts


def _unescape_mountinfo(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash in mountinfo as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mountinfo(path: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(mount point, fstype) for every mount visible to this process, in mount order."""
    result: list[tuple[str, str]] = []
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return result
    for line in lines:
        # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue":
        # the number of optional fields before "-" varies, so split at the separator.
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lfields = left.split(" ")
        rfields = right.split(" ")
        if len(lfields) < 5 or not rfields:
            continue
        result.append((_unescape_mountinfo(lfields[4]), rfields[0]))
    return result


def mount_points(fstype: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Every mount point of filesystem type `fstype`, in mount order."""
    return [mp for mp, fs in _mountinfo(mountinfo) if fs == fstype]


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The cgroup v2 mount point, from mountinfo (/sys/fs/cgroup on systemd hosts,
    /sys/fs/cgroup/unified on hybrid layouts), or None when cgroup v2 is not mounted."""
    points = mount_points("cgroup2", mountinfo)
    if not points:
        return None
    # Prefer the conventional places when cgroup2 is mounted more than once.
    for preferred in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if preferred in points:
            return preferred
    return points[0]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _filesystem_known(fstype: str) -> bool:
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            return any(line.split()[-1] == fstype for line in f if line.strip())
    except OSError:
        return True  # cannot tell; let mount(2) decide


def _ensure_mounted(fstype: str, target: str, data: str | None = None) -> tuple[str, bool]:
    """Return (mount point, mounted_now) for `fstype`, mounting it at `target` if missing."""
    points = mount_points(fstype)
    if points:
        return (target if target in points else points[0]), False
    manual = f"mount -t {fstype} {fstype} {target}"
    if not _filesystem_known(fstype):
        raise KernelEnvError(
            f"{fstype} is not supported by this kernel (not in /proc/filesystems)",
            f"use a kernel built with {fstype} support",
        )
    if not os.path.isdir(target):
        raise KernelEnvError(
            f"{target} does not exist, cannot mount {fstype}", f"mkdir -p {target} && {manual}"
        )
    if os.geteuid() != 0:
        raise KernelEnvError(f"{fstype} is not mounted and mounting needs root", f"sudo {manual}")
    # mount(2) through ctypes rather than mount(8): works in minimal containers too.
    libc = _libc()
    rc = libc.mount(
        fstype.encode(),
        target.encode(),
        fstype.encode(),
        ctypes.c_ulong(_MS_NOSUID | _MS_NODEV | _MS_NOEXEC),
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise KernelEnvError(f"mount -t {fstype} at {target} failed: {os.strerror(err)}", manual)
    return target, True


def ensure_tracefs() -> tuple[str, bool]:
    """(tracefs mount point, True if this call mounted it). Raises KernelEnvError."""
    return _ensure_mounted("tracefs", TRACEFS_DEFAULT)


def tracefs_dir() -> str:
    """The tracefs mount directory, mounting tracefs at /sys/kernel/tracing when missing.

    Call this before importing bcc: bcc picks its tracefs path once, at import time.
    Raises KernelEnvError when tracefs is unavailable and cannot be mounted.
    """
    return ensure_tracefs()[0]


def ensure_bpffs_mounted() -> tuple[str, bool]:
    """(bpffs mount point, True if this call mounted it). Raises KernelEnvError."""
    # mode=700 like systemd: pinned maps are the monitor's business only.
    return _ensure_mounted("bpf", BPFFS_DEFAULT, data="mode=700")


def ensure_bpffs() -> str:
    """The bpffs mount directory, mounting bpffs at /sys/fs/bpf when missing.

    Raises KernelEnvError when bpffs is unavailable and cannot be mounted.
    """
    return ensure_bpffs_mounted()[0]


# --------------------------------------------------------------------------------------------
# tracepoints


def tracepoint_exists(category: str, name: str, tracefs: str | None = None) -> bool:
    """True when <tracefs>/events/<category>/<name>/id exists (mounts tracefs if needed).

    Raises KernelEnvError when it cannot tell: tracefs cannot be mounted, or its events
    directory is not readable (tracefs is mode 700: as non-root every tracepoint would
    otherwise look missing)."""
    if tracefs is None:
        tracefs = tracefs_dir()
    events = os.path.join(tracefs, "events")
    try:
        os.stat(os.path.join(events, category, name, "id"))
    except (FileNotFoundError, NotADirectoryError):
        if not os.access(events, os.R_OK | os.X_OK):
            raise KernelEnvError(
                f"cannot read {events}: permission denied", "run as root"
            ) from None
        return False
    except PermissionError as e:
        raise KernelEnvError(f"cannot read {events}: {e.strerror}", "run as root") from e
    return True


def _strip_comments(text: str) -> str:
    """C source with // and /* */ comments blanked out; string and char literals kept intact,
    so a "//" inside a string does not start a comment. Newlines are kept."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
        elif c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            stop = n if end == -1 else end + 2
            out.append("\n" * text.count("\n", i, stop) or " ")
            i = stop
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _drop_preprocessor(text: str) -> str:
    # A TRACEPOINT_PROBE(...) inside a #define has macro parameters, not real names; leave
    # it out rather than report a bogus missing tracepoint. Continuation lines go with it.
    out: list[str] = []
    in_directive = False
    for line in text.split("\n"):
        if in_directive or line.lstrip().startswith("#"):
            in_directive = line.rstrip().endswith("\\")
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


# bcc's TRACEPOINT_PROBE(category, event). \b keeps RAW_TRACEPOINT_PROBE(...) out.
_TRACEPOINT_RE = re.compile(r"\bTRACEPOINT_PROBE\s*\(\s*([A-Za-z_]\w*)\s*,\s*([A-Za-z_]\w*)\s*\)")


def parse_tracepoints(source: str) -> list[tuple[str, str]]:
    """(category, event) of every TRACEPOINT_PROBE in C source text, outside comments, in order
    of first appearance, without duplicates."""
    code = _drop_preprocessor(_strip_comments(source))
    seen: dict[tuple[str, str], None] = {}
    for m in _TRACEPOINT_RE.finditer(code):
        seen.setdefault((m.group(1), m.group(2)), None)
    return list(seen)


def _default_probe_dir() -> Traversable | None:
    try:
        return resources.files("roguewatch.probes")
    except (ModuleNotFoundError, TypeError):
        return None


def _bpf_sources(source_dir: str | os.PathLike[str] | Traversable | None) -> list[Traversable]:
    root: Traversable | None
    root = _default_probe_dir() if source_dir is None else _as_traversable(source_dir)
    if root is None or not root.is_dir():
        return []
    return sorted(
        (p for p in root.iterdir() if p.name.endswith(".bpf.c") and p.is_file()),
        key=lambda p: p.name,
    )


def _as_traversable(source_dir: str | os.PathLike[str] | Traversable) -> Traversable:
    if isinstance(source_dir, str | os.PathLike):
        return Path(source_dir)
    return source_dir


def probe_source_dir() -> str:
    """Where the installed BPF sources are, for messages."""
    root = _default_probe_dir()
    return str(root) if root is not None else "roguewatch.probes (not installed)"


def probe_tracepoints_by_file(
    source_dir: str | os.PathLike[str] | Traversable | None = None,
) -> dict[str, list[tuple[str, str]]]:
    """{file name: its tracepoints} for the *.bpf.c files in `source_dir` (default: the
    `roguewatch.probes` package data), files in name order."""
    return {
        src.name: parse_tracepoints(src.read_text(encoding="utf-8"))
        for src in _bpf_sources(source_dir)
    }


def probe_tracepoints(
    source_dir: str | os.PathLike[str] | Traversable | None = None,
) -> list[tuple[str, str]]:
    """Every tracepoint the probes use, parsed from the *.bpf.c files in `source_dir`
    (default: the `roguewatch.probes` package data), without duplicates. [] when there are no
    sources."""
    seen: dict[tuple[str, str], None] = {}
    for points in probe_tracepoints_by_file(source_dir).values():
        for tp in points:
            seen.setdefault(tp, None)
    return list(seen)


# --------------------------------------------------------------------------------------------
# kernel headers, BTF, Landlock, LSMs


@dataclass(frozen=True)
class HeaderInfo:
    """The kernel header tree bcc will compile against."""

    path: str | None  # None: no header tree found
    version: str | None  # the release the headers were built for, when readable
    matches_running: bool  # version == uname -r
    source: str = "none"  # "BCC_KERNEL_SOURCE", "modules build dir" or "kheaders"


def _headers_version(build: str) -> str | None:
    utsrelease = os.path.join(build, "include", "generated", "utsrelease.h")
    try:
        with open(utsrelease, encoding="utf-8") as f:
            m = re.search(r'#define\s+UTS_RELEASE\s+"([^"]*)"', f.read())
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        with open(
            os.path.join(build, "include", "config", "kernel.release"), encoding="utf-8"
        ) as f:
            return f.read().strip() or None
    except OSError:
        return None


def header_tree() -> HeaderInfo:
    """The header tree bcc uses: $BCC_KERNEL_SOURCE, else /lib/modules/$(uname -r)/build,
    else the kernel's own /sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS)."""
    running = os.uname().release
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and os.path.isdir(env):
        candidates = [(env, "BCC_KERNEL_SOURCE")]
    else:
        candidates = [(f"/lib/modules/{running}/build", "modules build dir")]
    for path, source in candidates:
        if os.path.isdir(path):
            version = _headers_version(path)
            return HeaderInfo(path, version, version == running, source)
    if os.path.exists(KHEADERS):
        # Built into the running kernel, so it matches by construction.
        return HeaderInfo(KHEADERS, running, True, "kheaders")
    return HeaderInfo(None, None, False, "none")


def btf_available() -> bool:
    """True when the kernel exposes its BTF (/sys/kernel/btf/vmlinux)."""
    return os.path.exists(BTF_VMLINUX)


def landlock_abi() -> int:
    """The highest Landlock ABI version the kernel supports; 0 when unsupported or on error."""
    try:
        libc = _libc()
        libc.syscall.restype = ctypes.c_long
        abi = libc.syscall(
            ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
        )
    except (OSError, AttributeError):
        return 0
    return int(abi) if abi > 0 else 0


def lsm_list(mount_if_needed: bool = True) -> list[str] | None:
    """The active LSMs from <securityfs>/lsm, or None when that cannot be read.

    securityfs is not mounted at boot on some hosts. When it is missing we mount it in a
    private mount namespace of a short-lived `unshare` child, so reading it leaves no mount
    behind on the host.
    """
    for mp in [*mount_points("securityfs"), SECURITYFS_DEFAULT]:
        try:
            with open(os.path.join(mp, "lsm"), encoding="ascii") as f:
                return [x for x in f.read().strip().split(",") if x]
        except OSError:
            continue
    unshare = shutil.which("unshare")
    if not mount_if_needed or os.geteuid() != 0 or unshare is None:
        return None
    script = f"mount -t securityfs securityfs {SECURITYFS_DEFAULT} && cat {SECURITYFS_DEFAULT}/lsm"
    try:
        proc = subprocess.run(
            [unshare, "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return [x for x in proc.stdout.strip().split(",") if x]


# --------------------------------------------------------------------------------------------
# privileges


def is_root() -> bool:
    """True when running with effective uid 0."""
    return os.geteuid() == 0


def effective_capabilities() -> int:
    """This process's effective capability set, bit n for capability n (0 when unreadable)."""
    try:
        return int(procfs.status("self").get("CapEff", "0"), 16)
    except ValueError:
        return 0


def _cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


def missing_capabilities() -> list[str]:
    """Names from CAPABILITIES not in this process's effective set.

    Kernels older than 5.8 have no CAP_BPF/CAP_PERFMON; there CAP_SYS_ADMIN covers them."""
    eff = effective_capabilities()
    last = _cap_last_cap()
    return [name for name, bit in CAPABILITIES.items() if bit <= last and not eff & (1 << bit)]


def has_capabilities() -> bool:
    """True when every capability roguewatch needs is effective."""
    return not missing_capabilities()


# --------------------------------------------------------------------------------------------
# cgroup v2 features


@contextlib.contextmanager
def _temp_child_cgroup(cg2: str) -> Iterator[str]:
    """A fresh, empty child cgroup under `cg2`, removed afterwards. Raises KernelEnvError."""
    path = os.path.join(cg2, f"roguewatch-probe-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.mkdir(path)
    except OSError as e:
        raise KernelEnvError(
            f"cannot create a child cgroup under {cg2}: {e.strerror}",
            "run as root on a host where the cgroup v2 hierarchy is writable",
        ) from e
    try:
        yield path
    finally:
        # A cgroup with no tasks can always be removed; retry briefly in case the kernel is
        # still releasing a just-detached program.
        for _ in range(20):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY:
                    break
                time.sleep(0.01)


def _child_cgroup_has(cg2: str, filename: str) -> bool:
    # The root cgroup lacks most interface files, so ask a child.
    with _temp_child_cgroup(cg2) as child:
        return os.path.exists(os.path.join(child, filename))


def cgroup_kill_supported(cg2: str) -> bool:
    """True when cgroup v2 at `cg2` offers cgroup.kill (Linux 5.14+).

    Raises KernelEnvError when no child cgroup can be created to look."""
    return _child_cgroup_has(cg2, "cgroup.kill")


def cgroup_freeze_supported(cg2: str) -> bool:
    """True when cgroup v2 at `cg2` offers cgroup.freeze (Linux 5.2+).

    Raises KernelEnvError when no child cgroup can be created to look."""
    return _child_cgroup_has(cg2, "cgroup.freeze")


# --------------------------------------------------------------------------------------------
# small bcc programs that prove a feature loads


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture fd 2 (libbpf and clang write there from C) into the yielded list's only item.

    The doctor's output stays readable, and the verifier's words become part of the reason."""
    box: list[str] = [""]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield box
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box[0] = tmp.read().decode("utf-8", "replace")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _reason(exc: BaseException, stderr: str) -> str:
    msg = str(exc) or type(exc).__name__
    # bcc turns every EPERM into "Need super-user privileges", even for root.
    if "super-user" in msg and is_root():
        msg = "the kernel refused it with EPERM, although running as root"
    extra = _last_line(stderr)
    if not extra or extra in msg or ("Operation not permitted" in extra and "EPERM" in msg):
        return msg
    return f"{msg}; {extra}"


def bcc_version() -> str:
    """The importable bcc's version. Ensures tracefs first (bcc fixes its path at import).

    Raises ImportError when bcc cannot be imported."""
    with contextlib.suppress(KernelEnvError):
        tracefs_dir()
    import bcc  # lazy: bcc is heavy and only needed here

    return str(getattr(bcc, "__version__", "unknown"))


def _import_bpf() -> tuple[Any, Any]:
    with contextlib.suppress(KernelEnvError):
        tracefs_dir()
    from bcc import BPF, BPFAttachType

    return BPF, BPFAttachType


_RINGBUF_PROG = """
BPF_RINGBUF_OUTPUT(rw_doctor_rb, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != RW_TGID)
        return 0;
    u32 v = 0x5eed;
    rw_doctor_rb.ringbuf_output(&v, sizeof(v), 0);
    return 0;
}
"""


def ringbuf_works() -> tuple[bool, str]:
    """Compile and attach a tracepoint program with a BPF ring buffer, trigger it from this
    process, and poll the record back. (ok, detail)."""
    stderr: list[str] = [""]
    try:
        BPF, _ = _import_bpf()
        start = time.monotonic()
        got: list[int] = []

        def on_record(_ctx: object, data: int, _size: int) -> None:
            got.append(ctypes.cast(data, ctypes.POINTER(ctypes.c_uint32))[0])

        with _captured_stderr() as stderr:
            # bcc wants bytes; str still works but warns.
            text = _RINGBUF_PROG.replace("RW_TGID", str(os.getpid()))
            with BPF(text=text.encode(), cflags=["-w"]) as b:
                b[b"rw_doctor_rb"].open_ring_buffer(on_record)
                deadline = time.monotonic() + _POLL_BUDGET_S
                while not got and time.monotonic() < deadline:
                    os.getppid()  # the trigger: only this tgid's getppid is recorded
                    b.ring_buffer_poll(50)
        if 0x5EED not in got:
            return False, "program attached but no record arrived through the ring buffer"
        return (
            True,
            f"record received through BPF_RINGBUF_OUTPUT in {time.monotonic() - start:.1f} s",
        )
    except ImportError as e:
        return False, f"bcc not importable: {e}"
    except Exception as e:  # bcc raises bare Exception for every load/attach failure
        return False, _reason(e, stderr[0])


def sock_addr_attach_works(cg2: str) -> tuple[bool, str]:
    """Load a cgroup/connect4 program and attach it to a temporary child cgroup of `cg2`, then
    detach and remove it. (ok, detail)."""
    stderr: list[str] = [""]
    try:
        BPF, BPFAttachType = _import_bpf()
        attach_type = BPFAttachType.CGROUP_INET4_CONNECT
        with (
            _temp_child_cgroup(cg2) as child,
            _captured_stderr() as stderr,
            BPF(text=b"int f(struct bpf_sock_addr *ctx) { return 1; }", cflags=["-w"]) as b,
        ):
            fn = b.load_func(b"f", BPF.CGROUP_SOCK_ADDR, attach_type=attach_type)
            fd = os.open(child, os.O_RDONLY | os.O_DIRECTORY)
            try:
                BPF.attach_func(fn, fd, attach_type)
                BPF.detach_func(fn, fd, attach_type)
            finally:
                os.close(fd)
        return True, "cgroup/connect4 program attached to and detached from a child cgroup"
    except ImportError as e:
        return False, f"bcc not importable: {e}"
    except KernelEnvError as e:
        return False, e.msg
    except Exception as e:  # bcc raises bare Exception for every load/attach failure
        return False, _reason(e, stderr[0])


def bpf_lsm_loads() -> tuple[bool, str]:
    """Load and attach a do-nothing BPF LSM program (file_open hook), then detach it.

    (ok, detail). The kernel may list 'bpf' as an active LSM and still refuse the program."""
    stderr: list[str] = [""]
    try:
        BPF, _ = _import_bpf()
        if not BPF.support_lsm():
            return False, "kernel lacks BTF or the bpf_lsm_* hooks"
        with (
            _captured_stderr() as stderr,
            BPF(text=b"LSM_PROBE(file_open, struct file *file) { return 0; }", cflags=["-w"]),
        ):
            pass  # bcc attaches LSM_PROBE programs in the constructor
        return True, "LSM program loaded and attached"
    except ImportError as e:
        return False, f"bcc not importable: {e}"
    except Exception as e:  # bcc raises bare Exception for every load/attach failure
        return False, _reason(e, stderr[0])


def missing_tracepoints(
    points: Iterable[tuple[str, str]], tracefs: str | None = None
) -> list[tuple[str, str]]:
    """The subset of `points` that do not exist under `tracefs` (default: mounted on demand).

    Raises KernelEnvError when tracefs cannot be read."""
    return [(c, n) for c, n in points if not tracepoint_exists(c, n, tracefs)]
