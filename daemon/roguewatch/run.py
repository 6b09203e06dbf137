"""`roguewatch run`: one agent, watched and stopped, with or without a running service.

Owns the launch of an agent session and its verified end. Before the agent's first
instruction: a cgroup v2 leaf of its own, its pid in the kernel's session map, the policy's
egress programs on that cgroup (enforce mode), a Landlock domain that keeps it from
signalling or ptracing anything outside it, and only then the exec (as ``--user`` when
given). The launcher is child subreaper, so double-forked descendants stay its children. At
the end: survivors are named (rule `persistence_process_survives_session`), killed in
enforce mode, and the summary says how many were left: zero.

Uses the running roguewatchd when its control socket answers; otherwise it starts a
collector and an evaluator of its own for the session's lifetime.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import msgpack
import zmq

from roguewatch import alerts, bus, cgroups, landlock, readiness, sessions
from roguewatch import policy as policy_mod
from roguewatch.collector import new_session_id
from roguewatch.control import ControlError
from roguewatch.selfdefense import die_with_parent

PR_SET_CHILD_SUBREAPER = 36


class RunError(Exception):
    """The launcher's own failure (exit 2), with what to do."""


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run CMD as a watched agent session (enforce by default)")
    p.add_argument("--policy", metavar="FILE", help="egress allowlist, protected paths, mode")
    p.add_argument("--observe", action="store_true", help="alert only: never kill or block")
    p.add_argument("--alerts", metavar="FILE", help="also append the session's alerts here")
    p.add_argument("--json", action="store_true", help="alerts as JSON lines on stderr")
    p.add_argument("--name", help="the session's name (default: the command's name)")
    p.add_argument("--user", help="run the agent as this user (after set-up as root)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(fn=main)


@dataclass
class Monitor:
    """The collector and evaluator this session uses (the service's, or our own)."""

    watcher: sessions.Watcher
    alerts_endpoint: str
    evaluator: subprocess.Popen | None = None
    tmpdir: str | None = None

    def close(self) -> None:
        if self.evaluator is not None and self.evaluator.poll() is None:
            self.evaluator.terminate()
        self.watcher.close()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def start_monitor() -> Monitor:
    from roguewatch.control import running

    client = running()
    if client is not None:
        return Monitor(sessions.Watcher(bus.EVENTS_ENDPOINT, client), alerts.ALERTS_ENDPOINT)
    tmpdir = tempfile.mkdtemp(prefix="roguewatch-run-")
    os.chmod(tmpdir, 0o700)
    endpoint = f"ipc://{tmpdir}/alerts.sock"
    r, w = os.pipe()
    started: list[subprocess.Popen] = []

    def start_evaluator(events: str) -> None:
        # Started while the collector loads its probes: it waits for the event socket.
        control = events.replace("events.sock", "control.sock")
        started.append(subprocess.Popen(
            [sys.executable, "-m", "roguewatch.evaluator", "--events", events,
             "--control", control,
             "--alerts", endpoint, "--alerts-file", f"{tmpdir}/alerts.jsonl", "--no-journal",
             "--quiet", "--ready-fd", str(w)],
            pass_fds=(w,), stderr=subprocess.PIPE, preexec_fn=die_with_parent,
        ))  # fmt: skip
        os.close(w)

    try:
        watcher = sessions.start_private_collector(alongside=start_evaluator)
    except sessions.SessionError:
        for p in started:
            p.kill()
        raise
    proc = started[0]
    if not readiness.wait(r, proc):
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        watcher.close()
        raise RunError(f"the evaluator did not start: {err}")
    return Monitor(watcher, endpoint, proc, tmpdir)


@dataclass
class Summary:
    alerts: list[dict] = field(default_factory=list)
    survivors_found: list[int] = field(default_factory=list)
    survivors_left: int = 0
    swept: int = 0

    def text(self, mode: str, status: int) -> str:
        by_cat = Counter(a["category"] for a in self.alerts)
        actions = Counter(a["action"] for a in self.alerts if a["action"] != "alert")
        killed = sum(a.get("killed", 0) for a in self.alerts) + self.swept
        cats = ", ".join(f"{n} {c}" for c, n in sorted(by_cat.items())) or "none"
        acts = ", ".join(f"{n} {a}" for a, n in sorted(actions.items())) or "none"
        return (
            f"roguewatch: session ended ({mode} mode, exit status {status}). "
            f"Alerts: {len(self.alerts)} ({cats}). Actions: {acts}. "
            f"Processes killed: {killed}. Still alive when the agent's root exited: "
            f"{len(self.survivors_found)}; survivors now: {self.survivors_left}."
        )


def _child_setup(user: pwd.struct_passwd | None) -> None:
    """In the forked child, before exec: Landlock, then drop to the agent's user.

    (The launcher already moved it into the session's cgroup, before it was tracked: its
    own move is not the agent leaving a cgroup.)"""
    landlock.restrict_self(scope_signals=True, scope_abstract_unix=True)
    if user is not None:
        os.initgroups(user.pw_name, user.pw_gid)
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
        os.environ.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.command: list[str] = args.command
        if os.geteuid() != 0:
            raise RunError("run needs root (it loads BPF probes and creates cgroups): use sudo")
        if not self.command:
            raise RunError("no command given: roguewatch run [OPTIONS] -- CMD [ARG...]")
        try:
            self.policy = policy_mod.load(args.policy) if args.policy else policy_mod.default()
        except policy_mod.PolicyError as exc:
            raise RunError(f"bad policy: {exc}") from None
        self.mode = "observe" if args.observe or self.policy.mode == "observe" else "enforce"
        self.user = None
        if args.user:
            try:
                self.user = pwd.getpwnam(args.user)
            except KeyError:
                raise RunError(f"no user named {args.user!r} on this host") from None
        if shutil.which(self.command[0]) is None and not os.path.exists(self.command[0]):
            raise RunError(f"command not found: {self.command[0]}")
        if landlock.abi() < 6:
            raise RunError("this kernel's Landlock cannot scope signals (ABI 6 needed): "
                           "see `roguewatch doctor`")  # fmt: skip
        self.name = args.name or os.path.basename(self.command[0])
        self.session = new_session_id()
        self.summary = Summary()
        self.alert_file = open(args.alerts, "a") if args.alerts else None  # noqa: SIM115

    def _print(self, alert: dict) -> None:
        self.summary.alerts.append(alert)
        line = json.dumps(alert, separators=(",", ":"))
        if self.alert_file is not None:
            self.alert_file.write(line + "\n")
            self.alert_file.flush()
        print(line if self.args.json else alerts.human(alert, sys.stderr.isatty()),
              file=sys.stderr, flush=True)  # fmt: skip

    def _drain_alerts(self, sub: zmq.Socket, timeout_ms: int) -> int:
        n = 0
        while sub.poll(timeout_ms):
            timeout_ms = 0
            try:
                alert = msgpack.unpackb(sub.recv(), raw=False)
            except Exception:
                continue
            if alert and alert.get("session") == f"{self.session:x}":
                self._print(alert)
                n += 1
        return n

    def execute(self) -> int:
        monitor = start_monitor()
        control = monitor.watcher.control
        # The launcher and our evaluator are roguewatch too: signals and ptrace aimed at them
        # are guard events, and a session process that tries is killed in the kernel.
        for pid in (os.getpid(), monitor.evaluator.pid if monitor.evaluator else 0):
            if pid:
                try:
                    control.request("guard", pid=pid)
                except ControlError:
                    pass
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(monitor.alerts_endpoint)
        sub.poll(1000)  # the welcome: our subscription is active
        self._drain_alerts(sub, 0)
        cg = cgroups.SessionCgroup.create(f"{self.name}-{self.session:x}"[:64])
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        pol = {
            "egress_allow": list(self.policy.egress_allow), "protect": list(self.policy.protect),
            "mode": self.mode, "lists": self.policy.lists,
        }  # fmt: skip

        def register(pid: int) -> int:
            try:
                cg.add(pid)
                control.request("register", pid=pid, session=self.session, name=self.name,
                                cgroup=cg.path, mode=self.mode, policy=pol)  # fmt: skip
                if self.mode == "enforce":
                    control.request("attach_egress", session=self.session, cgroup=cg.path,
                                    allow=list(self.policy.egress_allow))  # fmt: skip
            except (ControlError, cgroups.CgroupError) as exc:
                raise sessions.SessionError(f"cannot set up the session: {exc}") from None
            return self.session

        status = 0
        try:
            pid, _ = sessions.spawn_in_session(
                self.command, register, preexec=lambda: _child_setup(self.user)
            )
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda s, _f: os.kill(pid, s))
            while True:
                self._drain_alerts(sub, 100)
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = sessions.exit_status(st)
                    break
                self._reap()
            self._end(control, cg, sub, pid)
        finally:
            try:
                control.request("release", session=self.session)
            except ControlError:
                pass
            self._reap()
            try:
                cg.remove()
            except cgroups.CgroupError:
                pass
            sub.close(0)
            monitor.close()
            if self.alert_file is not None:
                self.alert_file.close()
        print(self.summary.text(self.mode, status), file=sys.stderr, flush=True)
        return status

    def _reap(self) -> None:
        """As subreaper we inherit the agent's orphans: collect their exit statuses."""
        while True:
            try:
                done, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not done:
                return

    def _end(self, control, cg: cgroups.SessionCgroup, sub: zmq.Socket, root: int) -> None:
        """The root exited: name the survivors, let the rules act, then verify the end."""
        try:
            reply = control.request("session_end", session=self.session, root=root)
            self.summary.survivors_found = list(reply.get("survivors", []))
        except ControlError:
            self.summary.survivors_found = cg.pids()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # the alerts (and kills) for the survivors
            if not self._drain_alerts(sub, 300) and (not cg.populated() or self.mode != "enforce"):
                break
        if self.mode == "enforce" and cg.populated():
            # Belt and braces: whatever the rules did, nothing of the session outlives it.
            self.summary.swept = cg.kill()
            cg.wait_empty(2.0)
        self._reap()
        self.summary.survivors_left = len(cg.pids())


def main(args: argparse.Namespace) -> int:
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    try:
        return Run(args).execute()
    except (RunError, sessions.SessionError, cgroups.CgroupError, landlock.LandlockError) as exc:
        print(f"roguewatch run: {exc}", file=sys.stderr)
        return 2
