"""Sandboxing an agent with Landlock: the domain `roguewatch run` applies before exec.

This module owns building and enforcing the agent's Landlock domain: signal and abstract-unix-
socket scoping (the agent, root included, cannot signal, ptrace or connect to anything outside
its domain, such as the monitor) and a filesystem part: writes are allowed only beneath the
writable roots (the policy's `writable:`, or `/`), except in the subtrees it is told to keep
out of reach (the monitor's own paths). Reads stay allowed everywhere: read accesses are never
handled. A process in a domain with a filesystem part also cannot mount, unmount or pivot_root.

Landlock rules only allow, and a rule on a directory covers its whole subtree: "everything but
X" is built by granting each sibling of X, and of each directory above X, its own rule. So in a
directory above a denied path (`/`, `/etc`, `/run`, `/var/lib`, `/sys/fs`...) the existing files
stay writable in place, but no entry can be created, removed or renamed directly in it: a right
to do that would hold in the denied subtree too. Symbolic links get no rule (`/var/run -> /run`
would otherwise grant all of /run); what they point to is judged by its own path.

Building (``Ruleset.build``) and enforcing (``Ruleset.enforce``) are apart: the launcher builds
in its own process, where a bad root is an error it can report, and the forked child enforces
right before exec. It must only ever restrict the calling process, never the launcher or the
daemon themselves. It does not decide what an agent may write, nor what the monitor's own paths
are; the policy and the launcher do.

Landlock syscalls are called through ctypes (the numbers 444-446 are the same on every
architecture: they were added after the syscall tables were unified).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from roguewatch.host import kernelenv

__all__ = [
    "ACCESS_FS_IOCTL_DEV",
    "ACCESS_FS_REFER",
    "ACCESS_FS_TRUNCATE",
    "ACCESS_FS_WRITE_FILE",
    "SCOPE_ABSTRACT_UNIX_SOCKET",
    "SCOPE_SIGNAL",
    "STD_DEVICES",
    "LandlockError",
    "Ruleset",
    "abi",
    "restrict_self",
    "write_accesses",
]

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem access rights (linux/landlock.h; TRUNCATE and IOCTL_DEV are newer than Debian 12's
# header, values from the kernel documentation).
ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5

# Scopes (ABI 6).
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

_WRITE_ABI1 = (
    ACCESS_FS_WRITE_FILE
    | ACCESS_FS_REMOVE_DIR
    | ACCESS_FS_REMOVE_FILE
    | ACCESS_FS_MAKE_CHAR
    | ACCESS_FS_MAKE_DIR
    | ACCESS_FS_MAKE_REG
    | ACCESS_FS_MAKE_SOCK
    | ACCESS_FS_MAKE_FIFO
    | ACCESS_FS_MAKE_BLOCK
    | ACCESS_FS_MAKE_SYM
)
# The rights a rule on a non-directory may carry (others make landlock_add_rule fail EINVAL).
_FILE_ACCESSES = (
    ACCESS_FS_EXECUTE
    | ACCESS_FS_WRITE_FILE
    | ACCESS_FS_READ_FILE
    | ACCESS_FS_TRUNCATE
    | ACCESS_FS_IOCTL_DEV
)

# Device nodes ordinary programs open for writing (`> /dev/null`, the terminal). When the
# filesystem part is on, they stay writable so that confining writes does not break the agent;
# none of them lets it change a file on disk.
STD_DEVICES: tuple[str, ...] = (
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
)


class LandlockError(Exception):
    """The requested Landlock domain cannot be enforced; the message says why and what to do."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the uapi header: 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


# Loaded once at import: restrict_self() runs in a freshly forked child, where dlopen() (which
# takes locks another thread of the parent may have held at fork time) is best avoided.
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int


def _call(nr: int, *args: object) -> int:
    ctypes.set_errno(0)
    ret = _syscall(ctypes.c_long(nr), *args)
    if ret < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return int(ret)


def abi() -> int:
    """The highest Landlock ABI version this kernel supports; 0 when Landlock is unavailable."""
    return kernelenv.landlock_abi()


def write_accesses(version: int) -> int:
    """Every filesystem right that writes, for Landlock ABI `version`."""
    mask = _WRITE_ABI1
    if version >= 2:
        mask |= ACCESS_FS_REFER
    if version >= 3:
        mask |= ACCESS_FS_TRUNCATE
    if version >= 5:
        mask |= ACCESS_FS_IOCTL_DEV
    return mask


def _has_cap_sys_admin() -> bool:
    return bool(kernelenv.effective_capabilities() & (1 << kernelenv.CAPABILITIES["CAP_SYS_ADMIN"]))


def _beneath(path: str, top: str) -> bool:
    """Whether `path` is `top` or inside it (both absolute and normalized)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def _add_rule(ruleset_fd: int, fd: int, path: str, access: int) -> None:
    # A rule on a non-directory may only carry file rights.
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        access &= _FILE_ACCESSES
    attr = _PathBeneathAttr(allowed_access=access, parent_fd=fd)
    try:
        _call(
            _SYS_LANDLOCK_ADD_RULE,
            ctypes.c_int(ruleset_fd),
            ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH),
            ctypes.byref(attr),
            ctypes.c_uint32(0),
        )
    except OSError as e:
        raise LandlockError(f"cannot add a Landlock rule for {path!r}: {e.strerror}") from e


def _add_path_rule(ruleset_fd: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise LandlockError(f"writable root {path!r} cannot be opened: {e.strerror}") from e
    try:
        _add_rule(ruleset_fd, fd, path, access)
    finally:
        os.close(fd)


def _grant_all_but(ruleset_fd: int, top: str, denied: list[str], access: int) -> int:
    """Rules that grant `access` everywhere beneath the directory `top` except beneath the
    `denied` paths (each strictly inside `top`); how many rules were added.

    Each entry of `top` is opened relative to its directory and without following links, so
    what gets a rule is what was listed."""
    added = 0
    try:
        dir_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise LandlockError(f"cannot list {top!r} to build the write rules: {e.strerror}") from e
    try:
        for name in sorted(os.listdir(dir_fd)):
            path = os.path.join(top, name)
            if path in denied:
                continue
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # removed while we listed
            except OSError as e:
                raise LandlockError(f"cannot open {path!r}: {e.strerror}") from e
            try:
                mode = os.fstat(fd).st_mode
                if stat.S_ISLNK(mode):
                    continue  # judged by where it points
                inside = [d for d in denied if _beneath(d, path)]
                if inside and stat.S_ISDIR(mode):
                    added += _grant_all_but(ruleset_fd, path, inside, access)
                else:
                    _add_rule(ruleset_fd, fd, path, access)
                    added += 1
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)
    return added


def _real(path: str) -> str:
    return os.path.realpath(os.path.normpath(path))


class Ruleset:
    """A Landlock ruleset, built (``build``) in the launcher and enforced (``enforce``) in the
    forked child; its fd is close-on-exec, so the agent never holds it."""

    def __init__(self, fd: int, version: int, handled_fs: int, rules: int) -> None:
        self.fd = fd
        self.version = version
        self.handled_fs = handled_fs
        self.rules = rules  # how many filesystem rules it holds

    @classmethod
    def build(
        cls,
        scope_signals: bool = True,
        scope_abstract_unix: bool = True,
        writable: list[str] | None = None,
        *,
        deny_writes: list[str] | tuple[str, ...] = (),
        deny_reads: list[str] | tuple[str, ...] = (),
        std_devices: bool = True,
    ) -> Ruleset:
        """A ruleset that scopes signals and abstract unix sockets (as asked), and, when
        `writable` is given or `deny_writes` is not empty, handles every write access of the
        running ABI:

        - writes are granted beneath the `writable` roots (all of `/` when None), plus
          STD_DEVICES when `writable` is given and `std_devices`;
        - never beneath a `deny_writes` path, even inside a writable root (the roots around it
          are split, see the module docstring). A writable root at or inside a denied path is
          an error: it could only be honoured by breaking the denial;
        - with `deny_reads`, reading files is handled too: granted everywhere but beneath those
          paths (the monitor's keys), split the same way.

        Raises LandlockError when the kernel's ABI is too old for what was asked, or a rule
        cannot be built (the message names the root)."""
        fs = writable is not None or bool(deny_writes) or bool(deny_reads)
        if not (scope_signals or scope_abstract_unix or fs):
            raise LandlockError("nothing to restrict: ask for a scope or a list of writable roots")
        version = abi()
        if version == 0:
            raise LandlockError(
                "Landlock is not available on this kernel (needs CONFIG_SECURITY_LANDLOCK=y and "
                "'landlock' in the lsm= boot parameter, Linux 5.13+)"
            )
        scoped = 0
        if scope_abstract_unix:
            scoped |= SCOPE_ABSTRACT_UNIX_SOCKET
        if scope_signals:
            scoped |= SCOPE_SIGNAL
        if scoped and version < 6:
            raise LandlockError(
                f"signal and abstract-unix-socket scoping need Landlock ABI 6 (Linux 6.12+); "
                f"this kernel has ABI {version}: upgrade the kernel, or run without scoping"
            )
        denied = sorted({_real(d) for d in deny_writes})
        roots = ["/"] if writable is None else list(writable)
        for root in roots:
            real = _real(root)
            for d in denied:
                if _beneath(real, d):
                    raise LandlockError(
                        f"writable root {root!r} is inside {d}, which the agent may never write "
                        "to (the monitor's own): remove it from writable"
                    )
        writes = write_accesses(version) if fs else 0
        handled_fs = writes | (ACCESS_FS_READ_FILE if deny_reads else 0)
        unreadable = sorted({_real(d) for d in deny_reads})

        attr = _RulesetAttr(handled_access_fs=handled_fs, handled_access_net=0, scoped=scoped)
        # Pass the size that covers the fields we set (24 bytes with `scoped`, 8 with only the
        # filesystem part), so a filesystem-only request also works on kernels before ABI 4/6,
        # whose struct is shorter.
        size = ctypes.sizeof(_RulesetAttr) if scoped else _RulesetAttr.handled_access_net.offset
        try:
            ruleset_fd = _call(
                _SYS_LANDLOCK_CREATE_RULESET,
                ctypes.byref(attr),
                ctypes.c_size_t(size),
                ctypes.c_uint32(0),
            )
        except OSError as e:
            raise LandlockError(f"cannot create a Landlock ruleset: {e.strerror}") from e
        rules = 0
        try:
            if fs:
                for root in roots:
                    real = _real(root)
                    inside = [d for d in denied if _beneath(d, real)]
                    if inside and os.path.isdir(real):
                        rules += _grant_all_but(ruleset_fd, real, inside, writes)
                    else:
                        _add_path_rule(ruleset_fd, root, writes)
                        rules += 1
                if unreadable:
                    rules += _grant_all_but(ruleset_fd, "/", unreadable, ACCESS_FS_READ_FILE)
                if writable is not None and std_devices:
                    device = handled_fs & (
                        ACCESS_FS_WRITE_FILE | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV
                    )
                    for path in STD_DEVICES:
                        if os.path.exists(path):
                            _add_path_rule(ruleset_fd, path, device)
                            rules += 1
        except BaseException:
            os.close(ruleset_fd)
            raise
        return cls(ruleset_fd, version, handled_fs, rules)

    def enforce(self, no_new_privs: bool | None = None) -> None:
        """Put the calling thread (and everything it later execs or forks) in the domain.

        no_new_privs: None (default) sets it only when the caller lacks CAP_SYS_ADMIN, which
        the kernel then requires. A root launcher leaves it off, so setuid programs the agent
        runs keep working. Irreversible; in a multi-threaded process it only restricts the
        calling thread. Closes the ruleset."""
        try:
            if no_new_privs is None:
                no_new_privs = not _has_cap_sys_admin()
            if no_new_privs and _prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                err = ctypes.get_errno()
                raise LandlockError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(err)}")
            try:
                _call(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(self.fd), ctypes.c_uint32(0))
            except OSError as e:
                hint = (
                    "the caller needs CAP_SYS_ADMIN or no_new_privs"
                    if e.errno == errno.EPERM
                    else "the domain could not be enforced"
                )
                raise LandlockError(f"landlock_restrict_self failed: {e.strerror} ({hint})") from e
        finally:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def restrict_self(
    scope_signals: bool = True,
    scope_abstract_unix: bool = True,
    writable: list[str] | None = None,
    *,
    deny_writes: list[str] | tuple[str, ...] = (),
    std_devices: bool = True,
    no_new_privs: bool | None = None,
) -> None:
    """Build a ruleset (``Ruleset.build``, same arguments) and enforce it on the calling
    thread at once.

    - scope_signals: no signal or ptrace to a process outside the domain (EPERM); the domain's
      own processes (the agent's children) can still be signalled. Needs ABI 6.
    - scope_abstract_unix: no connect to an abstract unix socket created outside the domain.
      Needs ABI 6.
    - writable / deny_writes: the filesystem part (see ``Ruleset.build``).

    Call it in a forked child; it is irreversible."""
    Ruleset.build(
        scope_signals,
        scope_abstract_unix,
        writable,
        deny_writes=deny_writes,
        std_devices=std_devices,
    ).enforce(no_new_privs)
