"""Starting a command as a new session, with a collector to watch it.

Owns two things `record` (and later `run`) need: a collector to talk to (the running
roguewatchd's, or a private one started for the command's lifetime), and starting the command
so that it is in the session *before its first instruction*: the child waits on a pipe until
its pid is in the kernel's session map, and only then execs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from roguewatch import bus, readiness
from roguewatch.control import ControlClient, ControlError, running
from roguewatch.selfdefense import die_with_parent

PRIVATE_STATE = "/var/lib/roguewatch/private"


class SessionError(Exception):
    pass


@dataclass
class Watcher:
    """A collector to use: its event and control endpoints, and the process if we own it."""

    events: str
    control: ControlClient
    proc: subprocess.Popen | None = None
    tmpdir: str | None = None

    def close(self) -> None:
        self.control.close()
        if self.proc is not None and self.proc.poll() is None:
            # No wait: detaching 115 tracepoints costs the collector seconds of RCU grace
            # periods, which the command's user should not sit through. It exits on its own.
            self.proc.terminate()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def start_private_collector(
    extra: list[str] | None = None, timeout: float = 60.0,
    alongside: Callable[[str], None] | None = None,
) -> Watcher:  # fmt: skip
    """A collector of our own, on root-only sockets in a fresh directory, adopting nothing.

    ``alongside(events_endpoint)`` runs while the collector loads its probes (run starts its
    evaluator there, so the two start-ups overlap instead of adding up).
    """
    tmpdir = tempfile.mkdtemp(prefix="roguewatch-")
    os.chmod(tmpdir, 0o700)
    events = f"ipc://{tmpdir}/events.sock"
    control = f"ipc://{tmpdir}/control.sock"
    r, w = os.pipe()
    # Baselines and quarantine of a private collector are its own, and kept after it ends
    # (an operator may want the agent's version of a restored file).
    state = os.path.join(PRIVATE_STATE, os.path.basename(tmpdir))
    cmd = [sys.executable, "-m", "roguewatch.collector", "--events", events,
           "--control", control, "--no-adopt", "--state-dir", state, "--ready-fd", str(w),
           *(extra or [])]  # fmt: skip
    proc = subprocess.Popen(
        cmd, pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    os.close(w)
    if alongside is not None:
        alongside(events)
    if not readiness.wait(r, proc, timeout):
        proc.kill()
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        proc.wait()
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise SessionError(f"the collector did not start: {err or 'timed out'}")
    return Watcher(events, ControlClient(control), proc, tmpdir)


def find_or_start_collector() -> Watcher:
    client = running()
    if client is not None:
        return Watcher(bus.EVENTS_ENDPOINT, client)
    return start_private_collector()


def spawn_in_session(
    argv: list[str], register: Callable[[int], int], preexec: Callable[[], None] | None = None
) -> tuple[int, int]:
    """Fork; the child waits until ``register(pid)`` returned, then execs ``argv``.

    Returns (pid, session). A command that cannot be executed exits 127 with a message.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(w)
            go = os.read(r, 1)
            os.close(r)
            if go != b"1":
                os._exit(126)
            if preexec:
                preexec()
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"roguewatch: cannot run {argv[0]}: {exc.strerror}\n".encode())
            os._exit(127)
        except BaseException:
            os._exit(126)
    os.close(r)
    try:
        session = register(pid)
    except BaseException:
        os.close(w)  # the child reads EOF and exits without running anything
        os.waitpid(pid, 0)
        raise
    os.write(w, b"1")
    os.close(w)
    return pid, session


def register_with(control: ControlClient) -> Callable[[int], int]:
    def register(pid: int) -> int:
        try:
            return int(control.request("register", pid=pid)["session"])
        except ControlError as exc:
            raise SessionError(f"cannot register the session: {exc}") from None

    return register


def exit_status(wait_status: int) -> int:
    """The command's exit status, or 128+N when it was ended by signal N."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)
