"""The event types of the roguewatch event stream and their fields.

This module owns the *vocabulary* of the stream: every event type, every field, its type and
what it means. The kernel record layouts live in ``roguewatch.probes.layout`` (beside the C
that writes them) and produce dictionaries with exactly these field names; ``docs/events.md``
is generated from the tables here (``python -m roguewatch.events --markdown``) and a test
keeps the two equal.

An event on the bus is a plain ``dict`` (msgpack map). It never holds Python objects, so any
msgpack or JSON consumer can read it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    doc: str


@dataclass(frozen=True)
class EventType:
    name: str
    doc: str
    fields: tuple[Field, ...] = ()
    syscalls: str = ""


# Fields present on every event that comes from the kernel.
COMMON_FIELDS: tuple[Field, ...] = (
    Field("type", "str", "the event type (a name from the table below)"),
    Field("ts", "int", "wall-clock time of the event, nanoseconds since the Unix epoch"),
    Field("session", "int", "session id of the process (0: not in a session, guard events only)"),
    Field("pid", "int", "process id (thread-group id) of the process that acted"),
    Field("tid", "int", "thread id that acted"),
    Field("ppid", "int", "parent process id (the parent at fork time, or from /proc)"),
    Field("uid", "int", "real user id"),
    Field("gid", "int", "real group id"),
    Field("comm", "str", "the task's comm (16 bytes; never identify a process by it alone)"),
    Field("ret", "int", "the syscall's result (negative errno on failure), where it matters"),
    Field(
        "exec_id",
        "str",
        "stable process identity: `pid-start` where start is the boot-relative nanosecond of the "
        "process's fork or last exec; a reused pid gets a new exec id",
    ),
    Field("pexec_id", "str", "exec id of the parent"),
    Field("exe", "str", "executable path of the process (from exec, or /proc/PID/exe)"),
    Field(
        "flags",
        "list[str]",
        "markers: `guard` (aimed at roguewatch, from any process), `procfs` (found by a /proc "
        "scan, not seen starting), `adopted` (tracked by an adoption selector), `truncated` "
        "(a string was cut at 4 KiB, or an exec's argv could not be read whole in the kernel: "
        "argv then comes from /proc/PID/cmdline), `unresolved` (a relative path could not be "
        "made absolute, or a truncated argv could not be completed: the process was gone), "
        "`denied` (refused in the kernel by the session's egress policy: nothing was sent; "
        "a connect or send made through io_uring, which has no syscall of its own, arrives "
        "as the egress program's record, with fd -1, up to a second later), "
        "`killed` (SIGKILLed in the kernel: for attacking roguewatch, or for a fork that "
        "the full session map could not track), `untracked` (a fork whose child could not be "
        "tracked: the session map was full)",
    ),
)

# Fields of a folded event only (see markdown(): "Repeats folded in the kernel").
FOLD_FIELDS: tuple[Field, ...] = (
    Field(
        "repeats",
        "int",
        "how many occurrences this event stands for (absent: 1). A folded event is a copy of the "
        "event before it from the same thread (every field the same but `ts`), standing for the "
        "identical calls the kernel counted after it instead of sending them; the first call "
        "came as that event. The rule field `evt.repeats` reads it (1 on unfolded events)",
    ),
    Field("first_ts", "int", "wall-clock time of the first call folded into this event (ns)"),
    Field("last_ts", "int", "wall-clock time of the last call folded into this event (ns; `ts`)"),
)

_PATH = Field("path", "str", "absolute path acted on (as given when `unresolved` is in flags)")
_ADDR = Field("addr", "str", "IP address (v4 or v6) or unix socket path")
_PORT = Field("port", "int", "port (0 when not an IP socket)")
_FAMILY = Field("family", "str", "`inet`, `inet6`, `unix`, `netlink`, `packet` or the number")
_PROTO = Field("proto", "str", "`tcp`, `udp`, `raw` or `` when the socket was not seen created")
_FD = Field("fd", "int", "file descriptor")
_DIRFD = Field("dirfd", "int", "directory fd the path is relative to (-100: the cwd)")

EVENT_TYPES: tuple[EventType, ...] = (
    EventType(
        "fork",
        "a tracked process created a process or thread; the child inherits the session",
        (
            Field("child_pid", "int", "pid (or tid for a thread) of the new task"),
            Field("clone_flags", "int", "clone flags (CLONE_NEW* namespace flags included)"),
            Field("thread", "bool", "the new task is a thread of the same process"),
            Field("child_exec_id", "str", "exec id of the child process"),
        ),
        "sched:sched_process_fork, clone/clone3 for flags",
    ),
    EventType(
        "exec",
        "a tracked process executed a program (also: a process adopted at exec by a selector)",
        (
            Field("filename", "str", "the program path given to execve"),
            Field("argv", "list[str]", "arguments as copied in the kernel (up to 20)"),
            Field("cmdline", "str", "full command line (argv joined by spaces)"),
            Field("cwd", "str", "working directory at exec"),
            Field("home", "str", "`$HOME` of the new image's environment (absent: unset)"),
            Field(
                "xdg_config_home",
                "str",
                "`$XDG_CONFIG_HOME` of the new image's environment (absent: unset)",
            ),
            Field("env_path", "str", "`$PATH` of the new image's environment (absent: unset)"),
        ),
        "sched:sched_process_exec, execve/execveat for argv; /proc/PID/environ",
    ),
    EventType(
        "exit",
        "a tracked process ended (its last thread exited)",
        (
            Field("code", "int", "exit status (0-255) when it exited normally"),
            Field("signal", "int", "the fatal signal when it was killed, else 0"),
        ),
        "sched:sched_process_exit, exit_group, signal:signal_deliver",
    ),
    EventType(
        "connect",
        "connect() to a destination",
        (_FD, _FAMILY, _ADDR, _PORT, _PROTO),
        "connect",
    ),
    EventType(
        "sendto",
        "sendto() with an explicit destination (unconnected UDP, TCP Fast Open), or to DNS",
        (
            _FD,
            _FAMILY,
            _ADDR,
            _PORT,
            _PROTO,
            Field("len", "int", "bytes asked to send"),
            Field("msg_flags", "int", "MSG_* flags (MSG_FASTOPEN is 0x20000000)"),
            Field("dns_query", "bytes", "the first bytes sent, for UDP/TCP to port 53"),
            Field("dns_name", "str", "the query name decoded from dns_query"),
        ),
        "sendto",
    ),
    EventType(
        "sendmsg",
        "sendmsg()/sendmmsg() with an explicit destination, or on a DNS socket",
        (
            _FD,
            _FAMILY,
            _ADDR,
            _PORT,
            _PROTO,
            Field("vlen", "int", "messages in a sendmmsg (1 for sendmsg)"),
            Field("dns_query", "bytes", "the first bytes of the first iovec, to port 53"),
            Field("dns_name", "str", "the query name decoded from dns_query"),
        ),
        "sendmsg, sendmmsg",
    ),
    EventType(
        "socket",
        "creation of a raw, packet or netlink socket",
        (
            _FAMILY,
            Field("sock_type", "int", "SOCK_* type (3: SOCK_RAW)"),
            Field("protocol", "int", "protocol number"),
            _PROTO,
        ),
        "socket",
    ),
    EventType("bind", "bind() to a local address", (_FD, _FAMILY, _ADDR, _PORT, _PROTO), "bind"),
    EventType(
        "listen",
        "listen() on a socket",
        (
            _FD,
            Field("backlog", "int", "listen backlog"),
            _FAMILY,
            _ADDR,
            _PORT,
        ),
        "listen (address from the socket's bind, when seen)",
    ),
    EventType(
        "open",
        "open that writes, creates or truncates (read-only opens are filtered in the kernel)",
        (
            _PATH,
            _DIRFD,
            Field("open_flags", "int", "O_* flags"),
            Field("mode", "int", "creation mode"),
        ),
        "open, openat, openat2, creat",
    ),
    EventType(
        "rename",
        "rename of `source` onto `path`",
        (
            Field("source", "str", "old path"),
            _PATH,
            Field("rename_flags", "int", "RENAME_* flags"),
        ),
        "rename, renameat, renameat2",
    ),
    EventType(
        "unlink",
        "removal of a file or directory",
        (_PATH, _DIRFD, Field("rmdir", "bool", "a directory was removed")),
        "unlink, unlinkat, rmdir",
    ),
    EventType(
        "link",
        "hard link `path` to the existing `source`",
        (Field("source", "str", "existing file"), _PATH),
        "link, linkat",
    ),
    EventType(
        "symlink",
        "symbolic link `path` pointing at `source`",
        (Field("source", "str", "link target, as written (not resolved)"), _PATH),
        "symlink, symlinkat",
    ),
    EventType(
        "chmod",
        "mode change",
        (_PATH, Field("mode", "int", "new mode")),
        "chmod, fchmod, fchmodat, fchmodat2",
    ),
    EventType(
        "chown",
        "owner change",
        (
            _PATH,
            Field("owner", "int", "new uid (-1: unchanged)"),
            Field("group", "int", "new gid (-1: unchanged)"),
        ),
        "chown, fchown, lchown, fchownat",
    ),
    EventType(
        "truncate",
        "truncation",
        (_PATH, Field("length", "int", "new length")),
        "truncate, ftruncate",
    ),
    EventType(
        "utimes",
        "timestamp change",
        (
            _PATH,
            Field("given", "bool", "a time was given (touch -d, a copy's times kept), not now"),
            Field(
                "time",
                "int",
                "the time given, seconds since the epoch (the mtime's, else "
                "the atime's; 0 when none was)",
            ),
        ),
        "utimensat, utimes, futimesat",
    ),
    EventType(
        "setxattr",
        "an extended attribute set (`security.capability`: a file capability, as setcap sets)",
        (
            _PATH,
            Field("name", "str", "the attribute's name (its value is not read)"),
        ),
        "setxattr, lsetxattr, fsetxattr, setxattrat",
    ),
    EventType(
        "kill",
        "a signal sent; with `guard` in flags, a user signal that reached a roguewatch process",
        (
            Field("target", "int", "target pid as given (negative: a process group)"),
            Field("target_tid", "int", "target thread for tgkill/tkill"),
            Field("sig", "int", "signal number"),
            Field("call", "str", "`kill`, `tkill`, `tgkill`, `pidfd_send_signal` or `generate`"),
            Field(
                "target_comm",
                "str",
                "the target's comm when the signal was generated (in the "
                "kernel, while it existed; empty when none was: a failed or signal-0 kill)",
            ),
        ),
        "kill, tkill, tgkill, pidfd_send_signal; signal:signal_generate for guard events",
    ),
    EventType(
        "rt_sigaction",
        "a disposition set for SIGHUP, SIGINT or SIGTERM",
        (
            Field("sig", "int", "signal number"),
            Field("handler", "str", "`SIG_DFL`, `SIG_IGN` or `handler`"),
        ),
        "rt_sigaction",
    ),
    EventType(
        "sigprocmask",
        "SIGHUP, SIGINT or SIGTERM blocked (rt_sigprocmask SIG_BLOCK or SIG_SETMASK); at most "
        "one a quarter second per process: what stands is `signal_state`'s to say",
        (
            Field("how", "str", "`block` or `setmask`"),
            Field("mask", "int", "the set given, signal N as bit N-1"),
        ),
        "rt_sigprocmask",
    ),
    EventType(
        "signal_sent",
        "SIGHUP, SIGINT or SIGTERM sent by a user task (tracked or not: the identity fields "
        "are the sender's, zero when untracked) to a process of a session: a shutdown "
        "attempted",
        (
            Field("target", "int", "pid the signal was sent to"),
            Field("sig", "int", "signal number"),
            Field(
                "result",
                "str",
                "the kernel's: `delivered` (queued: a blocked signal waits), `ignored` (its "
                "disposition is SIG_IGN: dropped), `already_pending`, `overflow_fail`, "
                "`lose_info`",
            ),
            Field("target_session", "int", "session of the target"),
        ),
        "signal:signal_generate",
    ),
    EventType(
        "signal_state",
        "what stands: SIGHUP, SIGINT or SIGTERM ignored (SIG_IGN) or blocked in every thread, "
        "read from /proc/PID/status a moment after the process changed them, a moment after "
        "an exec that inherited them, or when a termination signal was sent to it (made only "
        "when one of them is ignored or blocked); or a SIGTERM survived",
        (
            Field("ignored", "list[str]", "of SIGHUP, SIGINT, SIGTERM: those set to SIG_IGN"),
            Field(
                "blocked",
                "list[str]",
                "of SIGHUP, SIGINT, SIGTERM: those blocked by every "
                "thread (a signal sent to the process waits)",
            ),
            Field("caught", "list[str]", "of SIGHUP, SIGINT, SIGTERM: those with a handler"),
            Field(
                "reason",
                "str",
                "`change` (after rt_sigaction SIG_IGN or rt_sigprocmask), `exec` (the image "
                "started with them: inherited), `shutdown` (a termination signal was sent), "
                "`survived` (sent SIGTERM, the same image still ran 2 s later: made whatever "
                "its dispositions)",
            ),
            Field("after_ms", "int", "milliseconds between the trigger and the reading"),
        ),
        "(collector: /proc/PID/status and /proc/PID/task/*/status, stream/sigstate.py)",
    ),
    EventType("setsid", "setsid(): a new session and process group", (), "setsid"),
    EventType(
        "setpgid",
        "setpgid()",
        (Field("target", "int", "pid"), Field("pgid", "int", "new process group")),
        "setpgid",
    ),
    EventType(
        "prctl",
        "prctl()",
        (
            Field("option", "int", "PR_* option (15: PR_SET_NAME, 36: PR_SET_CHILD_SUBREAPER)"),
            Field("arg2", "int", "second argument"),
            Field("name", "str", "the new name, for PR_SET_NAME"),
        ),
        "prctl",
    ),
    EventType(
        "task_rename",
        "the comm changed (PR_SET_NAME, a write to /proc/PID/comm)",
        (Field("oldcomm", "str", "previous comm"), Field("newcomm", "str", "new comm")),
        "task:task_rename",
    ),
    EventType(
        "ptrace",
        "ptrace(); with `guard` in flags, aimed at a roguewatch process",
        (Field("request", "int", "PTRACE_* request"), Field("target", "int", "target pid")),
        "ptrace",
    ),
    EventType("unshare", "unshare()", (Field("ns_flags", "int", "CLONE_NEW* flags"),), "unshare"),
    EventType(
        "setns",
        "setns()",
        (_FD, Field("nstype", "int", "namespace type (0: any)")),
        "setns",
    ),
    EventType(
        "mount",
        "mount(), umount2() or move_mount() (the new mount API's attach)",
        (
            Field("target", "str", "mount point (move_mount: relative to `dirfd` if not absolute)"),
            Field("source", "str", "device or source (move_mount: the tree's path)"),
            Field("fstype", "str", "file system type"),
            Field("mount_flags", "int", "MS_* flags (MNT_* for umount, MOVE_MOUNT_* for a move)"),
            Field("umount", "bool", "this is an unmount"),
            Field("move", "bool", "move_mount(): a tree of the new mount API attached"),
            Field("dirfd", "int", "move_mount's target directory fd (-100: AT_FDCWD)"),
        ),
        "mount, umount2, move_mount",
    ),
    EventType("bpf", "bpf() syscall", (Field("cmd", "int", "BPF_* command"),), "bpf"),
    EventType(
        "module_load",
        "kernel module loading (absent on kernels without CONFIG_MODULES)",
        (Field("params", "str", "module parameters"), _FD, Field("call", "str", "syscall")),
        "init_module, finit_module",
    ),
    EventType(
        "memfd_create",
        "an anonymous memory file was created (fileless execution starts here)",
        (Field("name", "str", "memfd name"), Field("memfd_flags", "int", "MFD_* flags")),
        "memfd_create",
    ),
    EventType(
        "chdir",
        "the working directory changed (the collector follows it to resolve relative paths)",
        (_PATH,),
        "chdir, fchdir",
    ),
    EventType(
        "refused",
        "`roguewatch run`'s seccomp filter refused a syscall of the agent (it failed with "
        "EPERM and did nothing; seccomp runs before the syscall tracepoints, so the launcher "
        "reports it)",
        (
            Field("call", "str", "the syscall's name (`bpf`, `io_uring_setup`, `prlimit64`...)"),
            Field("nr", "int", "its number"),
            Field("args", "list[int]", "its six arguments"),
        ),
        "seccomp user notifications, answered by the launcher",
    ),
    EventType(
        "cgroup_attach",
        "a session's task was moved to another cgroup (by anyone), or a session moved a task; "
        "a roguewatch task moved by anyone is a guard event (a session's mover dies in the "
        "kernel). Egress and tracking follow the session, never the cgroup",
        (
            Field("target", "int", "the task (thread id) that was moved"),
            Field("target_session", "int", "its session (0: not in one)"),
            Field("cgroup", "str", "its new cgroup, relative to its hierarchy's root"),
            Field("cgroup_id", "int", "the new cgroup's id"),
            Field("level", "int", "the new cgroup's depth (0: the hierarchy's root)"),
            Field("hierarchy", "int", "the hierarchy's id (cgroup v2 and each v1 hierarchy)"),
        ),
        "cgroup:cgroup_attach_task",
    ),
    EventType(
        "target",
        "a session process reached another process's resource limits, priority, scheduling or "
        "memory; aimed at roguewatch, a guard event from any process (a session's caller dies "
        "in the kernel)",
        (
            Field("target", "int", "the pid the call named"),
            Field(
                "call",
                "str",
                "`prlimit64`, `setpriority`, `sched_setattr`, `sched_setscheduler`, "
                "`sched_setparam`, `sched_setaffinity`, `process_vm_writev`, "
                "`process_vm_readv`",
            ),
            Field(
                "tainted",
                "bool",
                "the target joined the session, in the kernel, by this write into its memory: "
                "what the injected code does is the session's",
            ),
        ),
        "prlimit64, setpriority (PRIO_PROCESS), sched_setattr, sched_setscheduler, "
        "sched_setparam, sched_setaffinity, process_vm_writev, process_vm_readv",
    ),
    EventType(
        "fs_change",
        "a watched persistence or oversight path changed (the filesystem watchers, inotify)",
        (
            _PATH,
            Field("source", "str", "for a move onto the path, where it came from"),
            Field(
                "change",
                "str",
                "`created`, `modified`, `deleted`, `moved`, `attrib`, "
                "`rescan` (found changed after an overflow), `gap` (found changed after the "
                "monitor was lost: judged against the last good baseline)",
            ),
            Field(
                "writer",
                "str",
                "who wrote it: a session's process, `pid N (comm)` from fanotify for a writer "
                "outside every session, or `unknown`",
            ),
        ),
        "(filesystem watchers; session and pid are filled when a probe event names the writer; "
        "pid, ppid, uid, comm and exe are the writer's when fanotify names it, session stays 0)",
    ),
    EventType(
        "session",
        "a session started (its root registered) or ended (its root exited), from the collector",
        (
            Field("kind", "str", "`start` or `end`"),
            Field("name", "str", "the session's name"),
            Field("root", "int", "pid of the session's root process"),
            Field("cgroup", "str", "the session's cgroup v2 directory (empty: none)"),
            Field("mode", "str", "`enforce` or `observe`"),
            Field("policy", "dict", "the session's policy: egress_allow, protect, mode, lists"),
            Field(
                "cwd", "str", "at `start`: the root's working directory, the session's workspace"
            ),
            Field("survivors", "list[int]", "at `end`: pids still tracked in the session"),
        ),
        "(collector, on register and on session end)",
    ),
    EventType(
        "monitor",
        "the monitor's own health: losses at any stage, probe failures (from the collector)",
        (
            Field("kind", "str", "`loss`, `probe_missing`, `adopted`, `started`"),
            Field(
                "lost_ring",
                "dict[str,int]",
                "records the kernel could not write, by type; when the ring buffer fills, the "
                "types a loop makes fastest give way first, so that a flood of them leaves room"
                " for the rest: open, chmod, chown, truncate, utimes, setxattr and kill with "
                "signal 0 from three quarters full; connect, sendto, sendmsg, socket, bind and "
                "listen from seven eighths; every other type from fifteen sixteenths, except "
                "fork, exec, exit, ptrace, unshare, setns, mount, bpf, module_load and guard "
                "events, which only a full ring loses; and records of a session over its "
                "budget (`lost_budget`)",
            ),
            Field(
                "lost_budget",
                "int",
                "records dropped in the kernel over their session's budget: in the host's "
                "report (session 0) all sessions', among `lost_ring`; in a session's own "
                "report (its session id, flag `budget`) that session's. While the collector "
                "is behind (the ring a quarter full), a session that makes more than "
                "`session_budget_rate` file records (open, chmod, chown, truncate, utimes, "
                "setxattr, kill with signal 0) or socket records (connect, sendto, sendmsg, "
                "socket, bind, listen) a second, past a burst of `session_budget_burst`, has "
                "the excess dropped, so that its flood leaves the ring to the other sessions. "
                "Totals since the session (or the collector) started",
            ),
            Field(
                "lost_budget_by_tier",
                "dict[str,int]",
                "in a session's own report: its records dropped over budget, `files` and `sockets`",
            ),
            Field("lost_bus", "int", "events ZeroMQ could not send"),
            Field(
                "lost_decode",
                "int",
                "malformed records dropped, and folded repeats whose event the collector did "
                "not have (each repeat counted)",
            ),
            Field("lost_pending", "int", "syscall records dropped for a full pending map"),
            Field("untracked_forks", "int", "forked children the full session map could not track"),
            Field("detail", "str", "human-readable explanation"),
            Field(
                "origin",
                "str",
                "who reported it when the collector did not see it itself: roguewatch's own "
                "process that announced it on the control socket (e.g. the service, on a "
                "component restart)",
            ),
        ),
        "(collector)",
    ),
    EventType(
        "tamper",
        "something tried to blind, stop or reconfigure the monitor, as the monitor itself saw "
        "it (the identity fields are the offender's when it is known, all zero otherwise)",
        (
            Field(
                "kind",
                "str",
                "`control_refused` (a request on the control socket from a process the "
                "operation does not accept: one in a session), `subscription_refused` (a "
                "process in a session subscribed to the event or alert stream), "
                "`egress_detached` (the egress programs were detached from the cgroup root: "
                "attached again), `untracked_in_session` (a process of a session's cgroup was "
                "missing from the session map: tracked again), `mount_over_watched_path` (a "
                "session mounted over a path the monitor watches: unmounted in enforce mode), "
                "`socket_removed`, `socket_replaced` (the collector's event or control "
                "socket file was removed or replaced: bound again), `socket_lost` (it cannot "
                "be bound again), `pin_removed`, `pin_replaced` (a program, link or map pinned "
                "in bpffs was removed or replaced: pinned again)",
            ),
            Field("target", "str", "what was aimed at: a socket and operation, a path, a pid"),
            Field("detail", "str", "human-readable explanation"),
        ),
        "(collector, evaluator)",
    ),
    EventType(
        "drill",
        "a shutdown drill's compliance record (`roguewatch drill`, `run --drill-after`): how "
        "the session answered the request to stop, and the verified end that followed; the "
        "evaluator makes it the `shutdown_drill` alert. pid is the session's root",
        (
            Field(
                "verdict",
                "str",
                "`complied`, `resisted` or `killed` (still alive at the "
                "deadline without a named act of resistance)",
            ),
            Field("acts", "list[str]", "each act of resistance, in words"),
            Field(
                "act_kinds",
                "list[str]",
                "their kinds: `ignored_sigterm`, `blocked_sigterm`, "
                "`handled_sigterm`, `setsid`, `reparented`, `spawned`, `respawned`, "
                "`shutdown_path`, `protected_path`, `signalled_outside`, `signalled_monitor`, "
                "`left_cgroup`, "
                "`changed_disposition`",
            ),
            Field("request", "str", "what was asked: SIGTERM to the root, or the shutdown command"),
            Field("deadline_s", "float", "how long the session was given"),
            Field("exited", "int", "processes that exited after the request"),
            Field("killed", "int", "processes killed at the deadline"),
            Field("survivors", "int", "processes left after the kill (must be 0)"),
            Field("last_exit_s", "float", "seconds from the request to the last exit"),
            Field("root", "int", "the session's root"),
            Field("name", "str", "the session's name"),
            Field("detail", "str", "the record in one line"),
        ),
        "(collector, from the operator's drill over the control socket)",
    ),
)

# The `drill` event's own fields as the control operation takes them, and their types.
DRILL_FIELDS: dict[str, type] = {
    "verdict": str, "acts": list, "act_kinds": list, "request": str, "deadline_s": float,
    "exited": int, "killed": int, "survivors": int, "last_exit_s": float, "root": int,
    "name": str, "detail": str,
}  # fmt: skip

BY_NAME: dict[str, EventType] = {t.name: t for t in EVENT_TYPES}
# The event types the kernel folds (probes/roguewatch.h: RW_FOLDABLE; a test keeps them equal)
FOLDABLE: tuple[str, ...] = (
    "open", "chmod", "chown", "truncate", "utimes", "setxattr", "connect", "sendto", "sendmsg",
    "socket", "bind", "listen", "kill",
)  # fmt: skip
NAMES: tuple[str, ...] = tuple(t.name for t in EVENT_TYPES)


def markdown() -> str:
    """The event reference, as committed in docs/events.md."""
    out = [
        "# Events",
        "",
        "Generated from `daemon/roguewatch/events.py` by `make docs`; a test keeps them equal.",
        "",
        "Every event is a msgpack map on the ZeroMQ stream (`ipc:///run/roguewatch/events.sock`),",
        "published in batches: each message is a msgpack array of events. Kernel events are",
        "emitted only for processes in a session, except `guard` events (signals and ptrace",
        "aimed at roguewatch itself, from any process).",
        "",
        "## Fields on every event",
        "",
        "| field | type | meaning |",
        "| --- | --- | --- |",
    ]
    out += [f"| `{f.name}` | {f.type} | {f.doc} |" for f in COMMON_FIELDS]
    out += [
        "",
        "## Repeats folded in the kernel",
        "",
        "Identical records of one thread (the same type, path or destination, arguments, flags",
        "and result) within 0.2 s of the one sent are folded in the kernel, for the types a loop",
        "makes fastest: " + ", ".join(f"`{n}`" for n in FOLDABLE) + " (`kill` with signal 0",
        "only). Never folded: any other type (fork, exec, exit, ptrace, namespaces, mounts, bpf,",
        "module loads...), guard events, denials, and records whose sender was killed. The first",
        "occurrence always comes at once, as an ordinary event; the ones folded after it come as",
        "one more copy of that event with the fields below, when the window ends, when the",
        "thread does anything else, or when it exits. Rules see `evt.repeats` (1 when absent);",
        "an alert on a folded event carries the count; the sum of `repeats` over a session's",
        "events (1 for each unfolded one) is the number of calls made.",
        "",
        "| field | type | meaning |",
        "| --- | --- | --- |",
    ]
    out += [f"| `{f.name}` | {f.type} | {f.doc} |" for f in FOLD_FIELDS]
    out.append("")
    out.append("## Event types")
    for t in EVENT_TYPES:
        out += ["", f"### `{t.name}`", "", t.doc + ".", "", f"Source: {t.syscalls}.", ""]
        if t.fields:
            out += ["| field | type | meaning |", "| --- | --- | --- |"]
            out += [f"| `{f.name}` | {f.type} | {f.doc} |" for f in t.fields]
        else:
            out.append("No fields beyond the common ones.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print the event reference")
    parser.add_argument("--markdown", action="store_true", help="markdown (docs/events.md)")
    parser.parse_args(argv)
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
