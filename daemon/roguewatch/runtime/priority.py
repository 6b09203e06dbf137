"""Scheduling priority of roguewatch's own components (collector, evaluator).

Owns one decision: the monitor runs ahead of what it watches. An agent that keeps the CPUs
busy (or floods the probes with events) must not delay its own kill: the collector and the
evaluator are on the path from a rule match to a dead process, so they run at ``nice -10``
in a scheduling group of their own.

Why not a real-time policy (SCHED_FIFO): a flood keeps the evaluator busy for as long as it
lasts, and a busy SCHED_FIFO task owns its core until the kernel's RT throttling steps in
(95 % of each second): the host would stall. ``nice -10`` is still fair scheduling, bounded:
a busy component gets about nine times the share of a nice-0 task, never all of a core.

With autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``, the default on
desktop and many server kernels) a nice value only counts inside the task's autogroup, i.e.
its session: so the component first becomes a session leader (``setsid``: its own autogroup,
no controlling terminal, so a ^C at the terminal reaches the launcher and the agent, not the
monitor) and gives that autogroup the same nice. Everything is best effort: without
CAP_SYS_NICE the component runs at normal priority, as before.
"""

from __future__ import annotations

import contextlib
import os

MONITOR_NICE = -10


def raise_self(nice: int = MONITOR_NICE, new_session: bool = True) -> None:
    """In a component's ``preexec_fn``: its own session (autogroup), then ``nice``."""
    if new_session:
        with contextlib.suppress(OSError):
            os.setsid()
            # A fresh autogroup holds only this process: its nice is this component's alone.
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(nice))
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def current(pid: int = 0) -> int:
    """The nice value of ``pid`` (0: this process)."""
    return os.getpriority(os.PRIO_PROCESS, pid)
