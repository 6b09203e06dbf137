"""Keeping roguewatch's own processes alive when an agent attacks them.

Owns two things: a shutdown gate (SIGTERM/SIGINT/SIGHUP are blocked and read with
sigtimedwait, so the sender's pid is known and a signal from a watched process is ignored
instead of obeyed), and un-stopping a component that was sent SIGSTOP. The agent that sent
either is killed in the kernel by the probes (guard events); this makes sure the signal
itself achieves nothing.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

GATED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class ShutdownGate:
    """Blocked signals, read when the owner's loop asks: (signo, sender pid) pairs."""

    def __init__(self, is_watched: Callable[[int], bool]) -> None:
        self.is_watched = is_watched
        self.ignored = 0
        signal.pthread_sigmask(signal.SIG_BLOCK, GATED)

    def poll(self) -> list[int]:
        """Signals to obey now; those sent by a watched process are dropped and counted."""
        out = []
        while True:
            info = signal.sigtimedwait(GATED, 0)
            if info is None:
                return out
            if info.si_pid and self.is_watched(info.si_pid):
                self.ignored += 1
                continue
            out.append(info.si_signo)


def die_with_parent() -> None:
    """For a component's preexec: SIGTERM when the process that started it dies, so a
    killed roguewatchd (or run) never leaves a collector or evaluator orphaned."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
