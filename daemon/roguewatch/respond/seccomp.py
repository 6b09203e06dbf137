"""The agent's seccomp filter: syscalls `roguewatch run` refuses, and every refusal reported.

Owns building the filter (libseccomp, through pyseccomp) that the launcher's child installs
right before exec (irrevocable, inherited by every descendant, root included) and the
launcher's side of it: each refused call is a seccomp *user notification*, which the
launcher answers EPERM (the agent keeps running; the call did nothing) and reports, so a
refusal is an event and an alert, never a silence.

The refused calls are data (``policy.refusals``: the policy's ``refuse:`` names them):
the BPF syscall (the agent must not touch the probes or their maps), io_uring (its requests
never pass a syscall tracepoint), resource limits, priorities and scheduling of *other*
processes (prlimit64, setpriority, sched_setattr... with a pid other than 0), writing into
other processes' memory, perf events, kexec and kernel modules.

Why user notifications and not plain EPERM: a call seccomp refuses never reaches the
syscall tracepoints, so the probes would not see it. If the launcher is gone the notifying
calls fail (ENOSYS): the agent is no more able to make them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from roguewatch.policy.refusals import DEFAULT_REFUSALS, REFUSALS  # noqa: F401

SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif)
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp)
_NOTIF = struct.Struct("<QIIiIQ6Q")  # id pid flags | nr arch ip args[6]
_RESP = struct.Struct("<QqiI")  # id val error flags


class SeccompError(Exception):
    """The filter cannot be built or installed, with what to do."""


def validate(names: Iterable[str]) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [n for n in names if n not in REFUSALS]
    if unknown:
        raise SeccompError(f"unknown refusal {unknown[0]!r} (known: {', '.join(REFUSALS)})")
    return names


def available() -> str | None:
    """None when seccomp user notifications can be used here, else why not."""
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"pyseccomp/libseccomp unavailable ({exc}): apt-get install libseccomp2"
    if not os.path.exists("/proc/sys/kernel/seccomp/actions_avail"):
        return "the kernel has no seccomp filter support"
    with open("/proc/sys/kernel/seccomp/actions_avail") as f:
        if "user_notif" not in f.read().split():
            return "the kernel's seccomp has no user notifications (Linux 5.0+)"
    return None


def install(refusals: Iterable[str], report: socket.socket) -> None:
    """In the launcher's child, right before exec: install the filter and hand its
    notification fd to the launcher over ``report`` (then close it here: a process that held
    it could answer its own refusals)."""
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ALLOW)
    for name in validate(refusals):
        for syscall, pid_arg in REFUSALS[name]:
            try:
                if pid_arg is None:
                    f.add_rule(sc.NOTIFY, syscall)
                else:  # refused only when aimed at another process (pid argument not 0)
                    f.add_rule(sc.NOTIFY, syscall, sc.Arg(pid_arg, sc.NE, 0))
            except (OSError, ValueError) as exc:
                raise SeccompError(f"cannot refuse {syscall}: {exc}") from None
    try:
        f.load()
        fd = sc._libseccomp.seccomp_notify_fd(f._filter)  # the listener of the loaded filter
    except OSError as exc:
        raise SeccompError(f"cannot install the seccomp filter: {exc}") from None
    if fd < 0:
        raise SeccompError(f"no seccomp notification fd: {os.strerror(-fd)}")
    socket.send_fds(report, [b"s"], [fd])
    os.close(fd)


def receive_fd(report: socket.socket, timeout: float = 5.0) -> int:
    """In the launcher: the notification fd the child sent."""
    report.settimeout(timeout)
    try:
        _, fds, _, _ = socket.recv_fds(report, 1, 1)
    except (OSError, TimeoutError) as exc:
        raise SeccompError(f"the agent's seccomp filter did not report: {exc}") from None
    if not fds:
        raise SeccompError("the agent's seccomp filter did not report (no fd)")
    return fds[0]


@dataclass(frozen=True)
class Refusal:
    pid: int  # thread id of the caller, as the launcher's pid namespace sees it
    syscall: str
    nr: int
    args: tuple[int, ...]


def _syscall_name(nr: int) -> str:
    try:
        import pyseccomp as sc

        return sc.resolve_syscall(sc.Arch.NATIVE, nr).decode()
    except Exception:  # a name is a convenience; the number is the fact
        return str(nr)


class Responder:
    """The launcher's side: answers every notification EPERM, reports it to ``on_refusal``
    (from its own thread). ``refused`` counts them."""

    def __init__(self, fd: int, on_refusal: Callable[[Refusal], None]) -> None:
        self.fd = fd
        self.on_refusal = on_refusal
        self.refused = 0
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, daemon=True, name="seccomp")
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        buf = bytearray(_NOTIF.size)
        while True:
            ready = dict(poller.poll())
            if self._stop_r in ready:
                return
            if ready.get(self.fd, 0) & (select.POLLHUP | select.POLLERR) and not (
                ready.get(self.fd, 0) & select.POLLIN
            ):
                return  # every process of the filter is gone
            buf[:] = bytes(len(buf))
            try:
                fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_RECV, buf)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.ENOENT):
                    continue  # the caller was interrupted or died meanwhile
                return
            nid, pid, _flags, nr, _arch, _ip, *args = _NOTIF.unpack(buf)
            resp = bytearray(_RESP.pack(nid, 0, -errno.EPERM, 0))
            try:
                fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_SEND, resp)
            except OSError:
                pass  # the caller is gone: nothing to refuse any more
            self.refused += 1
            try:
                self.on_refusal(Refusal(pid, _syscall_name(nr), nr, tuple(args)))
            except Exception:  # reporting must never stop the refusing
                pass

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=2)
        for fd in (self.fd, self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
