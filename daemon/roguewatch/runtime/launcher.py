"""Starting a command as a new session, with a collector to watch it.

Owns two things `record` and `run` need: a collector to talk to (the running roguewatchd's,
or a private one started for the command's lifetime), and starting the command so that it is
in the session *before its first instruction*: the child waits on a pipe until its pid is in
the kernel's session map, and only then execs.

A private collector's sockets live in a root-only directory under ``PRIVATE_RUN`` (so
`roguewatch sessions` and `kill` find it), it runs ahead of the agent
(``roguewatch.runtime.priority``), and its baseline directory is seeded with the contents earlier
runs stored (``roguewatch.respond.blobstore``): its start-up snapshot writes only what is new.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from roguewatch.core.paths import PRIVATE_RUN, PRIVATE_STATE
from roguewatch.runtime import readiness
from roguewatch.runtime.components import (
    COLLECTOR,
    component_preexec,
    forward_stderr,
    popen,
    python_cmd,  # fmt: skip
)

if TYPE_CHECKING:  # ZeroMQ is imported only once a collector is being started (start-up time)
    from roguewatch.stream.control import ControlClient


class SessionError(Exception):
    pass


@dataclass
class Watcher:
    """A collector to use: its event and control endpoints, and the process if we own it."""

    events: str
    control: ControlClient
    proc: subprocess.Popen | None = None
    tmpdir: str | None = None
    state: str | None = None  # a private collector's state directory (baselines)
    cmd: list[str] | None = None  # how a private collector was started (without --ready-fd)

    def share_baselines(self) -> int:
        """Once a session is registered (its baseline snapshot done): the copies this
        private collector wrote go to the store shared between runs (``blobstore``), so the
        next run's snapshot does not write them again. Best effort; how many were new."""
        if not self.state:
            return 0
        try:
            from roguewatch.respond.blobstore import BlobError, BlobStore

            return BlobStore().harvest(os.path.join(self.state, "baseline"))
        except (OSError, BlobError):
            return 0

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # A stop asked for: its pinned kernel side goes with it (nothing to take over).
            with contextlib.suppress(Exception):
                self.control.request("stopping")
        self.control.close()
        if self.proc is not None and self.proc.poll() is None:
            # No wait: detaching every tracepoint costs the collector RCU grace periods
            # (seconds: bench/README.md), which the command's user should not sit through. It
            # exits on its own.
            self.proc.terminate()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def private_run_dir() -> str:
    """A fresh root-only directory for a private collector's sockets."""
    os.makedirs(PRIVATE_RUN, mode=0o700, exist_ok=True)
    st = os.lstat(PRIVATE_RUN)
    if not stat.S_ISDIR(st.st_mode) or (os.geteuid() == 0 and st.st_uid != 0):
        raise SessionError(f"{PRIVATE_RUN} is not a root-owned directory: remove it")
    os.chmod(PRIVATE_RUN, 0o700)
    tmpdir = tempfile.mkdtemp(prefix="roguewatch-", dir=PRIVATE_RUN)
    os.chmod(tmpdir, 0o700)
    return tmpdir


def private_control_endpoints() -> list[str]:
    """Control endpoints of the private collectors that have a socket now (maybe stale)."""
    try:
        names = sorted(os.listdir(PRIVATE_RUN))
    except OSError:
        return []
    out = []
    for n in names:
        path = os.path.join(PRIVATE_RUN, n, "control.sock")
        if os.path.exists(path):
            out.append(f"ipc://{path}")
    return out


@dataclass
class PendingCollector:
    """A private collector that was started and has not said it is ready yet."""

    proc: subprocess.Popen
    ready_r: int
    tmpdir: str
    events: str
    control: str
    state: str
    cmd: list[str] | None = None

    def wait(self, timeout: float = 60.0) -> Watcher:
        """Until its probes are attached: then a Watcher (SessionError when it failed)."""
        from roguewatch.stream.control import ControlClient

        ready, self.ready_r = readiness.wait(self.ready_r, self.proc, timeout), -1  # closed
        if not ready:
            self.proc.kill()
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            self._cleanup()
            raise SessionError(f"the collector did not start: {err.strip() or 'timed out'}")
        forward_stderr(self.proc, "collector")
        return Watcher(self.events, ControlClient(self.control), self.proc, self.tmpdir, self.state,
                       self.cmd)  # fmt: skip

    def abandon(self) -> None:
        """Not needed after all (the launcher failed before any session): stop it."""
        self.proc.kill()
        if self.ready_r >= 0:
            os.close(self.ready_r)
            self.ready_r = -1
        self._cleanup()

    def _cleanup(self) -> None:
        # Killed before it could clean up: its sockets, and its baselines (no session ran,
        # so there is no quarantine to keep).
        self.proc.wait()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        shutil.rmtree(os.path.join(PRIVATE_STATE, os.path.basename(self.tmpdir)),
                      ignore_errors=True)  # fmt: skip


def launch_private_collector(extra: list[str] | None = None) -> PendingCollector:
    """Start a collector of our own, on root-only sockets in a fresh directory, adopting
    nothing; do not wait for it (``PendingCollector.wait``). Its start-up (imports, probes
    from the cached image, the watchers' baseline snapshot) is the longest part of a
    session's start: the caller does its own preparations meanwhile."""
    tmpdir = private_run_dir()
    events = f"ipc://{tmpdir}/events.sock"
    control = f"ipc://{tmpdir}/control.sock"
    r, w = os.pipe()
    # Baselines and quarantine of a private collector are its own, and kept after it ends
    # (an operator may want the agent's version of a restored file).
    state = os.path.join(PRIVATE_STATE, os.path.basename(tmpdir))
    base = python_cmd(COLLECTOR, "--events", events, "--control", control, "--no-adopt",
                      "--state-dir", state, *(extra or []))  # fmt: skip
    try:
        proc = popen(
            [*base, "--ready-fd", str(w)], pass_fds=(w,), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, preexec_fn=component_preexec,
        )  # fmt: skip
    except BaseException:
        os.close(r)
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    finally:
        os.close(w)
    _seed_baselines(state)
    _sweep_stale_run_dirs(keep=tmpdir)
    return PendingCollector(proc, r, tmpdir, events, control, state, base)


def respawn(cmd: list[str], timeout: float = 60.0) -> subprocess.Popen:
    """A component started again as it was (``cmd`` without its ready fd), waited for until
    ready; SessionError when it does not come up."""
    r, w = os.pipe()
    try:
        proc = popen(
            [*cmd, "--ready-fd", str(w)], pass_fds=(w,), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, preexec_fn=component_preexec,
        )  # fmt: skip
    finally:
        os.close(w)
    if not readiness.wait(r, proc, timeout):
        proc.kill()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        proc.wait()
        raise SessionError(f"could not start it again: {err.strip() or 'timed out'}")
    forward_stderr(proc, cmd[cmd.index("-m") + 1].rsplit(".", 1)[-1].removesuffix("d"))
    return proc


def _sweep_stale_run_dirs(keep: str, min_age_s: float = 120.0) -> None:
    """Directories of private collectors that are gone without cleaning up (their launcher
    was SIGKILLed): nothing listens on their control socket, and they are older than any
    start-up. (After our own launch: off the start-up's critical path.)"""
    import socket
    import time

    try:
        names = os.listdir(PRIVATE_RUN)
    except OSError:
        return
    for n in names:
        d = os.path.join(PRIVATE_RUN, n)
        if d == keep or not n.startswith("roguewatch-"):
            continue
        try:
            if time.time() - os.lstat(d).st_mtime < min_age_s:
                continue
        except OSError:
            continue
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.path.join(d, "control.sock"))
            continue  # alive
        except OSError:
            pass
        finally:
            sock.close()
        shutil.rmtree(d, ignore_errors=True)


def _seed_baselines(state: str) -> None:
    """Copies of baselined contents from earlier runs, hard-linked into the new collector's
    baseline directory while it imports its modules (it needs them well after that): its
    snapshot then writes and fsyncs only contents no run has seen. This relies on the layout
    of ``baseline.Baselines`` (``<state>/baseline/<sha256>``, an existing copy not written
    again); until Baselines uses ``blobstore`` itself, a change of that layout only makes the
    seeding useless, never wrong (Baselines checks a copy's sha256 before restoring it)."""
    try:
        from roguewatch.respond.blobstore import BlobError, BlobStore

        _private_dir_of(state)
        BlobStore().seed(os.path.join(state, "baseline"))
    except (OSError, BlobError):
        pass


def _private_dir_of(path: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    os.makedirs(path, mode=0o700, exist_ok=True)


def start_private_collector(
    extra: list[str] | None = None, timeout: float = 60.0,
    alongside: Callable[[str], None] | None = None,
) -> Watcher:  # fmt: skip
    """A collector of our own, on root-only sockets in a fresh directory, adopting nothing.

    ``alongside(events_endpoint)`` runs while the collector loads its probes (run starts its
    evaluator there, so the two start-ups overlap instead of adding up).
    """
    pending = launch_private_collector(extra)
    if alongside is not None:
        try:
            alongside(pending.events)
        except BaseException:
            pending.abandon()
            raise
    return pending.wait(timeout)


def find_or_start_collector() -> Watcher:
    from roguewatch.stream import bus
    from roguewatch.stream.control import running

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


def register_with(control: ControlClient, **fields: object) -> Callable[[int], int]:
    """A ``register`` for spawn_in_session: the collector's `register` operation, with
    ``fields`` (name, mode, policy...) as `run` sends them."""
    from roguewatch.stream.control import ControlError

    def register(pid: int) -> int:
        try:
            return int(control.request("register", pid=pid, **fields)["session"])
        except ControlError as exc:
            raise SessionError(f"cannot register the session: {exc}") from None

    return register


def exit_status(wait_status: int) -> int:
    """The command's exit status, or 128+N when it was ended by signal N."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)
