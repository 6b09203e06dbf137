"""What the benchmarks share: printing as they go, a process's CPU time, leftover cron files.

The benchmarks run as scripts (``.venv/bin/python bench/NAME.py``), so this directory is on
their import path.
"""

from __future__ import annotations

import contextlib
import os

CLK_TCK = os.sysconf("SC_CLK_TCK")
CRON_D = "/etc/cron.d"
CRON_PREFIX = "roguewatch-bench-"  # every file a benchmark drops in /etc/cron.d starts so


def log(msg: str = "") -> None:
    print(msg, flush=True)


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cleanup_cron() -> None:
    """Remove what a benchmark (or an interrupted one) left in /etc/cron.d."""
    for name in os.listdir(CRON_D):
        if name.startswith(CRON_PREFIX):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(CRON_D, name))
