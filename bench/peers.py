"""roguewatch beside auditd and bpftrace: the same workloads, in the same run (issue 15).

Run as root from the repository: ``.venv/bin/python bench/peers.py [--quick] [--blocks N]``.

Configurations, alternated in blocks (A B C D E, A B C D E, ...), each block running every
workload once under each configuration:

- ``unmonitored``: nothing watches;
- ``auditd``: Debian's auditd (its own auditd.conf but for a private log file that never
  rotates) with rules for execve, connect and write-opens (open/openat with O_WRONLY or
  O_RDWR, creat). Audit rules cannot be scoped to a session: they watch every process;
- ``bpftrace``: a script on the same calls' sys_enter tracepoints printing one line per
  event to a file (``bpftrace -o``), every process too;
- ``rw-untracked``: roguewatchd running with its embedded defaults (private sockets and
  state), the workload in no session;
- ``rw-tracked``: the same service, each workload run adopted as a session (observe mode:
  every event is evaluated against the default rules, nothing is killed) before it starts.

Workloads: fork+exec, connect to a closed loopback port, file create+write (on a tmpfs the
bench mounts and unmounts for each run), git (init, then 20 commits of 200 new files), a
pytest run of 400 generated tests and the 51-file C build of bench/run.py (bench/workloads.py
holds them). Each is started behind a gate (``sh -c 'read; exec ...'``) so that a session can
be made of it before its first instruction; its wall time runs from the gate's opening to its
exit. Figures: the median over blocks of each workload's wall time, as a ratio to unmonitored;
events seen and lost per configuration from each tool's own counters (auditd: the records in
its log and ``auditctl -s``'s lost; bpftrace: its output lines and its "Lost N events";
roguewatch: its collector's and evaluator's counters).

Writes bench/out/peers-latest.json (and a dated copy), the markdown table to
bench/out/peers-table.md and the bar chart to bench/peers.png (bench/out/peers-quick.png with
--quick). The host is left as found: auditd stopped, our audit rules deleted, the audit
backlog limit and enabled flag as they were; bpftrace and the service stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import log, proc_cpu
from roguewatch.stream.control import ControlClient
from run import foreign_bpf_holders, machine, system_busy
from workloads import LOADGEN, OUT, ROOT, build_loadgen, children_cpu, command
from workloads import prepare_workloads as prepare_real

CONFIGS = ("unmonitored", "auditd", "bpftrace", "rw-untracked", "rw-tracked")
WATCHES = {
    "unmonitored": "nothing",
    "auditd": "every process: execve, connect, write-opens; records to a log file on disk",
    "bpftrace": "every process: the same calls' sys_enter tracepoints, a line each to a file",
    "rw-untracked": "roguewatchd (defaults: ~60 syscalls, sched, signals, file watchers); "
    "the workload in no session, so its calls are dropped in the kernel",
    "rw-tracked": "the same service; the workload a session: all its events decoded, "
    "published and evaluated",
}
LABELS = {
    "unmonitored": "unmonitored",
    "auditd": "auditd",
    "bpftrace": "bpftrace",
    "rw-untracked": "roguewatch, untracked",
    "rw-tracked": "roguewatch, tracked",
}
STORMS = ("forkexec", "connect", "create")
REAL = ("git-commits", "pytest", "c-build")
WORKLOADS = (*STORMS, *REAL)
TITLES = {
    "forkexec": "fork+exec",
    "connect": "connect",
    "create": "create+write",
    "git-commits": "git",
    "pytest": "pytest",
    "c-build": "C build",
}


def storm_sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"forkexec": 500, "connect": 10_000, "create": 20_000}
    return {"forkexec": 2_000, "connect": 50_000, "create": 100_000}


GATE = ["sh", "-c", 'read -r _ && exec "$0" "$@"']


def sh(*cmd: str, check: bool = True) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def uptime() -> str:
    return sh("uptime").strip()


def tree(pid: int) -> list[int]:
    """A process and all its descendants now alive."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants now alive."""
    return sum(proc_cpu(p) for p in tree(pid))


def kthread(comm: str) -> int | None:
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/comm") as f:
                if f.read().strip() == comm:
                    return int(name)
    return None


# -- the monitors -----------------------------------------------------------------------------


class Monitor:
    """Nothing watches (unmonitored); the base of the others."""

    name = "unmonitored"
    pid: int | None = None

    def start(self) -> None:
        pass

    def register(self, pid: int) -> int | None:
        return None

    def cpu(self) -> float:
        return 0.0

    def counters(self) -> dict:
        return {}

    def stop(self) -> dict:
        """Stopped; what it saw and lost while it ran."""
        return {"seen": 0, "lost": 0}


AUDIT_KEYS = {"rwbench_exec": "exec", "rwbench_connect": "connect", "rwbench_open": "open"}
AUDIT_RULES = [
    ["-a", "always,exit", "-F", "arch=b64", "-S", "execve", "-k", "rwbench_exec"],
    ["-a", "always,exit", "-F", "arch=b64", "-S", "connect", "-k", "rwbench_connect"],
    # write-opens: O_WRONLY (1) or O_RDWR (2) in openat's flags (a2), open's (a1); creat
    ["-a", "always,exit", "-F", "arch=b64", "-S", "openat", "-F", "a2&0x3", "-k", "rwbench_open"],
    ["-a", "always,exit", "-F", "arch=b64", "-S", "open", "-F", "a1&0x3", "-k", "rwbench_open"],
    ["-a", "always,exit", "-F", "arch=b64", "-S", "creat", "-k", "rwbench_open"],
]


def count_audit_log(path: Path) -> tuple[int, dict[str, int]]:
    """(records, events by type) in an audit log: an event is a SYSCALL record of our keys."""
    by_key = dict.fromkeys(AUDIT_KEYS.values(), 0)
    records = 0
    with contextlib.suppress(OSError), open(path, "rb") as f:
        for line in f:
            records += 1
            if line.startswith(b"type=SYSCALL"):
                m = re.search(rb'key="(\w+)"', line)
                if m and m.group(1).decode() in AUDIT_KEYS:
                    by_key[AUDIT_KEYS[m.group(1).decode()]] += 1
    return records, by_key


def audit_status() -> dict[str, int]:
    out = {}
    for line in sh("auditctl", "-s").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


class Auditd(Monitor):
    """auditd started for its blocks with a private configuration, stopped after them."""

    name = "auditd"

    def __init__(self, work: Path) -> None:
        self.conf_dir = work / "auditd"
        self.conf_dir.mkdir(exist_ok=True)
        # On disk, as an audit log is: /var/tmp is not a tmpfs here.
        self.log_dir = Path(tempfile.mkdtemp(prefix="rwbench-audit-", dir="/var/tmp"))
        conf = Path("/etc/audit/auditd.conf").read_text()
        conf = re.sub(r"(?m)^log_file\s*=.*$", f"log_file = {self.log_dir}/audit.log", conf)
        # One file that never rotates: every record of a block is counted.
        conf = re.sub(r"(?m)^max_log_file_action\s*=.*$", "max_log_file_action = IGNORE", conf)
        path = self.conf_dir / "auditd.conf"
        path.write_text(conf)
        path.chmod(0o640)
        self.proc: subprocess.Popen | None = None
        self.before: dict[str, int] = {}

    def start(self) -> None:
        self.before = audit_status()
        if self.before.get("pid"):
            raise RuntimeError(
                f"an audit daemon already runs (pid {self.before['pid']}); the bench does not "
                "touch it: stop it (systemctl stop auditd) for the comparison"
            )
        for f in self.log_dir.iterdir():
            f.unlink()
        self.proc = subprocess.Popen(
            ["auditd", "-n", "-c", str(self.conf_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        t_end = time.monotonic() + 20
        while audit_status().get("pid") != self.proc.pid:
            if self.proc.poll() is not None or time.monotonic() > t_end:
                self._kill()
                raise RuntimeError("auditd did not start (it did not register with the kernel)")
            time.sleep(0.1)
        self.pid = self.proc.pid
        # Debian's audit.rules sets a backlog of 8192 (the kernel's default is 64).
        sh("auditctl", "-b", "8192")
        for rule in AUDIT_RULES:
            sh("auditctl", *rule)
        self.s0 = audit_status()
        self.kauditd = kthread("kauditd")
        self.cpu0 = self.cpu()

    def cpu(self) -> float:
        return (proc_cpu(self.pid) if self.pid else 0.0) + (
            proc_cpu(self.kauditd) if getattr(self, "kauditd", None) else 0.0
        )

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> dict:
        s1 = audit_status()
        self.restore_host()
        self._kill()
        # Off again at once: with audit enabled, every syscall of every process is checked
        # against the (now empty) rules, and the other configurations would pay for it.
        self.restore_enabled()
        self.pid = None
        log_file = self.log_dir / "audit.log"
        records, by_key = count_audit_log(log_file)
        size = log_file.stat().st_size if log_file.exists() else 0
        for f in self.log_dir.iterdir():
            f.unlink()
        return {
            "seen": sum(by_key.values()),
            "seen_by_type": by_key,
            "records": records,
            "log_bytes": size,
            "lost": s1.get("lost", 0) - self.s0.get("lost", 0),
            "backlog_wait_time_actual": s1.get("backlog_wait_time_actual", 0)
            - self.s0.get("backlog_wait_time_actual", 0),
        }

    def restore_host(self) -> None:
        """Our rules deleted, the backlog limit and the enabled flag as they were."""
        for rule in AUDIT_RULES:
            sh("auditctl", "-d", *rule[1:], check=False)
        if self.before:
            sh("auditctl", "-b", str(self.before.get("backlog_limit", 64)), check=False)

    def restore_enabled(self) -> None:
        if self.before:
            sh("auditctl", "-e", str(self.before.get("enabled", 0)), check=False)

    def close(self) -> None:
        self._kill()
        self.restore_host()
        self.restore_enabled()
        shutil.rmtree(self.log_dir, ignore_errors=True)


BPFTRACE_SCRIPT = r"""
tracepoint:syscalls:sys_enter_execve
{ printf("exec %d %s %s\n", pid, comm, str(args->filename)); }
tracepoint:syscalls:sys_enter_connect
{
    $a = (struct sockaddr_in *)args->uservaddr;
    if ($a->sin_family == 2) {
        printf("connect %d %s %s:%d\n", pid, comm, ntop($a->sin_addr.s_addr),
               bswap($a->sin_port));
    } else {
        printf("connect %d %s family %d\n", pid, comm, $a->sin_family);
    }
}
tracepoint:syscalls:sys_enter_openat /args->flags & 3/
{ printf("open %d %s %s\n", pid, comm, str(args->filename)); }
tracepoint:syscalls:sys_enter_open /args->flags & 3/
{ printf("open %d %s %s\n", pid, comm, str(args->filename)); }
tracepoint:syscalls:sys_enter_creat
{ printf("open %d %s %s\n", pid, comm, str(args->pathname)); }
"""
BPFTRACE_PROBES = 5


def perf_event_fds(pid: int) -> int:
    n = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[perf_event]":
                    n += 1
    return n


class Bpftrace(Monitor):
    name = "bpftrace"

    def __init__(self, work: Path) -> None:
        self.script = work / "peers.bt"
        self.script.write_text(BPFTRACE_SCRIPT)
        self.out = work / "bpftrace.out"
        self.err = work / "bpftrace.err"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                ["bpftrace", "-o", str(self.out), str(self.script)],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.pid = self.proc.pid
        # Attached when it holds a perf event per probe and one per CPU for its output ring
        # (its output is buffered: there is no line to wait for).
        want = BPFTRACE_PROBES + (os.cpu_count() or 1)
        t_end = time.monotonic() + 60
        while perf_event_fds(self.pid) < want:
            if self.proc.poll() is not None or time.monotonic() > t_end:
                self._kill()
                raise RuntimeError(f"bpftrace did not attach: {self.err.read_text()[-1000:]}")
            time.sleep(0.05)
        time.sleep(0.2)

    def cpu(self) -> float:
        return proc_cpu(self.pid) if self.pid else 0.0

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> dict:
        self._kill()
        self.pid = None
        by_type = {"exec": 0, "connect": 0, "open": 0}
        lost = 0
        with contextlib.suppress(OSError), open(self.out, "rb") as f:
            for line in f:
                kind = line.split(b" ", 1)[0].decode(errors="replace")
                if kind in by_type:
                    by_type[kind] += 1
                elif m := re.match(rb"Lost (\d+) events", line):
                    lost += int(m.group(1))
        with contextlib.suppress(OSError):
            for m in re.finditer(r"Lost (\d+) events", self.err.read_text()):
                lost += int(m.group(1))
        with contextlib.suppress(OSError):
            self.out.unlink()
        return {"seen": sum(by_type.values()), "seen_by_type": by_type, "lost": lost}

    def close(self) -> None:
        self._kill()


class Roguewatch(Monitor):
    """roguewatchd with its embedded defaults on private sockets and state (a service already
    running on the host is not disturbed); ``tracked`` puts each workload in a session."""

    def __init__(self, tracked: bool) -> None:
        self.tracked = tracked
        self.name = "rw-tracked" if tracked else "rw-untracked"
        self.proc: subprocess.Popen | None = None
        self.dir: str | None = None
        self.sessions = 0

    def start(self) -> None:
        d = self.dir = tempfile.mkdtemp(prefix="rwbench-peers-", dir="/run")
        os.chmod(d, 0o700)
        cfg = Path(d) / "roguewatchd.yaml"
        cfg.write_text(
            f"events_endpoint: ipc://{d}/run/events.sock\n"
            f"control_endpoint: ipc://{d}/run/control.sock\n"
            f"alerts_endpoint: ipc://{d}/run/alerts.sock\n"
            f"alerts_file: {d}/log/alerts.jsonl\nstatus_file: {d}/run/status.json\n"
            f"state_dir: {d}/state\njournald: false\nprint_alerts: false\n"
        )
        self.control_ep = f"ipc://{d}/run/control.sock"
        self.alerts_file = Path(d) / "log" / "alerts.jsonl"
        self.alerts_seen = 0
        self.status_file = Path(d) / "run" / "status.json"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(f"{d}/notify.sock")
        notify.settimeout(1.0)
        env = {**os.environ, "NOTIFY_SOCKET": f"{d}/notify.sock"}
        self.log_path = OUT / "peers-roguewatchd.log"
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "roguewatchd"), "--config", str(cfg)],
                env=env,
                stdout=logf,
                stderr=logf,
                cwd=ROOT,
            )
        self.pid = self.proc.pid
        t_end = time.monotonic() + 120
        try:
            while True:
                if self.proc.poll() is not None or time.monotonic() > t_end:
                    raise RuntimeError(f"roguewatchd did not get ready: see {self.log_path}")
                try:
                    if "READY=1" in notify.recv(4096).decode(errors="replace").split("\n"):
                        break
                except TimeoutError:
                    continue
        finally:
            notify.close()
        self.ctl = ControlClient(self.control_ep, timeout_ms=30_000)
        # A registration waits for the file watchers' baselines: let them be there first.
        while not self.ctl.request("stats").get("baseline_ready", True):
            if time.monotonic() > t_end:
                raise RuntimeError("roguewatchd's baselines did not get ready")
            time.sleep(0.2)
        self.s0 = self.counters()

    def register(self, pid: int) -> int | None:
        if not self.tracked:
            return None
        self.sessions += 1
        return int(self.ctl.request("register", pid=pid, mode="observe")["session"])

    def cpu(self) -> float:
        return tree_cpu(self.pid) if self.pid else 0.0

    def counters(self) -> dict:
        st = self.ctl.request("stats")
        ev = {}
        with contextlib.suppress(OSError, ValueError):
            ev = json.loads(self.status_file.read_text())
        return {
            "events": int(st["events"]),
            "lost_ring": sum(st["lost_ring"].values()),
            "lost_pending": int(st["lost_pending"]),
            "lost_decode": int(st["lost_decode"]),
            "lost_bus": int(st["lost_bus"]),
            "evaluated": int(ev.get("events", 0)),
            "evaluator_lost": sum((ev.get("lost") or {}).values()),
            "alerts": int(ev.get("alerts", 0)),
        }

    def begin(self) -> None:
        """A new configuration on the same running service: counters from here."""
        self.s0 = self.counters()
        self.sessions = 0

    def alerts_by_rule(self) -> dict[str, int]:
        """The rules of the alerts written since the last call (the JSON-lines alert file)."""
        by_rule: dict[str, int] = {}
        lines = []
        with contextlib.suppress(OSError):
            lines = self.alerts_file.read_text().splitlines()
        for line in lines[self.alerts_seen :]:
            with contextlib.suppress(ValueError):
                a = json.loads(line)
                by_rule[a.get("rule", "?")] = by_rule.get(a.get("rule", "?"), 0) + 1
        self.alerts_seen = len(lines)
        return by_rule

    def stop(self) -> dict:
        """The counters since start() (or begin()); the service keeps running."""
        # The evaluator writes its status file once a second: wait for it to settle.
        time.sleep(1.5)
        s1 = self.counters()
        d = {k: s1[k] - self.s0[k] for k in s1}
        lost = sum(d[k] for k in ("lost_ring", "lost_pending", "lost_decode", "lost_bus"))
        return {
            "seen": d["events"],
            "evaluated": d["evaluated"],
            "alerts": d["alerts"],
            "alerts_by_rule": self.alerts_by_rule(),
            "lost": lost + d["evaluator_lost"],
            "lost_detail": {k: v for k, v in d.items() if k.startswith(("lost", "evaluator"))},
            "sessions": self.sessions,
        }

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.ctl.close()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.pid = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- the workloads ----------------------------------------------------------------------------


class Workloads:
    def __init__(self, work: Path, quick: bool) -> None:
        self.work = work
        self.sizes = storm_sizes(quick)
        self.real = prepare_real(work / "real", pytest_files=16)  # 16 x 25 = 400 tests
        self.mnt = work / "tmpfs"
        self.mnt.mkdir()

    def run(self, name: str, mon: Monitor) -> dict:
        """One run of a workload, gated until `mon` has registered it (when it does)."""
        stdout = subprocess.DEVNULL
        if name in STORMS:
            path = self.mnt if name == "create" else self.work / "storm-file"
            if name == "create":
                sh("mount", "-t", "tmpfs", "-o", "size=1g,mode=0700", "rwbench-peers", str(path))
            cmd, cwd, env = (
                [str(LOADGEN), "storm", name, str(self.sizes[name]), str(path)],
                None,
                None,
            )
            stdout = subprocess.PIPE
        else:
            cmd, cwd = command(name, self.work / "real", self.real)
            env = self.real["env"]
        try:
            p = subprocess.Popen(
                [*GATE, *cmd], stdin=subprocess.PIPE, stdout=stdout, stderr=subprocess.PIPE,
                cwd=cwd, env=env,
            )  # fmt: skip
            session = mon.register(p.pid)
            c0, m0, me0, b0 = children_cpu(), mon.cpu(), proc_cpu(os.getpid()), system_busy()
            t0 = time.monotonic()
            p.stdin.write(b"go\n")
            p.stdin.close()
            p.stdin = None  # communicate() must not flush it
            out, err = p.communicate()
            wall = time.monotonic() - t0
            cpu = children_cpu() - c0
            b1, m1, me1 = system_busy(), mon.cpu(), proc_cpu(os.getpid())
        finally:
            if name == "create":
                sh("umount", str(self.mnt), check=False)
        if p.returncode != 0:
            raise RuntimeError(f"workload {name} exited {p.returncode}: {err.decode()[-1000:]}")
        # What other work on the machine took meanwhile (CPU time that was neither the
        # workload's, nor the monitor's, nor ours), in % of one core: the disturbance.
        ncpu = os.cpu_count() or 1
        busy = (b1[0] - b0[0]) / max(b1[1] - b0[1], 1) * ncpu * wall
        other = max(0.0, busy - cpu - (m1 - m0) - (me1 - me0))
        r = {
            "wall_s": round(wall, 4),
            "cpu_s": round(cpu, 4),
            "monitor_cpu_s": round(m1 - m0, 4),
            "other_pct": round(other / wall * 100, 1) if wall else 0.0,
            "session": session,
        }
        if name in STORMS:
            g = json.loads(out)
            r.update(ok=g["ok"], failed=g["failed"], inner_s=round(g["elapsed_s"], 4))
        return r


# -- the run ----------------------------------------------------------------------------------


def run_block(i: int, monitors: dict[str, Monitor], wl: Workloads, result: dict) -> None:
    rw_running = False
    for cfg in CONFIGS:
        mon = monitors[cfg]
        entry = {
            "block": i,
            "config": cfg,
            "loadavg_before": loadavg(),
            # Other processes holding tracepoint programs (other people's tests), ours left out.
            "foreign_bpf": foreign_bpf_holders(
                {os.getpid(), *(tree(rw.pid) if (rw := monitors["rw-untracked"]).pid else [])}
            ),
        }
        if isinstance(mon, Roguewatch):
            if not rw_running:  # one service for both of roguewatch's configurations
                rw.start()
                rw_running = True
            else:
                rw.begin()
            mon = rw
            mon.tracked = cfg == "rw-tracked"
            mon.name = cfg
        else:
            mon.start()
        cpu0 = mon.cpu()
        runs = {}
        for name in WORKLOADS:
            runs[name] = wl.run(name, mon)
        entry["monitor_cpu_s"] = round(mon.cpu() - cpu0, 3)
        entry["runs"] = runs
        entry["events"] = mon.stop()
        entry["loadavg_after"] = loadavg()
        if cfg == CONFIGS[-1] and rw_running:
            monitors["rw-untracked"].close()
        result["blocks"].append(entry)
        ev = entry["events"]
        log(
            f"  block {i + 1} {cfg:<13} "
            + " ".join(f"{TITLES[n]} {r['wall_s']:.2f}s" for n, r in runs.items())
            + f" | seen {ev.get('seen', 0):,} lost {ev.get('lost', 0):,}"
            + f" | monitor CPU {entry['monitor_cpu_s']:.1f}s | load {entry['loadavg_before'][0]}"
        )


def summarise(result: dict) -> dict:
    blocks = result["blocks"]
    walls: dict[str, dict[str, list[float]]] = {c: {w: [] for w in WORKLOADS} for c in CONFIGS}
    cpus: dict[str, dict[str, list[float]]] = {c: {w: [] for w in WORKLOADS} for c in CONFIGS}
    seen: dict[str, list[int]] = {c: [] for c in CONFIGS}
    lost: dict[str, int] = dict.fromkeys(CONFIGS, 0)
    mcpu: dict[str, list[float]] = {c: [] for c in CONFIGS}
    other: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for b in blocks:
        for w, r in b["runs"].items():
            walls[b["config"]][w].append(r["wall_s"])
            cpus[b["config"]][w].append(r["cpu_s"])
            other[b["config"]].append(r.get("other_pct", 0.0))
        seen[b["config"]].append(b["events"].get("seen", 0))
        lost[b["config"]] += b["events"].get("lost", 0)
        mcpu[b["config"]].append(b["monitor_cpu_s"])
    med = {c: {w: statistics.median(v) for w, v in d.items()} for c, d in walls.items()}
    base = med["unmonitored"]
    cmed = {c: {w: statistics.median(v) for w, v in d.items()} for c, d in cpus.items()}
    out = {}
    for c in CONFIGS:
        out[c] = {
            "watches": WATCHES[c],
            "median_wall_s": {w: round(v, 4) for w, v in med[c].items()},
            "ratio": {w: round(med[c][w] / base[w], 3) for w in WORKLOADS},
            # The workload's own CPU time (its processes' user + system): what the probes
            # add in its syscalls, less moved by other work on the machine than wall time.
            "cpu_ratio": {
                w: round(cmed[c][w] / cmed["unmonitored"][w], 3) if cmed["unmonitored"][w] else None
                for w in WORKLOADS
            },
            "events_seen_per_block_median": int(statistics.median(seen[c])),
            "events_lost_all_blocks": lost[c],
            "monitor_cpu_s_per_block_median": round(statistics.median(mcpu[c]), 2),
            "other_work_pct_median": round(statistics.median(other[c]), 1),
            "runs": walls[c],
        }
    return out


def table(summary: dict, blocks: int) -> str:
    head = ["configuration", "watches", *(f"{TITLES[w]}" for w in WORKLOADS)]
    head += ["events seen (per block)", "events lost (all blocks)", "monitor CPU s (per block)"]
    head += ["other work (% of a core)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in CONFIGS:
        s = summary[c]
        cells = [LABELS[c], WATCHES[c]]
        cells += [f"{s['ratio'][w]:.2f}x" for w in WORKLOADS]
        cells += [
            f"{s['events_seen_per_block_median']:,}" if c != "unmonitored" else "—",
            f"{s['events_lost_all_blocks']:,}" if c != "unmonitored" else "—",
            f"{s['monitor_cpu_s_per_block_median']:.1f}" if c != "unmonitored" else "—",
            f"{s['other_work_pct_median']:.0f} %",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    base = summary["unmonitored"]["median_wall_s"]
    lines.append(
        "\nThe workload's own CPU time (user + system of its processes), median ratio to "
        "unmonitored:\n"
    )
    lines.append("| configuration | " + " | ".join(TITLES[w] for w in WORKLOADS) + " |")
    lines.append("|" + " --- |" * (len(WORKLOADS) + 1))
    for c in CONFIGS[1:]:
        r = summary[c]["cpu_ratio"]
        lines.append(
            f"| {LABELS[c]} | "
            + " | ".join(f"{r[w]:.2f}x" if r[w] else "—" for w in WORKLOADS)
            + " |"
        )
    lines.append(
        f"\nRatios: median wall time over {blocks} blocks ÷ unmonitored's median ("
        + ", ".join(f"{TITLES[w]} {base[w]:.2f} s" for w in WORKLOADS)
        + ")."
    )
    return "\n".join(lines) + "\n"


def chart(summary: dict, path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in CONFIGS if c != "unmonitored"]
    fig, ax = plt.subplots(figsize=(11, 5.2), dpi=110)
    width = 0.8 / len(shown)
    colours = {
        "auditd": "#c0504d",
        "bpftrace": "#f0a030",
        "rw-untracked": "#9bbb59",
        "rw-tracked": "#4f81bd",
    }
    for k, c in enumerate(shown):
        xs = [i + (k - (len(shown) - 1) / 2) * width for i in range(len(WORKLOADS))]
        ys = [summary[c]["ratio"][w] for w in WORKLOADS]
        bars = ax.bar(xs, ys, width, label=LABELS[c], color=colours[c])
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=7, padding=1)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(WORKLOADS)), [TITLES[w] for w in WORKLOADS])
    ax.set_ylabel("wall time ÷ unmonitored (median of blocks)")
    ax.set_title(f"roguewatch beside auditd and bpftrace, same workloads, same run\n{subtitle}")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(0, max(max(summary[c]["ratio"].values()) for c in shown) * 1.12)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 blocks, smaller storms")
    ap.add_argument("--blocks", type=int, help="blocks (default 5, or 2 with --quick)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/peers.py: run as root (auditd, bpftrace, BPF probes)", file=sys.stderr)
        return 2
    missing = [t for t in ("auditd", "auditctl", "bpftrace") if not shutil.which(t)]
    if missing:
        print(
            f"bench/peers.py: {', '.join(missing)} missing (`make bench` installs auditd and "
            "bpftrace)",
            file=sys.stderr,
        )
        return 2
    blocks = args.blocks or (2 if args.quick else 5)
    OUT.mkdir(exist_ok=True)
    build_loadgen()
    now = datetime.datetime.now(datetime.UTC)
    result: dict = {
        "date": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "quick": args.quick,
        "blocks_wanted": blocks,
        "machine": machine(),
        "uptime_start": uptime(),
        "loadavg_start": loadavg(),
        "versions": {
            "auditd": sh("auditctl", "-v", check=False).strip(),
            "bpftrace": sh("bpftrace", "--version", check=False).strip(),
        },
        "storm_sizes": storm_sizes(args.quick),
        "watches": WATCHES,
        "blocks": [],
    }
    m = result["machine"]
    log(f"peers bench {result['date']}: {m['cpus']} CPUs, {m['kernel']}; {result['uptime_start']}")
    started = time.monotonic()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="rwbench-peers-", dir=shm) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        wl = Workloads(work, args.quick)
        auditd = Auditd(work)
        rw = Roguewatch(tracked=False)
        monitors: dict[str, Monitor] = {
            "unmonitored": Monitor(),
            "auditd": auditd,
            "bpftrace": Bpftrace(work),
            "rw-untracked": rw,
            "rw-tracked": rw,
        }
        try:
            log("warm-up (every workload once, unmonitored)")
            for name in WORKLOADS:
                wl.run(name, monitors["unmonitored"])
            for i in range(blocks):
                run_block(i, monitors, wl, result)
        finally:
            for mon in (auditd, monitors["bpftrace"], rw):
                with contextlib.suppress(Exception):
                    mon.close()
            sh("umount", str(wl.mnt), check=False)
    result["host_after"] = {
        "audit_status": audit_status(),
        "audit_rules": sh("auditctl", "-l", check=False).strip(),
    }
    result["uptime_end"] = uptime()
    result["runtime_s"] = round(time.monotonic() - started, 1)
    summary = summarise(result)
    result["summary"] = summary
    md = table(summary, blocks)
    log("\n" + md)
    text = json.dumps(result, indent=2, default=repr)
    (OUT / "peers-latest.json").write_text(text)
    dated = OUT / f"peers-{now.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    dated.write_text(text)
    (OUT / "peers-table.md").write_text(md)
    png = OUT / "peers-quick.png" if args.quick else ROOT / "bench" / "peers.png"
    sub = (
        f"{m['cpus']}-core VM, kernel {m['kernel']}, {blocks} blocks, "
        f"load {result['loadavg_start'][0]}→{loadavg()[0]} (shared machine)"
    )
    chart(summary, png, sub)
    log(
        f"written to {dated.relative_to(ROOT)}, bench/out/peers-table.md and "
        f"{png.relative_to(ROOT)}"
    )
    log(f"host after: {result['host_after']['audit_rules']}; {uptime()}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except RuntimeError as exc:  # a monitor that would not start: what to do, no traceback
        print(f"bench/peers.py: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
