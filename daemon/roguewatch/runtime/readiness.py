"""The ready-fd handshake between a component (collector, evaluator) and who started it.

The starter passes the write end of a pipe as ``--ready-fd N``; the component writes one byte
once it can do its job (probes attached, subscribed) and closes it. A component that dies
first closes the pipe without the byte, so the starter learns that at once, not at a timeout.
"""

from __future__ import annotations

import os
import select
import subprocess
import time


def notify(fd: int | None) -> None:
    """In the component: say it is ready (no-op without --ready-fd)."""
    if fd is not None:
        os.write(fd, b"1")
        os.close(fd)


def wait(r: int, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    """In the starter: True once the component said ready; False if it exited or timed out.

    Closes ``r`` either way."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([r], [], [], 0.2)
            if ready:
                return os.read(r, 1) == b"1"
        return False
    finally:
        os.close(r)
