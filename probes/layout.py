"""Record layouts written by the probes (mirror of ``struct rw_hdr`` in roguewatch.h).

Owns the bytes-to-fields step only: one fixed header (``HEADER``), then up to two strings.
Each event type has a small function that turns the header's generic slots (``a[0..3]``, the
sockaddr bytes, the strings) into the named fields of ``roguewatch.events``. Paths come out
as the process gave them, with their dirfd; making them absolute is the collector's job.
Change a layout here and in roguewatch.h together.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable

# struct rw_hdr: ts session start_ns pstart_ns pid tid ppid uid gid type flags comm ret a[4]
#                addr[28] len1 len2
HEADER = struct.Struct("<QQQQIIIIIHH16sq4Q28sHH")
assert HEADER.size == 144

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

AT_FDCWD = -100
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 1, 2, 10, 16, 17
FAMILY_NAMES = {AF_UNIX: "unix", AF_INET: "inet", AF_INET6: "inet6", AF_NETLINK: "netlink",
                AF_PACKET: "packet"}  # fmt: skip
SOCK_PROTO = {1: "tcp", 2: "udp", 3: "raw", 5: "seqpacket"}
KILL_CALLS = ("kill", "tkill", "tgkill", "pidfd_send_signal", "generate")


class RecordError(ValueError):
    """A record that does not fit its layout (counted and dropped by the collector)."""


def s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - 0x100000000 if v & 0x80000000 else v


def _sockaddr(raw: bytes) -> tuple[str, str, int]:
    """(family, address, port) of a copied sockaddr."""
    fam = raw[0] | (raw[1] << 8)
    if fam == AF_INET:
        port = (raw[2] << 8) | raw[3]
        return "inet", str(ipaddress.IPv4Address(raw[4:8])), port
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
    ev["family"], ev["addr"], ev["port"] = _sockaddr(h[17])
    ev["proto"] = SOCK_PROTO.get(h[proto_slot] & 0xF, "") if proto_slot >= 0 else ""


def _fork(ev, h, s1, s2):
    ev["child_pid"] = h[13]
    ev["clone_flags"] = h[14]
    ev["thread"] = bool(h[10] & F_THREAD)
    ev["child_exec_id"] = "" if ev["thread"] else f"{h[13]}-{h[15]}"


def _exec(ev, h, s1, s2):
    ev["filename"] = _cstr(s1)
    ev["argv"] = [a.decode(errors="surrogateescape") for a in s2.split(b"\0")[:-1]] if s2 else []


def _exit(ev, h, s1, s2):
    ev["code"] = h[13] & 0xFF
    ev["signal"] = h[14]


def _connect(ev, h, s1, s2):
    ev["fd"] = s32(h[13])
    _net(ev, h, 14)


def _sendto(ev, h, s1, s2):
    ev["fd"] = s32(h[13])
    _net(ev, h, 14)
    ev["len"] = h[15]
    ev["msg_flags"] = h[16]
    if s1:
        ev["dns_query"] = s1
        ev["dns_name"] = dns_name(s1)


def _sendmsg(ev, h, s1, s2):
    ev["fd"] = s32(h[13])
    _net(ev, h, 14)
    ev["vlen"] = h[15]
    if s1:
        ev["dns_query"] = s1
        ev["dns_name"] = dns_name(s1)


def _socket(ev, h, s1, s2):
    fam = h[13]
    ev["family"] = FAMILY_NAMES.get(fam, str(fam))
    ev["sock_type"] = h[14] & 0xF  # without SOCK_CLOEXEC / SOCK_NONBLOCK
    ev["protocol"] = h[15]
    ev["proto"] = SOCK_PROTO.get(h[14] & 0xF, "")


def _bind(ev, h, s1, s2):
    ev["fd"] = s32(h[13])
    _net(ev, h, 14)


def _listen(ev, h, s1, s2):
    ev["fd"] = s32(h[13])
    ev["backlog"] = s32(h[14])
    ev["proto"] = SOCK_PROTO.get(h[15] & 0xF, "")


def _path_at(ev, h, s1, s2):
    """Single-path file events: path relative to a0 (dirfd), or an fd with F_FDPATH."""
    if h[10] & F_FDPATH:
        ev["fd"] = s32(h[13])
        ev["_path"] = None
    else:
        ev["dirfd"] = s32(h[13])
        ev["_path"] = _cstr(s1)


def _open(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["open_flags"] = h[14]
    ev["mode"] = h[15]


def _two_paths(ev, h, s1, s2):
    ev["_path"] = _cstr(s1)
    ev["dirfd"] = s32(h[13])
    ev["_source"] = _cstr(s2)
    ev["_source_dirfd"] = s32(h[14])


def _rename(ev, h, s1, s2):
    _two_paths(ev, h, s1, s2)
    ev["rename_flags"] = h[15]


def _link(ev, h, s1, s2):
    _two_paths(ev, h, s1, s2)


def _symlink(ev, h, s1, s2):
    ev["_path"] = _cstr(s1)
    ev["dirfd"] = s32(h[13])
    ev["source"] = _cstr(s2)  # the link's text: never resolved


def _unlink(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["rmdir"] = bool(h[14] & 0x200)


def _chmod(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["mode"] = h[14]


def _chown(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["owner"] = s32(h[14])
    ev["group"] = s32(h[15])


def _truncate(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["length"] = h[14]


def _utimes(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)


def _kill(ev, h, s1, s2):
    ev["target"] = s32(h[13])
    ev["target_tid"] = s32(h[14])
    ev["sig"] = h[15]
    ev["call"] = KILL_CALLS[h[16]] if h[16] < len(KILL_CALLS) else str(h[16])


def _sigaction(ev, h, s1, s2):
    ev["sig"] = h[13]
    ev["handler"] = {0: "SIG_DFL", 1: "SIG_IGN"}.get(h[14], "handler")


def _setsid(ev, h, s1, s2):
    pass


def _setpgid(ev, h, s1, s2):
    ev["target"] = s32(h[13])
    ev["pgid"] = s32(h[14])


def _prctl(ev, h, s1, s2):
    ev["option"] = h[13]
    ev["arg2"] = h[14]
    if s1:
        ev["name"] = _cstr(s1)


def _task_rename(ev, h, s1, s2):
    ev["oldcomm"] = _cstr(s1)
    ev["newcomm"] = _cstr(s2)


def _ptrace(ev, h, s1, s2):
    ev["request"] = h[13]
    ev["target"] = s32(h[14])


def _unshare(ev, h, s1, s2):
    ev["ns_flags"] = h[13]


def _setns(ev, h, s1, s2):
    ev["fd"] = s32(h[13])
    ev["nstype"] = h[14]


def _mount(ev, h, s1, s2):
    ev["mount_flags"] = h[13]
    ev["umount"] = bool(h[14])
    ev["target"] = _cstr(s1)
    ev["source"] = _cstr(s2)
    ev["fstype"] = _cstr(h[17])


def _bpf(ev, h, s1, s2):
    ev["cmd"] = h[13]


def _module(ev, h, s1, s2):
    ev["call"] = "finit_module" if h[13] else "init_module"
    ev["fd"] = s32(h[14])
    ev["params"] = _cstr(s1)


def _memfd(ev, h, s1, s2):
    ev["memfd_flags"] = h[13]
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
    (F_KILLED, "killed"),
)  # fmt: skip


def decode(buf, off: int, length: int) -> tuple[dict, tuple]:
    """One record → (event dict with kernel fields, the raw header tuple).

    Raises RecordError for a record that does not fit its layout.
    """
    if length < HEADER.size:
        raise RecordError(f"record of {length} bytes is shorter than its header")
    h = HEADER.unpack_from(buf, off)
    t = h[9]
    build = BUILDERS.get(t)
    if build is None:
        raise RecordError(f"unknown event type {t}")
    len1, len2 = h[18], h[19]
    if HEADER.size + len1 + len2 > length:
        raise RecordError("strings run past the record")
    start = off + HEADER.size
    s1 = buf[start : start + len1] if len1 else b""
    s2 = buf[start + len1 : start + len1 + len2] if len2 else b""
    fl = h[10]
    ev = {
        "type": TYPE_NAMES[t],
        "ts": h[0],
        "session": h[1],
        "pid": h[4],
        "tid": h[5],
        "ppid": h[6],
        "uid": h[7],
        "gid": h[8],
        "comm": h[11].split(b"\0", 1)[0].decode(errors="replace"),
        "ret": h[12],
        "flags": [n for bit, n in _FLAG_NAMES if fl & bit] if fl & 0x6B else [],
    }
    build(ev, h, s1, s2)
    return ev, h
