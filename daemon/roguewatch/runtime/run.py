"""`roguewatch run`: one agent, watched and stopped, with or without a running service.

Owns the launch of an agent session and its verified end. Before the agent's first
instruction: a cgroup v2 leaf of its own, its pid in the kernel's session map, the policy's
egress programs on that cgroup (enforce mode), a Landlock domain that keeps it from
signalling or ptracing anything outside it and from writing to the monitor's own paths, the
cgroup filesystem and bpffs (and, with the policy's ``writable:``, outside its roots), and
only then the exec (as ``--user`` when given). The launcher is child subreaper, so
double-forked descendants stay its children. At the end: survivors are named (rule
`persistence_process_survives_session`), killed in enforce mode, and the summary says how
many were left: zero.

Uses the running roguewatchd when its control socket answers; otherwise it starts a
collector and an evaluator of its own for the session's lifetime.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from roguewatch.core import paths
from roguewatch.core.identity import new_session_id
from roguewatch.runtime import components, launcher, readiness

if TYPE_CHECKING:
    import zmq

    from roguewatch.outputs import alerts
    from roguewatch.respond import cgroups, landlock, seccomp
    from roguewatch.stream import sessionstore

# Start-up time to the agent's exec is a bar (bench/README.md), and its longest part is the
# private collector's own start: run starts it first and imports the rest of what it needs
# (ZeroMQ, msgpack, the policy parser, cgroups, Landlock) while it loads.

PR_SET_CHILD_SUBREAPER = 36
SERVICE_CONTROL_SOCKET = paths.CONTROL_ENDPOINT.removeprefix("ipc://")
# How long the launcher waits for its alert subscription to be live before the agent's exec.
WELCOME_TIMEOUT_S = 1.0
# How long a drill's end waits for its `shutdown_drill` alert to come back from the evaluator.
DRILL_ALERT_WAIT_S = 5.0


class RunError(Exception):
    """The launcher's own failure (exit 2), with what to do."""


@dataclass
class Monitor:
    """The collector and evaluator this session uses (the service's, or our own).

    Our own are started by ``launch_monitor`` and not waited for: ``wait`` says when both
    are ready (the collector's probes attached, the evaluator subscribed)."""

    alerts_endpoint: str
    watcher: launcher.Watcher | None = None
    pending: launcher.PendingCollector | None = None
    evaluator: subprocess.Popen | None = None
    evaluator_ready: int | None = None
    evaluator_cmd: list[str] | None = None  # how our own evaluator was started (restarts)

    def wait(self) -> launcher.Watcher:
        if self.watcher is None:
            assert self.pending is not None
            try:
                self.watcher = self.pending.wait()
            except launcher.SessionError:
                self.close()
                raise
            self.pending = None
        if self.evaluator_ready is not None:
            r, self.evaluator_ready = self.evaluator_ready, None
            assert self.evaluator is not None
            if not readiness.wait(r, self.evaluator):
                proc = self.evaluator
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                self.close()
                raise RunError(f"the evaluator did not start: {err}")
            components.forward_stderr(self.evaluator, "evaluator")
        return self.watcher

    def close(self) -> None:
        if self.evaluator is not None and self.evaluator.poll() is None:
            self.evaluator.terminate()
        if self.evaluator_ready is not None:
            os.close(self.evaluator_ready)
            self.evaluator_ready = None
        if self.pending is not None:
            self.pending.abandon()
            self.pending = None
        if self.watcher is not None:
            self.watcher.close()


def launch_monitor() -> Monitor:
    """The running roguewatchd's collector and evaluator, or our own, started (not waited
    for): a collector, and an evaluator that subscribes to it as soon as its socket exists."""
    if os.path.exists(SERVICE_CONTROL_SOCKET):
        from roguewatch.outputs import alerts
        from roguewatch.stream import bus
        from roguewatch.stream.control import running

        client = running()
        if client is not None:
            return Monitor(alerts.ALERTS_ENDPOINT, launcher.Watcher(bus.EVENTS_ENDPOINT, client))
    pending = launcher.launch_private_collector()
    # Everything of this run in the collector's root-only directory (removed at the end):
    # its sockets, the evaluator's alert socket and alert file.
    endpoint = f"ipc://{pending.tmpdir}/alerts.sock"
    r, w = os.pipe()
    cmd = components.python_cmd(components.EVALUATOR, "--events", pending.events,
                                "--control", pending.control, "--alerts", endpoint,
                                "--alerts-file", f"{pending.tmpdir}/alerts.jsonl",
                                "--no-journal", "--quiet")  # fmt: skip
    try:
        evaluator = components.popen(
            [*cmd, "--ready-fd", str(w)],
            pass_fds=(w,), stderr=subprocess.PIPE, preexec_fn=components.component_preexec,
        )  # fmt: skip
    except BaseException:
        os.close(r)
        pending.abandon()
        raise
    finally:
        os.close(w)
    return Monitor(endpoint, pending=pending, evaluator=evaluator, evaluator_ready=r,
                   evaluator_cmd=cmd)  # fmt: skip


@dataclass
class Summary:
    alerts: list[dict] = field(default_factory=list)
    survivors_found: list[int] = field(default_factory=list)
    survivors_left: int = 0
    swept: int = 0
    drill: str = ""  # the shutdown drill's record in one line (`--drill-after`)
    record: str = ""  # the session whose record was kept (`roguewatch report SESSION`)

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
            + (f" Drill: {self.drill}." if self.drill else "")
            + (f" Report: roguewatch report {self.record}." if self.record else "")
        )


def _child_setup(
    ruleset: landlock.Ruleset, user: pwd.struct_passwd | None, refuse: tuple[str, ...],
    report: socket.socket | None,
) -> None:  # fmt: skip
    """In the forked child, before exec: the Landlock domain the launcher built, the seccomp
    filter (installed as root, so the agent keeps setuid programs; its notification fd goes
    to the launcher over ``report``), then drop to the agent's user.

    (The launcher already moved it into the session's cgroup, before it was tracked: its
    own move is not the agent leaving a cgroup.)"""
    from roguewatch.respond import landlock

    try:
        ruleset.enforce()
    except landlock.LandlockError as exc:
        os.write(2, f"roguewatch run: {exc}\n".encode())
        os._exit(126)
    if refuse and report is not None:
        from roguewatch.respond import seccomp

        try:
            seccomp.install(refuse, report)
        except seccomp.SeccompError as exc:
            os.write(2, f"roguewatch run: {exc}\n".encode())
            os._exit(126)
        report.close()
    if user is not None:
        os.initgroups(user.pw_name, user.pw_gid)
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
        os.environ.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        from roguewatch.respond import landlock

        self.args = args
        self.command: list[str] = args.command
        if os.geteuid() != 0:
            raise RunError("run needs root (it loads BPF probes and creates cgroups): use sudo")
        if not self.command:
            raise RunError("no command given: roguewatch run [OPTIONS] -- CMD [ARG...]")
        if args.policy and not os.path.isfile(args.policy):
            raise RunError(f"bad policy: {args.policy}: no such file")
        self.policy = None  # parsed while the collector starts (load_policy)
        self.mode = "observe" if args.observe else "enforce"
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
        self.session = 0  # drawn once the collector is on its way (its module is not light)
        self.summary = Summary()
        self._root_status: int | None = None  # the agent's root's wait status, once it exited
        self.recorder: sessionstore.Recorder | None = None  # the session's kept record
        self.record_alerts: alerts.AlertFile | None = None
        self.alert_file = open(args.alerts, "a") if args.alerts else None  # noqa: SIM115
        self.console: alerts.Console | None = None  # (made at the first alert: start-up)

    def load_policy(self) -> None:
        from roguewatch.policy import policy as policy_mod

        try:
            self.policy = (
                policy_mod.load(self.args.policy) if self.args.policy else policy_mod.default()
            )
        except policy_mod.PolicyError as exc:
            raise RunError(f"bad policy: {exc}") from None
        if self.policy.mode == "observe":
            self.mode = "observe"

    def build_sandbox(self) -> landlock.Ruleset:
        """The agent's Landlock domain, built here (a bad writable root is the launcher's
        error, before anything runs) and enforced in the forked child. In either mode: the
        sandbox is not a rule's action."""
        from roguewatch.core import chain
        from roguewatch.respond import landlock
        from roguewatch.respond.selfdefense import write_denied_paths

        writable = self.policy.writable
        chain.load_key()  # (made now if new: its directory is what the agent may not read)
        return landlock.Ruleset.build(
            scope_signals=True,
            scope_abstract_unix=True,
            writable=None if writable is None else list(writable),
            deny_writes=write_denied_paths(),
            deny_reads=[paths.KEYS_DIR],
        )

    def _print(self, alert: dict) -> None:
        from roguewatch.outputs import alerts

        self.summary.alerts.append(alert)
        if self.record_alerts is not None:
            self.record_alerts.send(alert)
        if self.alert_file is not None:
            self.alert_file.write(alerts.to_json(alert) + "\n")
            self.alert_file.flush()
        if self.console is None:
            self.console = alerts.Console(sys.stderr, as_json=self.args.json)
        self.console.send(alert)

    def _refusals(self, report: socket.socket, endpoint: str) -> seccomp.Responder | None:
        """The launcher's side of the agent's seccomp filter: each refused call answered
        EPERM and reported to the collector, as the event the probes could not see."""
        from roguewatch.respond import seccomp
        from roguewatch.stream.control import ControlClient, ControlError

        try:
            fd = seccomp.receive_fd(report)
        except seccomp.SeccompError as exc:
            print(f"roguewatch run: {exc}", file=sys.stderr, flush=True)
            return None
        clients: dict[str, ControlClient] = {}  # one, made in the responder's own thread

        def report_refusal(r: seccomp.Refusal) -> None:
            try:
                client = clients.get("c") or clients.setdefault("c", ControlClient(endpoint))
                client.request("refused", pid=r.pid, call=r.syscall, nr=r.nr, args=list(r.args))
            except ControlError:
                clients.pop("c", None)  # (a timed-out REQ socket cannot be used again)

        return seccomp.Responder(fd, report_refusal)

    def _drain_alerts(self, sub: zmq.Socket, timeout_ms: int) -> int:
        import msgpack

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
        monitor = launch_monitor()
        # While the collector loads its probes and snapshots the baselines, and the evaluator
        # loads the rules: everything of ours that does not need them. (A bad policy is found
        # here too: the monitor just started is stopped, and no session ran.)
        cg = sub = control = sandbox = refusals = None
        try:
            self.load_policy()
            sandbox = self.build_sandbox()
            import zmq

            from roguewatch.respond import cgroups
            from roguewatch.stream.control import ControlError

            self.session = new_session_id()
            sub = zmq.Context.instance().socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RECONNECT_IVL, 20)  # the evaluator may not have bound it yet
            sub.connect(monitor.alerts_endpoint)
            cg = cgroups.SessionCgroup.create(f"{self.name}-{self.session:x}"[:64])
            ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            pol = {
                "egress_allow": list(self.policy.egress_allow),
                "protect": list(self.policy.protect), "mode": self.mode,
                "lists": self.policy.lists, "on_monitor_loss": self.policy.on_monitor_loss,
            }  # fmt: skip
            watcher = monitor.wait()
            control = watcher.control

            # The launcher and our evaluator are roguewatch too: signals and ptrace aimed at
            # them are guard events, and a session process that tries is killed in the kernel.
            def guard() -> None:
                w = monitor.watcher
                for pid in (os.getpid(), monitor.evaluator.pid if monitor.evaluator else 0):
                    if pid and w is not None:
                        try:
                            w.control.request("guard", pid=pid)
                        except ControlError:
                            pass

            guard()
            session_cg = cg

            def register(pid: int) -> int:
                try:
                    session_cg.add(pid)
                    # (waits for the collector's baseline snapshot: a change made before it
                    # would become the baseline)
                    control.request("register", pid=pid, session=self.session, name=self.name,
                                    cgroup=session_cg.path, mode=self.mode,
                                    policy=pol)  # fmt: skip
                    if self.mode == "enforce":
                        control.request("attach_egress", session=self.session,
                                        cgroup=session_cg.path,
                                        allow=list(self.policy.egress_allow))  # fmt: skip
                except (ControlError, cgroups.CgroupError) as exc:
                    raise launcher.SessionError(f"cannot set up the session: {exc}") from None
                # Our alert subscription is live (the evaluator's welcome) before the agent
                # runs: it was connected at the start, so this rarely waits.
                sub.poll(int(WELCOME_TIMEOUT_S * 1000))
                self._drain_alerts(sub, 0)
                return self.session

            status = 0
            ruleset = sandbox
            refuse = tuple(self.policy.refuse)
            theirs = None
            if refuse:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._keep_record(watcher)
            pid, _ = launcher.spawn_in_session(
                self.command, register,
                preexec=lambda: _child_setup(ruleset, self.user, refuse, theirs),
            )  # fmt: skip
            sandbox.close()
            if theirs is not None:
                theirs.close()
                refusals = self._refusals(ours, watcher.control.endpoint)
                ours.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda s, _f: os.kill(pid, s))
            watcher.share_baselines()  # the agent runs: for the next run's start-up
            from roguewatch.runtime.coverage import RunCoverage

            cover = RunCoverage(monitor, self.session, cg, self.mode,
                                self.policy.on_monitor_loss, self._print, guard)  # fmt: skip
            after = getattr(self.args, "drill_after", None)
            drill_at = None if after is None else time.monotonic() + after
            while True:
                self._drain_alerts(sub, 50)
                if self._poll_root(pid):
                    status = launcher.exit_status(self._root_status)
                    break
                cover.check()
                if drill_at is not None and time.monotonic() >= drill_at:
                    drill_at = None
                    self._drill(watcher, cg, pid, sub)
            control = watcher.control  # (a new one, if the collector was started again)
            control.set_timeout(2000)  # the end must not hang on a monitor that is gone
            if cover.lost:
                print(f"roguewatch run: {cover.lost}, and the monitor is not back: the "
                      "session ends unwatched", file=sys.stderr, flush=True)  # fmt: skip
            self._end(control, cg, sub, pid)
        finally:
            if refusals is not None:
                refusals.close()
            if sandbox is not None:
                sandbox.close()
            if control is not None:
                try:
                    control.request("release", session=self.session)
                except ControlError:
                    pass
            self._reap()
            if cg is not None:
                try:
                    cg.remove()
                except cgroups.CgroupError:
                    pass
            if sub is not None:
                sub.close(0)
            self._close_record()
            monitor.close()
            if self.alert_file is not None:
                self.alert_file.close()
        print(self.summary.text(self.mode, status), file=sys.stderr, flush=True)
        return status

    def _keep_record(self, watcher: launcher.Watcher) -> None:
        """The session's kept record (stream/sessionstore.py): its events and alerts, for
        `roguewatch report SESSION` after it ended."""
        from roguewatch.outputs import alerts
        from roguewatch.stream import sessionstore

        self.recorder = sessionstore.Recorder.start(watcher.events, self.session, self.command)
        if self.recorder is not None:
            try:
                self.record_alerts = alerts.AlertFile(self.recorder.alerts_path, chained=True,
                                                      max_bytes=1 << 40)  # fmt: skip
            except OSError:
                self.record_alerts = None

    def _close_record(self) -> None:
        if self.record_alerts is not None:
            self.record_alerts.close()
        if self.recorder is not None:
            self.recorder.stop()
            self.summary.record = f"{self.session:x}"

    def _poll_root(self, root: int) -> bool:
        """Whether the agent's root has exited (its wait status kept), our other children
        reaped meanwhile."""
        if self._root_status is None:
            done, st = os.waitpid(root, os.WNOHANG)
            if done:
                self._root_status = st
        if self._root_status is None:
            self._reap()
        return self._root_status is not None

    def _drill(self, watcher: launcher.Watcher, cg: cgroups.SessionCgroup, root: int,
               sub: zmq.Socket) -> None:  # fmt: skip
        """`--drill-after`: a shutdown drill now (respond/drill.py), our loop's work (alerts,
        the root's wait status) done while it watches."""
        from roguewatch.respond import drill

        entry = {"session": f"{self.session:x}", "name": self.name, "root": root,
                 "cgroup": cg.path}  # fmt: skip
        try:
            record, delivered = drill.drill_session(
                watcher.control, entry, events=watcher.events,
                deadline=getattr(self.args, "drill_deadline", 10.0),
                shutdown=list(self.policy.shutdown), protect=self.policy.protect,
                tick=lambda: (self._drain_alerts(sub, 0), self._poll_root(root)),
                monitor_pids=[os.getpid()],
            )  # fmt: skip
        except (drill.DrillError, cgroups.CgroupError) as exc:
            self.summary.drill = f"the drill could not be carried out: {exc}"
            return
        from roguewatch.outputs.render import printable

        self.summary.drill = printable(record.summary())
        # Its alert (the evaluator's, from the collector's `drill` event) in this session's
        # summary and alert file: wait for it a little (the session has ended meanwhile).
        until = time.monotonic() + DRILL_ALERT_WAIT_S
        while (
            delivered
            and time.monotonic() < until
            and not any(a.get("rule") == "shutdown_drill" for a in self.summary.alerts)
        ):
            self._drain_alerts(sub, 100)
            self._poll_root(root)

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
        from roguewatch.stream.control import ControlError

        try:
            reply = control.request("session_end", session=self.session, root=root)
            self.summary.survivors_found = list(reply.get("survivors", []))
        except ControlError:
            self.summary.survivors_found = cg.pids()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # the alerts (and kills) for the survivors
            if not self._drain_alerts(sub, 300) and (not cg.populated() or self.mode != "enforce"):
                break
        # The session's processes outside its cgroup (moved out of it): the kill follows the
        # process, not the cgroup. The kernel's session map names them.
        outside = [p for p in self.summary.survivors_found if p not in set(cg.all_pids())]
        if self.mode == "enforce" and (cg.populated() or outside):
            # Belt and braces: whatever the rules did, nothing of the session outlives it.
            self.summary.swept = cg.kill() if cg.populated() else 0
            for pid in outside:
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.summary.swept += 1
                except ProcessLookupError:
                    pass
            cg.wait_empty(2.0)
        self._reap()
        alive = [p for p in outside if os.path.exists(f"/proc/{p}")]
        self.summary.survivors_left = len(set(cg.all_pids()) | set(alive))
