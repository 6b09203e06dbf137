"""The heartbeat between a component (collector, evaluator, forwarder) and its supervisor.

Owns one pipe per component: the component writes a byte at least every ``BEAT_S`` from its
loop (``Beat``), the supervisor reads them (``Pulse``) and calls a component whose last beat
is older than ``HANG_S`` hung: stopped, frozen, starved, or stuck in a call. A dead one closes
the pipe (and is seen by its exit first). Neither side ever blocks on the pipe.
"""

from __future__ import annotations

import os
import time

BEAT_S = 0.1  # the component's loop beats at least this often
HANG_S = 0.8  # a component silent this long is not watching: the sessions fail closed
GRACE_S = 2.0  # after its start, a component's first turns (the backlog) may take longer
LONG_S = 5.0  # a component that said it starts a long step (``Beat.long``) may be this silent


class Beat:
    """The component's side: ``beat()`` from its loop (rate-limited, never blocks)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self._last = 0.0
        if fd is not None:
            os.set_blocking(fd, False)

    def __call__(self) -> None:
        if self.fd is None:
            return
        now = time.monotonic()
        if now - self._last < BEAT_S / 2:
            return
        self._last = now
        self._write(b".")

    def long(self) -> None:
        """A long step starts (a rule reload): silence up to LONG_S is not a hang."""
        if self.fd is not None:
            self._last = time.monotonic()
            self._write(b"+")

    def _write(self, b: bytes) -> None:
        try:
            os.write(self.fd, b)  # type: ignore[arg-type]
        except (BlockingIOError, BrokenPipeError):
            pass  # the supervisor is behind (it drains), or gone


class Pulse:
    """The supervisor's side of one component's pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.last = time.monotonic()  # (armed at the component's readiness)
        self.armed = self.last
        self.long_step = False

    def arm(self) -> None:
        self.last = self.armed = time.monotonic()

    def silent_for(self) -> float:
        """Seconds since the last beat (reads every beat waiting)."""
        try:
            while True:
                got = os.read(self.fd, 4096)
                if not got:
                    break
                self.last = time.monotonic()
                self.long_step = got[-1:] == b"+"
        except OSError:  # (BlockingIOError: nothing more waiting)
            pass
        now = time.monotonic()
        if now - self.armed < GRACE_S:
            return 0.0
        silent = now - self.last
        return max(0.0, silent - (LONG_S - HANG_S)) if self.long_step else silent

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
