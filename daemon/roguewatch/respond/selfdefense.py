"""Keeping roguewatch's own processes alive when an agent attacks them.

Owns a shutdown gate (SIGTERM/SIGINT/SIGHUP are blocked and read with sigtimedwait, so the
sender's pid is known and a signal from a watched process is ignored instead of obeyed),
components that die with their parent, and the list of paths an agent must never write to
(``write_denied_paths``: the Landlock domain of `roguewatch run` keeps them out of its
reach). The agent that sent a signal is killed in the kernel by the probes (guard events);
this makes sure the signal itself achieves nothing. (A component stopped by SIGSTOP is
continued by its supervisor, ``runtime.service``.)
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from roguewatch.core import paths

GATED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def block_shutdown_signals() -> None:
    """Block the gated signals in this thread, and so in every thread started after: call it
    first thing in a process (and before exec in its starter: the mask is inherited)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, GATED)


class ShutdownGate:
    """Blocked signals, read when the owner's loop asks: (signo, sender pid) pairs."""

    def __init__(self, is_watched: Callable[[int], bool]) -> None:
        self.is_watched = is_watched
        self.ignored = 0
        self.last_sender = 0  # pid of the last obeyed signal's sender (0: the kernel, a tty)
        block_shutdown_signals()

    def poll(self) -> list[int]:
        """Signals to obey now; those sent by a watched process are dropped and counted."""
        return [signo for signo, _ in self.poll_senders()]

    def poll_senders(self) -> list[tuple[int, int]]:
        """(signal, sender pid) of the signals to obey now (pid 0: sent by the kernel)."""
        out = []
        while True:
            info = signal.sigtimedwait(GATED, 0)
            if info is None:
                return out
            if info.si_pid and self.is_watched(info.si_pid):
                self.ignored += 1
                continue
            self.last_sender = info.si_pid
            out.append((info.si_signo, info.si_pid))


def die_with_parent() -> None:
    """For a component's preexec: SIGTERM when the process that started it dies, so a
    killed roguewatchd (or run) never leaves a collector or evaluator orphaned."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def write_denied_paths() -> list[str]:
    """Where an agent must never write, root or not: the monitor's own directories
    (``core.paths.MONITOR_PATHS``), every cgroup filesystem mount (cgroup.procs moves a process
    out of its session, cgroup.kill / cgroup.freeze reach any cgroup, a v1 freezer can stop
    the monitor) and bpffs (where pinned programs and maps live), wherever they are mounted.
    /sys/fs/bpf is in the list even while nothing is mounted there."""
    # (imported here: every component imports this module first thing, and needs no more)
    from roguewatch.host import kernelenv

    out = list(paths.MONITOR_PATHS)
    for fstype in ("cgroup2", "cgroup", "bpf"):
        out += kernelenv.mount_points(fstype)
    out.append(kernelenv.BPFFS_DEFAULT)
    return sorted(set(out))
