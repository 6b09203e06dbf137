"""Record layouts written by the probes (mirror of ``struct rw_hdr`` in roguewatch.h).

Owns the bytes-to-fields step only: one fixed header (``HEADER``), then up to two strings.
Each event type has a small function that turns the header's generic slots (``a[0..3]``, the
sockaddr bytes, the strings) into the named fields of ``roguewatch.stream.events``. Paths come out
as the process gave them, with their dirfd; making them absolute is the collector's job.
Change a layout here and in roguewatch.h together.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable

# struct rw_hdr, in two parts. What changes per record: ts ret tid type flags a[4] addr[28]
# len1 len2. The process's identity: session start_ns pstart_ns pid ppid uid gid comm, the
# same bytes in every record of one process image (the collector caches on them).
VAR = struct.Struct("<qqIHH4Q28sHH")
IDENT = struct.Struct("<QQQIIII16s")
IDENT_OFF = VAR.size
TYPE_OFF = 20  # offset of the u16 type
HEADER = struct.Struct("<qqIHH4Q28sHHQQQIIII16s")
assert VAR.size == 88 and IDENT.size == 56 and HEADER.size == 144
_unpack_var = VAR.unpack_from
# Indexes into the VAR tuple
V_TS, V_RET, V_TID, V_TYPE, V_FLAGS, V_A0, V_A1, V_A2, V_A3, V_ADDR, V_LEN1, V_LEN2 = range(12)

# enum rw_type, in order (index = the number the kernel writes).
TYPE_NAMES: tuple[str, ...] = (
    "",
    "fork", "exec", "exit",
    "connect", "sendto", "sendmsg", "socket", "bind", "listen",
    "open", "rename", "unlink", "link", "symlink", "chmod", "chown", "truncate", "utimes",
    "kill", "rt_sigaction", "setsid", "setpgid", "prctl", "task_rename", "ptrace",
    "unshare", "setns", "mount", "bpf", "module_load", "memfd_create", "chdir",
)  # fmt: skip
TYPE_NUMBERS = {name: i for i, name in enumerate(TYPE_NAMES) if name}

# Record flags (RW_F_* in roguewatch.h)
F_GUARD = 1 << 0
F_ADOPTED = 1 << 1
F_THREAD = 1 << 2
F_TRUNC = 1 << 3
F_FDPATH = 1 << 4
F_DENIED = 1 << 5
F_KILLED = 1 << 6
F_UNTRACKED = 1 << 7

AT_FDCWD = -100
# RW_ARGV_ARGS: the arguments (argv[0] included) an exec record carries at most
ARGV_ARGS = 20
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 1, 2, 10, 16, 17
FAMILY_NAMES = {AF_UNIX: "unix", AF_INET: "inet", AF_INET6: "inet6", AF_NETLINK: "netlink",
                AF_PACKET: "packet"}  # fmt: skip
SOCK_PROTO = {1: "tcp", 2: "udp", 3: "raw", 5: "seqpacket"}
KILL_CALLS = ("kill", "tkill", "tgkill", "pidfd_send_signal", "generate")


class RecordError(ValueError):
    """A record that does not fit its layout (counted and dropped by the collector)."""


_ntop = socket.inet_ntop


def s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - 0x100000000 if v & 0x80000000 else v


def _sockaddr(raw: bytes) -> tuple[str, str, int]:
    """(family, address, port) of a copied sockaddr."""
    fam = raw[0] | (raw[1] << 8)
    if fam == AF_INET:
        port = (raw[2] << 8) | raw[3]
        return "inet", _ntop(AF_INET, raw[4:8]), port
    if fam == AF_INET6:
        port = (raw[2] << 8) | raw[3]
        return "inet6", str(ipaddress.IPv6Address(raw[8:24])), port
    if fam == AF_UNIX:
        path = raw[2:]
        if path[:1] == b"\0":  # abstract socket
            return "unix", "@" + path[1:].split(b"\0", 1)[0].decode(errors="replace"), 0
        return "unix", path.split(b"\0", 1)[0].decode(errors="replace"), 0
    return FAMILY_NAMES.get(fam, str(fam)), "", 0


def dns_name(query: bytes) -> str:
    """The first question's name of a DNS message (the 2-byte TCP length prefix is skipped)."""
    for start in (12, 14):
        labels, i = [], start
        while i < len(query):
            n = query[i]
            if n == 0:
                if labels:
                    return ".".join(labels)
                break
            if n & 0xC0 or i + 1 + n > len(query):
                break
            labels.append(query[i + 1 : i + 1 + n].decode("ascii", errors="replace"))
            i += 1 + n
    return ""


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode(errors="surrogateescape")


# Each builder gets the header tuple h, the two strings' bytes, and fills ev.
Builder = Callable[[dict, tuple, bytes, bytes], None]


def _net(ev: dict, h: tuple, proto_slot: int) -> None:
    ev["family"], ev["addr"], ev["port"] = _sockaddr(h[9])
    ev["proto"] = SOCK_PROTO.get(h[proto_slot] & 0xF, "") if proto_slot >= 0 else ""


def _fork(ev, h, s1, s2):
    ev["child_pid"] = h[5]
    ev["clone_flags"] = h[6]
    ev["thread"] = bool(h[4] & F_THREAD)
    ev["child_exec_id"] = "" if ev["thread"] else f"{h[5]}-{h[7]}"


def _exec(ev, h, s1, s2):
    ev["filename"] = _cstr(s1)
    ev["argv"] = [a.decode(errors="surrogateescape") for a in s2.split(b"\0")[:-1]] if s2 else []


def _exit(ev, h, s1, s2):
    ev["code"] = h[5] & 0xFF
    ev["signal"] = h[6]


def _connect(ev, h, s1, s2):
    ev["fd"] = s32(h[5])
    _net(ev, h, V_A1)


def _sendto(ev, h, s1, s2):
    ev["fd"] = s32(h[5])
    _net(ev, h, V_A1)
    ev["len"] = h[7]
    ev["msg_flags"] = h[8]
    if s1:
        ev["dns_query"] = s1
        ev["dns_name"] = dns_name(s1)


def _sendmsg(ev, h, s1, s2):
    ev["fd"] = s32(h[5])
    _net(ev, h, V_A1)
    ev["vlen"] = h[7]
    if s1:
        ev["dns_query"] = s1
        ev["dns_name"] = dns_name(s1)


def _socket(ev, h, s1, s2):
    fam = h[5]
    ev["family"] = FAMILY_NAMES.get(fam, str(fam))
    ev["sock_type"] = h[6] & 0xF  # without SOCK_CLOEXEC / SOCK_NONBLOCK
    ev["protocol"] = h[7]
    ev["proto"] = SOCK_PROTO.get(h[6] & 0xF, "")


def _bind(ev, h, s1, s2):
    ev["fd"] = s32(h[5])
    _net(ev, h, V_A1)


def _listen(ev, h, s1, s2):
    ev["fd"] = s32(h[5])
    ev["backlog"] = s32(h[6])
    ev["proto"] = SOCK_PROTO.get(h[7] & 0xF, "")


def _path_at(ev, h, s1, s2):
    """Single-path file events: path relative to a0 (dirfd), or an fd with F_FDPATH."""
    if h[4] & F_FDPATH:
        ev["fd"] = s32(h[5])
        ev["_path"] = None
    else:
        ev["dirfd"] = s32(h[5])
        ev["_path"] = _cstr(s1)


def _open(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["open_flags"] = h[6]
    ev["mode"] = h[7]


def _two_paths(ev, h, s1, s2):
    ev["_path"] = _cstr(s1)
    ev["dirfd"] = s32(h[5])
    ev["_source"] = _cstr(s2)
    ev["_source_dirfd"] = s32(h[6])


def _rename(ev, h, s1, s2):
    _two_paths(ev, h, s1, s2)
    ev["rename_flags"] = h[7]


def _link(ev, h, s1, s2):
    _two_paths(ev, h, s1, s2)


def _symlink(ev, h, s1, s2):
    ev["_path"] = _cstr(s1)
    ev["dirfd"] = s32(h[5])
    ev["source"] = _cstr(s2)  # the link's text: never resolved


def _unlink(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["rmdir"] = bool(h[6] & 0x200)


def _chmod(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["mode"] = h[6]


def _chown(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["owner"] = s32(h[6])
    ev["group"] = s32(h[7])


def _truncate(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["length"] = h[6]


def _utimes(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)


def _kill(ev, h, s1, s2):
    # s32 inline: the hot type of the throughput benchmark and of signal storms
    ev["target"] = ((h[5] + 0x80000000) & 0xFFFFFFFF) - 0x80000000
    ev["target_tid"] = ((h[6] + 0x80000000) & 0xFFFFFFFF) - 0x80000000
    ev["sig"] = h[7]
    ev["call"] = KILL_CALLS[h[8]] if h[8] < len(KILL_CALLS) else str(h[8])


def _sigaction(ev, h, s1, s2):
    ev["sig"] = h[5]
    ev["handler"] = {0: "SIG_DFL", 1: "SIG_IGN"}.get(h[6], "handler")


def _setsid(ev, h, s1, s2):
    pass


def _setpgid(ev, h, s1, s2):
    ev["target"] = s32(h[5])
    ev["pgid"] = s32(h[6])


def _prctl(ev, h, s1, s2):
    ev["option"] = h[5]
    ev["arg2"] = h[6]
    if s1:
        ev["name"] = _cstr(s1)


def _task_rename(ev, h, s1, s2):
    ev["oldcomm"] = _cstr(s1)
    ev["newcomm"] = _cstr(s2)


def _ptrace(ev, h, s1, s2):
    ev["request"] = h[5]
    ev["target"] = s32(h[6])


def _unshare(ev, h, s1, s2):
    ev["ns_flags"] = h[5]


def _setns(ev, h, s1, s2):
    ev["fd"] = s32(h[5])
    ev["nstype"] = h[6]


def _mount(ev, h, s1, s2):
    ev["mount_flags"] = h[5]
    ev["umount"] = bool(h[6])
    ev["target"] = _cstr(s1)
    ev["source"] = _cstr(s2)
    ev["fstype"] = _cstr(h[9])


def _bpf(ev, h, s1, s2):
    ev["cmd"] = h[5]


def _module(ev, h, s1, s2):
    ev["call"] = "finit_module" if h[5] else "init_module"
    ev["fd"] = s32(h[6])
    ev["params"] = _cstr(s1)


def _memfd(ev, h, s1, s2):
    ev["memfd_flags"] = h[5]
    ev["name"] = _cstr(s1)


def _chdir(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)


BUILDERS: dict[int, Builder] = {
    TYPE_NUMBERS[name]: fn
    for name, fn in {
        "fork": _fork, "exec": _exec, "exit": _exit, "connect": _connect, "sendto": _sendto,
        "sendmsg": _sendmsg, "socket": _socket, "bind": _bind, "listen": _listen,
        "open": _open, "rename": _rename, "unlink": _unlink, "link": _link,
        "symlink": _symlink, "chmod": _chmod, "chown": _chown, "truncate": _truncate,
        "utimes": _utimes, "kill": _kill, "rt_sigaction": _sigaction, "setsid": _setsid,
        "setpgid": _setpgid, "prctl": _prctl, "task_rename": _task_rename, "ptrace": _ptrace,
        "unshare": _unshare, "setns": _setns, "mount": _mount, "bpf": _bpf,
        "module_load": _module, "memfd_create": _memfd, "chdir": _chdir,
    }.items()
}  # fmt: skip

_FLAG_NAMES = (
    (F_GUARD, "guard"), (F_ADOPTED, "adopted"), (F_TRUNC, "truncated"), (F_DENIED, "denied"),
    (F_KILLED, "killed"), (F_UNTRACKED, "untracked"),
)  # fmt: skip


def flag_names(fl: int) -> list[str]:
    return [n for bit, n in _FLAG_NAMES if fl & bit]


# The flags field of every combination of the named bits, computed once.
FLAGS: tuple[tuple[str, ...], ...] = tuple(tuple(flag_names(i)) for i in range(256))


def strings(buf, off: int, length: int, h: tuple) -> tuple[bytes, bytes]:
    """The record's two strings; raises RecordError when they run past the record."""
    len1, len2 = h[V_LEN1], h[V_LEN2]
    if not len1 and not len2:
        return b"", b""
    if HEADER.size + len1 + len2 > length:
        raise RecordError("strings run past the record")
    start = off + HEADER.size
    return buf[start : start + len1], buf[start + len1 : start + len1 + len2]


def parse(buf, off: int, length: int) -> tuple[tuple, Builder, bytes, bytes]:
    """One record → (its VAR tuple, its type's builder, its two strings), checked.

    Raises RecordError for a record that does not fit its layout (the collector counts and
    drops it). The identity block (IDENT) is the caller's to read: it is cached."""
    if length < HEADER.size:
        raise RecordError(f"record of {length} bytes is shorter than its header")
    h = _unpack_var(buf, off)
    build = BUILDERS.get(h[V_TYPE])
    if build is None:
        raise RecordError(f"unknown event type {h[V_TYPE]}")
    if h[V_LEN1] or h[V_LEN2]:
        return h, build, *strings(buf, off, length, h)
    return h, build, b"", b""
