"""The kernel's facts in Python: the mirror of roguewatch.h and the probes' shared numbers.

Owns every number and layout user space shares with the probes, declared here once: the
record header (``struct rw_hdr``: ``HEADER``, its two parts ``VAR`` and ``IDENT`` and the
``V_*``/``I_*`` indexes of their fields), the event type numbers (``enum rw_type``:
``TYPE_NAMES``), the record flags (``RW_F_*``: ``F_*``), the value of the session map
(``struct rw_proc``: ``PROC``, ``P_OBSERVE``), the slots of the counters map
(``enum rw_counter``: ``Counter``), the adopted sessions' numbering (``ADOPTED_BASE``), the
argv limit, the kill calls, the egress allowlists' keys and values. tests/test_layout.py
reads the C and fails when the two sides differ: change both.

Then the bytes-to-fields step: one fixed header, then up to two strings. Each event type has
a small function that turns the header's generic slots (``a[0..3]``, the sockaddr bytes, the
strings) into the named fields of ``roguewatch.stream.events``. Paths come out as the process
gave them, with their dirfd; making them absolute is the collector's job.

It must not read /proc or keep state: that is ``roguewatch.stream.enrich``'s.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from enum import IntEnum

from roguewatch.core.identity import exec_id

# struct rw_hdr, field by field (name, struct code), in two parts. What changes per record:
VAR_FIELDS: tuple[tuple[str, str], ...] = (
    ("ts", "Q"), ("ret", "q"), ("tid", "I"), ("type", "H"), ("flags", "H"), ("a", "4Q"),
    ("addr", "28s"), ("len1", "H"), ("len2", "H"),
)  # fmt: skip
# The process's identity: the same bytes in every record of one process image (the
# collector caches on them).
IDENT_FIELDS: tuple[tuple[str, str], ...] = (
    ("session", "Q"), ("start_ns", "Q"), ("pstart_ns", "Q"), ("pid", "I"), ("ppid", "I"),
    ("uid", "I"), ("gid", "I"), ("comm", "16s"),
)  # fmt: skip
VAR = struct.Struct("<" + "".join(code for _, code in VAR_FIELDS))
IDENT = struct.Struct("<" + "".join(code for _, code in IDENT_FIELDS))
HEADER = struct.Struct("<" + VAR.format[1:] + IDENT.format[1:])
IDENT_OFF = VAR.size


def _offset(fields: tuple[tuple[str, str], ...], name: str) -> int:
    """Where a field starts (the structs have no padding: the test compiles them to check)."""
    names = [n for n, _ in fields]
    return struct.calcsize("<" + "".join(code for _, code in fields[: names.index(name)]))


TYPE_OFF = _offset(VAR_FIELDS, "type")  # offset of the u16 type
assert VAR.size == 88 and IDENT.size == 56 and HEADER.size == 144
_unpack_var = VAR.unpack_from
# Indexes into the VAR tuple (a[4] is four of them)
V_TS, V_RET, V_TID, V_TYPE, V_FLAGS, V_A0, V_A1, V_A2, V_A3, V_ADDR, V_LEN1, V_LEN2 = range(12)
# Indexes into the IDENT tuple
I_SESSION, I_START, I_PSTART, I_PID, I_PPID, I_UID, I_GID, I_COMM = range(8)

# enum rw_type, in order (index = the number the kernel writes).
TYPE_NAMES: tuple[str, ...] = (
    "",
    "fork", "exec", "exit",
    "connect", "sendto", "sendmsg", "socket", "bind", "listen",
    "open", "rename", "unlink", "link", "symlink", "chmod", "chown", "truncate", "utimes",
    "kill", "rt_sigaction", "setsid", "setpgid", "prctl", "task_rename", "ptrace",
    "unshare", "setns", "mount", "bpf", "module_load", "memfd_create", "chdir",
    "cgroup_attach", "target", "sigprocmask", "signal_sent", "setxattr",
    "repeats",
)  # fmt: skip
TYPE_NUMBERS = {name: i for i, name in enumerate(TYPE_NAMES) if name}

# Record flags (RW_F_* in roguewatch.h: bits of rw_hdr.flags)
F_GUARD = 1 << 0
F_ADOPTED = 1 << 1
F_THREAD = 1 << 2
F_TRUNC = 1 << 3
F_FDPATH = 1 << 4
F_DENIED = 1 << 5
F_KILLED = 1 << 6
F_UNTRACKED = 1 << 7

# struct rw_proc: the value of the `sessions` map (tgid -> this), written by user space for a
# session's root, inherited at fork. Its flags: F_ADOPTED, and P_OBSERVE (RW_P_OBSERVE).
PROC_FIELDS: tuple[tuple[str, str], ...] = (
    ("session", "Q"), ("start_ns", "Q"), ("pstart_ns", "Q"), ("ppid", "I"), ("flags", "I"),
)  # fmt: skip
PROC = struct.Struct("<" + "".join(code for _, code in PROC_FIELDS))
PROC_SESSION, PROC_START, PROC_PSTART, PROC_PPID, PROC_FLAGS = range(5)  # its tuple's indexes
P_OBSERVE = 1 << 8  # the session is in observe mode: the kernel never kills in it
P_TAINTED = 1 << 9  # joined the session by influence: a session process wrote into it
# Bits 16-23 of rw_proc.flags: the adoption policy an adopted process got at exec (the value of
# its adopt_uids/adopt_comms entry; 0: none), whose allowlist is owned by EGRESS_POLICY_BASE|it
P_POLICY_SHIFT = 16
P_POLICY_MASK = 0xFF
EGRESS_POLICY_BASE = 0xFFFF << 48


class Counter(IntEnum):
    """The slots of the `counters` map (enum rw_counter: RW_COUNTER_<name>)."""

    ADOPTED_NEXT = 0  # the next adopted session number
    PENDING_OVERFLOW = 1  # records lost to a full pending map or task storage
    UNTRACKED_FORKS = 2  # forks whose child could not be tracked (the session map was full)
    FOLDED = 3  # records folded into a `repeats` record (each counted once)
    BUDGET_DROPPED = 4  # records dropped over their session's budget (BUDGET_*)


# Session numbers: those the kernel adopts count up from ADOPTED_BASE (RW_SESSION_ADOPTED_BASE);
# those the collector's /proc scan adopts, from ADOPTED_PROCFS_BASE; ids drawn for `run` and
# `record` sessions stay below both (core.identity.new_session_id: 61 bits).
ADOPTED_BASE = 1 << 62
ADOPTED_PROCFS_BASE = ADOPTED_BASE | (1 << 61)

AT_FDCWD = -100  # RW_AT_FDCWD
MOUNT_UMOUNT, MOUNT_MOVE = 1, 2  # RW_MOUNT_UMOUNT, RW_MOUNT_MOVE: what a mount record is
# RW_ARGV_ARGS: the arguments (argv[0] included) an exec record carries at most
ARGV_ARGS = 20
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 1, 2, 10, 16, 17
FAMILY_NAMES = {AF_UNIX: "unix", AF_INET: "inet", AF_INET6: "inet6", AF_NETLINK: "netlink",
                AF_PACKET: "packet"}  # fmt: skip
SOCK_PROTO = {1: "tcp", 2: "udp", 3: "raw", 5: "seqpacket"}
# enum rw_kill_call, in order: what made a kill record (its a[3])
KILL_CALLS = ("kill", "tkill", "tgkill", "pidfd_send_signal", "generate")
# rt_sigprocmask's `how` (SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK), in order
SIGMASK_HOW = ("block", "unblock", "setmask")
# signal:signal_generate's result (enum trace_signal_result in the kernel), in order
SIGNAL_RESULTS = ("delivered", "ignored", "already_pending", "overflow_fail", "lose_info")
# enum rw_target_call, in order: what a `target` record's call reached in another process
TARGET_CALLS = (
    "prlimit64",
    "setpriority",
    "sched_setattr",
    "sched_setscheduler",
    "sched_setparam",
    "sched_setaffinity",
    "process_vm_writev",
    "process_vm_readv",
)

# Repeats folded in the kernel (roguewatch.h, "Repeats folded"): an identical record of one of
# FOLDABLE_TYPES from the same thread within FOLD_NS (RW_FOLD_NS) of the one sent is only
# counted; the count comes as a record of type REPEATS (not an event: the collector turns it
# into a copy of the event it repeats, with `repeats`): a[0] the folded type, a[1] the count,
# a[2] the ts of the record repeated, a[3] the first repeat's ts (its own ts: the last's).
# FOLD_KEY: struct rw_fold_key, the 128-bit SipHash key of the strings' comparison, which the
# loader writes at each load (the map fold_key).
FOLD_NS = 200_000_000
REPEATS = TYPE_NUMBERS["repeats"]
FOLDABLE_TYPES = frozenset(
    TYPE_NUMBERS[n] for n in ("open", "chmod", "chown", "truncate", "utimes", "setxattr",
                              "connect", "sendto", "sendmsg", "socket", "bind", "listen", "kill")
)  # fmt: skip
FOLD_KEY = struct.Struct("<QQ")
# Record types that are not events on the stream (the collector consumes them)
INTERNAL_TYPES = frozenset({REPEATS})
INTERNAL_TYPES_NAMES = frozenset(TYPE_NAMES[t] for t in INTERNAL_TYPES)

# RW_MAX_PROCS: the session map's size when the loader passes no other
MAX_PROCS = 65536

# Budgets per session (roguewatch.h, "Budgets per session"): a token bucket per session and
# tier that gives way (BUDGET_TIERS, in the order of RW_BUDGET_FILES, RW_BUDGET_SOCKETS).
# BUDGET_KEY: struct rw_budget_key (session, tier, pad), the key of the maps `budgets` (the
# buckets) and `budget_lost` (u64: records dropped over budget). BUDGET_CONF: struct
# rw_budget_conf (ns per token, 0: off; the burst in ns), the one entry of `budget_conf`,
# written by the loader. MAX_SESSIONS: RW_MAX_SESSIONS, sessions with a bucket when the
# loader passes no other (each map holds that many per tier).
BUDGET_TIERS = ("files", "sockets")
BUDGET_KEY = struct.Struct("<QII")
BUDGET_CONF = struct.Struct("<QQ")
MAX_SESSIONS = 4096
# RW_EVENTS_FD: the placeholder map fd by which the probes name the ring buffer, which the
# loader relocates to the `events` map
EVENTS_FD = 0x7EADBEE

# The egress allowlists (egress.bpf.c), written by user space. A key: struct rw_egress_key4
# or key6 (packed): EGRESS_KEY (the LPM prefix length: 64 bits of owner + the address prefix,
# then the owner: a session, or EGRESS_POLICY_BASE | an adoption policy), then the 4 or 16
# address bytes. A value: struct
# rw_egress_allow, up to RW_EGRESS_RANGES port ranges with their protocols, and their number.
EGRESS_RANGES = 8
EGRESS_KEY = struct.Struct("<IQ")
EGRESS_KEY_OWNER_OFF = struct.calcsize("<I")
EGRESS_KEY4_SIZE, EGRESS_KEY6_SIZE = EGRESS_KEY.size + 4, EGRESS_KEY.size + 16
EGRESS_ALLOW = struct.Struct(f"<{EGRESS_RANGES}H{EGRESS_RANGES}H{EGRESS_RANGES}BI")


class RecordError(ValueError):
    """A record that does not fit its layout (counted and dropped by the collector)."""


_ntop = socket.inet_ntop


def s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - 0x100000000 if v & 0x80000000 else v


def s64(v: int) -> int:
    v &= 0xFFFFFFFFFFFFFFFF
    return v - 0x10000000000000000 if v & 0x8000000000000000 else v


def _sockaddr(raw: bytes) -> tuple[str, str, int]:
    """(family, address, port) of a copied sockaddr."""
    fam = raw[0] | (raw[1] << 8)
    if fam == AF_INET:
        port = (raw[2] << 8) | raw[3]
        return "inet", _ntop(AF_INET, raw[4:8]), port
    if fam == AF_INET6:
        port = (raw[2] << 8) | raw[3]
        ip6 = ipaddress.IPv6Address(raw[8:24])
        mapped = ip6.ipv4_mapped  # (a dual-stack socket to an IPv4 host: said as one)
        return "inet6", f"::ffff:{mapped}" if mapped else str(ip6), port
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
    ev["family"], ev["addr"], ev["port"] = _sockaddr(h[V_ADDR])
    ev["proto"] = SOCK_PROTO.get(h[proto_slot] & 0xF, "") if proto_slot >= 0 else ""


def _fork(ev, h, s1, s2):
    ev["child_pid"] = h[V_A0]
    ev["clone_flags"] = h[V_A1]
    ev["thread"] = bool(h[V_FLAGS] & F_THREAD)
    ev["child_exec_id"] = "" if ev["thread"] else exec_id(h[V_A0], h[V_A2])


def _exec(ev, h, s1, s2):
    ev["filename"] = _cstr(s1)
    ev["argv"] = [a.decode(errors="surrogateescape") for a in s2.split(b"\0")[:-1]] if s2 else []


def _exit(ev, h, s1, s2):
    ev["code"] = h[V_A0] & 0xFF
    ev["signal"] = h[V_A1]


def _connect(ev, h, s1, s2):
    ev["fd"] = s32(h[V_A0])
    _net(ev, h, V_A1)


def _sendto(ev, h, s1, s2):
    ev["fd"] = s32(h[V_A0])
    _net(ev, h, V_A1)
    ev["len"] = h[V_A2]
    ev["msg_flags"] = h[V_A3]
    if s1:
        ev["dns_query"] = s1
        ev["dns_name"] = dns_name(s1)


def _sendmsg(ev, h, s1, s2):
    ev["fd"] = s32(h[V_A0])
    _net(ev, h, V_A1)
    ev["vlen"] = h[V_A2]
    if s1:
        ev["dns_query"] = s1
        ev["dns_name"] = dns_name(s1)


def _socket(ev, h, s1, s2):
    fam = h[V_A0]
    ev["family"] = FAMILY_NAMES.get(fam, str(fam))
    ev["sock_type"] = h[V_A1] & 0xF  # without SOCK_CLOEXEC / SOCK_NONBLOCK
    ev["protocol"] = h[V_A2]
    ev["proto"] = SOCK_PROTO.get(h[V_A1] & 0xF, "")


def _bind(ev, h, s1, s2):
    ev["fd"] = s32(h[V_A0])
    _net(ev, h, V_A1)


def _listen(ev, h, s1, s2):
    ev["fd"] = s32(h[V_A0])
    ev["backlog"] = s32(h[V_A1])
    ev["proto"] = SOCK_PROTO.get(h[V_A2] & 0xF, "")


def _path_at(ev, h, s1, s2):
    """Single-path file events: path relative to a0 (dirfd), or an fd with F_FDPATH."""
    if h[V_FLAGS] & F_FDPATH:
        ev["fd"] = s32(h[V_A0])
        ev["_path"] = None
    else:
        ev["dirfd"] = s32(h[V_A0])
        ev["_path"] = _cstr(s1)


def _open(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["open_flags"] = h[V_A1]
    ev["mode"] = h[V_A2]


def _two_paths(ev, h, s1, s2):
    ev["_path"] = _cstr(s1)
    ev["dirfd"] = s32(h[V_A0])
    ev["_source"] = _cstr(s2)
    ev["_source_dirfd"] = s32(h[V_A1])


def _rename(ev, h, s1, s2):
    _two_paths(ev, h, s1, s2)
    ev["rename_flags"] = h[V_A2]


def _link(ev, h, s1, s2):
    _two_paths(ev, h, s1, s2)


def _symlink(ev, h, s1, s2):
    ev["_path"] = _cstr(s1)
    ev["dirfd"] = s32(h[V_A0])
    ev["source"] = _cstr(s2)  # the link's text: never resolved


def _unlink(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["rmdir"] = bool(h[V_A1] & 0x200)


def _chmod(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["mode"] = h[V_A1]


def _chown(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["owner"] = s32(h[V_A1])
    ev["group"] = s32(h[V_A2])


def _truncate(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["length"] = h[V_A1]


def _utimes(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)
    ev["given"] = bool(h[V_A1])
    ev["time"] = s64(h[V_A2]) if h[V_A1] else 0


def _setxattr(ev, h, s1, s2):
    if h[V_FLAGS] & F_FDPATH:
        ev["fd"] = s32(h[V_A0])
        ev["_path"] = None
    else:
        ev["dirfd"] = s32(h[V_A0])
        ev["_path"] = _cstr(s1)
    ev["name"] = _cstr(s2)


def _kill(ev, h, s1, s2):
    # s32 inline: the hot type of the throughput benchmark and of signal storms
    ev["target"] = ((h[V_A0] + 0x80000000) & 0xFFFFFFFF) - 0x80000000
    ev["target_tid"] = ((h[V_A1] + 0x80000000) & 0xFFFFFFFF) - 0x80000000
    ev["sig"] = h[V_A2]
    ev["call"] = KILL_CALLS[h[V_A3]] if h[V_A3] < len(KILL_CALLS) else str(h[V_A3])
    # The target's comm, filled in the kernel when the signal was generated (else empty).
    a = h[V_ADDR]
    if a[0]:
        n = a.find(0, 0, 16)
        ev["target_comm"] = a[: n if n >= 0 else 16].decode(errors="replace")
    else:
        ev["target_comm"] = ""


def _sigaction(ev, h, s1, s2):
    ev["sig"] = h[V_A0]
    ev["handler"] = {0: "SIG_DFL", 1: "SIG_IGN"}.get(h[V_A1], "handler")


def _sigprocmask(ev, h, s1, s2):
    ev["how"] = SIGMASK_HOW[h[V_A0]] if h[V_A0] < len(SIGMASK_HOW) else str(h[V_A0])
    ev["mask"] = h[V_A1]


def _signal_sent(ev, h, s1, s2):
    ev["target"] = s32(h[V_A0])
    ev["sig"] = h[V_A1]
    r = s32(h[V_A2])
    ev["result"] = SIGNAL_RESULTS[r] if 0 <= r < len(SIGNAL_RESULTS) else str(r)
    ev["target_session"] = h[V_A3]


def _setsid(ev, h, s1, s2):
    pass


def _setpgid(ev, h, s1, s2):
    ev["target"] = s32(h[V_A0])
    ev["pgid"] = s32(h[V_A1])


def _prctl(ev, h, s1, s2):
    ev["option"] = h[V_A0]
    ev["arg2"] = h[V_A1]
    if s1:
        ev["name"] = _cstr(s1)


def _task_rename(ev, h, s1, s2):
    ev["oldcomm"] = _cstr(s1)
    ev["newcomm"] = _cstr(s2)


def _ptrace(ev, h, s1, s2):
    ev["request"] = h[V_A0]
    ev["target"] = s32(h[V_A1])


def _unshare(ev, h, s1, s2):
    ev["ns_flags"] = h[V_A0]


def _setns(ev, h, s1, s2):
    ev["fd"] = s32(h[V_A0])
    ev["nstype"] = h[V_A1]


def _mount(ev, h, s1, s2):
    ev["mount_flags"] = h[V_A0]
    ev["umount"] = h[V_A1] == MOUNT_UMOUNT
    ev["move"] = h[V_A1] == MOUNT_MOVE
    ev["target"] = _cstr(s1)
    ev["source"] = _cstr(s2)
    ev["fstype"] = "" if ev["move"] else _cstr(h[V_ADDR])
    ev["dirfd"] = s32(h[V_A2]) if ev["move"] else AT_FDCWD


def _bpf(ev, h, s1, s2):
    ev["cmd"] = h[V_A0]


def _module(ev, h, s1, s2):
    ev["call"] = "finit_module" if h[V_A0] else "init_module"
    ev["fd"] = s32(h[V_A1])
    ev["params"] = _cstr(s1)


def _memfd(ev, h, s1, s2):
    ev["memfd_flags"] = h[V_A0]
    ev["name"] = _cstr(s1)


def _chdir(ev, h, s1, s2):
    _path_at(ev, h, s1, s2)


def _cgroup_attach(ev, h, s1, s2):
    ev["target"] = h[V_A0]
    ev["cgroup_id"] = h[V_A1]
    ev["level"] = h[V_A2] & 0xFFFFFFFF
    ev["hierarchy"] = h[V_A2] >> 32
    ev["target_session"] = h[V_A3]
    ev["cgroup"] = _cstr(s1)


def _target(ev, h, s1, s2):
    ev["target"] = h[V_A0]
    ev["call"] = TARGET_CALLS[h[V_A1]] if h[V_A1] < len(TARGET_CALLS) else str(h[V_A1])
    ev["tainted"] = bool(h[V_A2])


def _repeats(ev, h, s1, s2):
    ev["of"] = h[V_A0]  # the folded type's number
    ev["repeats"] = h[V_A1]
    ev["_repeated_ts"] = h[V_A2]  # boot-time ns of the record repeated (how it is found)
    ev["first_ts"] = h[V_A3]  # boot-time ns here: the collector makes both wall-clock
    ev["last_ts"] = h[V_TS]


BUILDERS: dict[int, Builder] = {
    TYPE_NUMBERS[name]: fn
    for name, fn in {
        "fork": _fork, "exec": _exec, "exit": _exit, "connect": _connect, "sendto": _sendto,
        "sendmsg": _sendmsg, "socket": _socket, "bind": _bind, "listen": _listen,
        "open": _open, "rename": _rename, "unlink": _unlink, "link": _link,
        "symlink": _symlink, "chmod": _chmod, "chown": _chown, "truncate": _truncate,
        "utimes": _utimes, "setxattr": _setxattr, "kill": _kill, "rt_sigaction": _sigaction,
        "setsid": _setsid,
        "setpgid": _setpgid, "prctl": _prctl, "task_rename": _task_rename, "ptrace": _ptrace,
        "unshare": _unshare, "setns": _setns, "mount": _mount, "bpf": _bpf,
        "module_load": _module, "memfd_create": _memfd, "chdir": _chdir,
        "cgroup_attach": _cgroup_attach, "target": _target,
        "sigprocmask": _sigprocmask, "signal_sent": _signal_sent, "repeats": _repeats,
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
