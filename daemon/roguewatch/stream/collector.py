"""The collector: kernel records in, batches of events out on the ZeroMQ stream.

Owns the loop that polls the ring buffer, decodes and enriches records, publishes them in
batches without ever blocking, counts every loss (kernel, pending map, decoding, bus) and
publishes the counts as `monitor` events at least once a second while they grow. It also
answers the control socket's operations that put processes into sessions, applies the
adoption selectors (in the kernel, and by a /proc scan at start), and guards roguewatch's own
tasks. The filesystem sensor (watchers, baselines, restore) is given to it as a
:class:`FileSensor`; ``roguewatch.runtime.collectord`` builds both and runs them.

It must not judge events: rules are the evaluator's.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import zmq

from roguewatch.core import paths, procfs, sessionstate
from roguewatch.core.accounts import clean_home
from roguewatch.core.cache import BoundedDict
from roguewatch.core.contracts import SessionEntry
from roguewatch.core.identity import exec_id, new_session_id
from roguewatch.host import kernelenv
from roguewatch.policy import policy as policy_mod
from roguewatch.policy.config import Config
from roguewatch.policy.egress import egress_hosts
from roguewatch.policy.hostnames import HostRefresher
from roguewatch.probes import layout
from roguewatch.probes.layout import TYPE_NAMES, RecordError
from roguewatch.sensors import bpf
from roguewatch.sensors.ringbuf import RingBuffer
from roguewatch.stream import bus
from roguewatch.stream.bus import Peer
from roguewatch.stream.control import ControlServer, Standing
from roguewatch.stream.enrich import ProcessCache
from roguewatch.stream.events import DRILL_FIELDS
from roguewatch.stream.sigstate import SignalWatch

log = logging.getLogger("roguewatch.collector")

# The hot path's constants (see Collector._handle).
_HSIZE = layout.HEADER.size
_IDENT_OFF = layout.IDENT_OFF
_IDENT = layout.IDENT
_parse = layout.parse
_FLAGS = layout.FLAGS
_F_ADOPTED = layout.F_ADOPTED
_V_TS, _V_RET, _V_TID = layout.V_TS, layout.V_RET, layout.V_TID
_V_TYPE, _V_FLAGS = layout.V_TYPE, layout.V_FLAGS
_I_START, _I_PID = layout.I_START, layout.I_PID
_EXEC = layout.TYPE_NUMBERS["exec"]
_EXIT = layout.TYPE_NUMBERS["exit"]
_KILL = layout.TYPE_NUMBERS["kill"]
_TARGET = layout.TYPE_NUMBERS["target"]
_MOUNT = layout.TYPE_NUMBERS["mount"]
# Types that may change or reveal signal dispositions: the deferred checks (stream/sigstate).
_SIGWATCH = frozenset(
    layout.TYPE_NUMBERS[n] for n in ("exec", "exit", "rt_sigaction", "sigprocmask", "signal_sent")
)
_REPEATS = layout.REPEATS
_FOLDABLE = layout.FOLDABLE_TYPES
# The last event of a foldable type of each thread, for the `repeats` record that may follow
# it (a thread's repeats come before its next record: only its last one can be repeated).
LAST_FOLDABLE_MAX = 65536
_PIDFD = "pidfd_send_signal"  # the one kind of kill whose target needs state
_STATEFUL = frozenset(
    layout.TYPE_NUMBERS[n] for n in ProcessCache.HOOKS if n != "kill"
)  # types whose events read or change the per-process state

# While records keep coming, the loop looks at the ring at least this often (see run).
# How long a collector that took over a pinned ring waits for its first subscriber before
# it reads the ring anyway.
RING_HOLD_S = 3.0
BUSY_POLL_S = 0.001
DENIAL_CLAIM_NS = 200_000_000  # every second: unclaimed denials older than this
DENIAL_END_NS = 20_000_000  # at a session's end
BEAT_MAX_S = 0.05  # with a heartbeat to give, the loop turns at least this often
BUDGET_ENDED_MAX = 1024  # ended sessions whose losses over budget `stats` still shows


@dataclass
class Losses:
    ring: dict[str, int]
    pending: int
    decode: int
    bus: int
    untracked: int = 0  # not events: children that escaped tracking (a full session map)

    def total(self) -> int:
        return sum(self.ring.values()) + self.pending + self.decode + self.bus + self.untracked


def _cgroup_members(path: str) -> list[int]:
    """The processes of a cgroup and of every cgroup below it (read only)."""
    out: list[int] = []
    for dirpath, _dirs, _files in os.walk(path):
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                out += [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            continue
    return out


class Gate(Protocol):
    """The shutdown gate of the collector's process: signals to obey, read by the loop."""

    def poll(self) -> list[int]: ...


class FileSensor(Protocol):
    """What the collector needs of the filesystem sensor (``runtime.fileguard.FileGuard``).

    Changes arrive on the callback the sensor was made with; ``rescan_needed`` is set after
    an inotify overflow, and ``take_rescan()`` clears it once a rescan starts; ``rescan()``
    gives the ``fs_change`` events of whatever differs from the baselines."""

    snapshot_done: threading.Event

    @property
    def rescan_needed(self) -> bool: ...

    def take_rescan(self) -> bool: ...

    def recheck(self) -> None: ...

    def rescan(self) -> list[dict]: ...

    def protect(self, paths: list[str], keep: bool = False) -> None: ...

    def session_start(self, cwd: str) -> int: ...

    def watch_home(self, home: str, means: str = "~") -> None: ...

    def restore(self, path: str, who: dict) -> str: ...

    def limits(self) -> dict: ...

    def mount_over(self, ev: dict, cwd: str | None, undo: bool) -> tuple[str, str] | None: ...

    def close(self) -> None: ...


# Rescans of the baselines (after an inotify overflow) start at most this often.
RESCAN_MIN_INTERVAL_S = 1.0


class _FsRescanner:
    """The rescans of the baselines after an inotify overflow, on a daemon thread of their own
    (not the restore worker: a restore is not held up behind a rescan; Baselines takes its lock
    per entry). One rescan at a time, at most one start per RESCAN_MIN_INTERVAL_S: an agent
    that floods a watched tree again and again gets one rescan a second, not a stalled loop.

    ``kick()`` (from the loop, while the sensor's rescan flag is set) asks for a rescan; the
    thread takes the flag as it starts one, so an overflow during a rescan sets it again and
    exactly one more rescan follows. The changes are queued on ``out`` (the collector's
    ``fs_queue``) as ``fs_change`` events, and ``wake()`` gets the loop to publish them."""

    def __init__(
        self,
        files: FileSensor,
        out: deque[dict],
        wake: Callable[[], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.files = files
        self.out, self.wake, self.stopping = out, wake, stopping
        self._last = -math.inf  # monotonic time of the last start
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="fs-rescan")
            self._thread.start()
        self._kick.set()

    def _run(self) -> None:
        while True:
            self._kick.wait()
            self._kick.clear()
            wait = self._last + RESCAN_MIN_INTERVAL_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if self.stopping():
                return
            if not self.files.take_rescan():
                continue
            self._last = time.monotonic()
            try:
                self.files.recheck()  # targets that appeared while events were lost
                found = self.files.rescan()
            except Exception:  # the thread must outlive a failed rescan
                log.exception("rescan of the baselines failed")
                found = []
            if found:
                self.out.extend(found)
                self.wake()
            if self.files.rescan_needed:  # an overflow during the rescan: one more
                self._kick.set()


class Collector:
    def __init__(
        self,
        cfg: Config,
        probes: bpf.Probes | None = None,
        max_procs: int = 65536,
        files: FileSensor | None = None,
        fs_queue: deque[dict] | None = None,
        previous: sessionstate.Pinned | None = None,
        pin: bool = False,
        guard_pids: list[int] | None = None,
    ) -> None:
        """``guard_pids``: the monitor's processes that started us, guarded at set-up.
        ``files``: the filesystem sensor, started before the probes load (its baseline
        snapshot then overlaps that), putting its changes on ``fs_queue`` and calling
        ``wake()``. ``previous``: what the collector before this one pinned (``setup``
        takes its sessions and guards back; an unclean end means a gap to rescan).
        ``pin``: keep the kernel side in bpffs for the next collector of this state
        directory (``sensors.pins``), taking over what the one before left there."""
        self.cfg = cfg
        self.guard_pids = list(guard_pids or ())
        self.previous = previous or sessionstate.Pinned()
        self.gap = not self.previous.clean  # the last collector died: changes were unseen
        self._guards: dict[int, int] = {}  # the monitor's pids guarded on request: start ns
        self._pinned_text = ""
        self.recovered: list[int] = []  # sessions taken back from the previous collector
        self._beat: Callable[[], None] | None = None
        self.resumed = False  # the service said every component is up (``_resume``)
        self._mounts: list[dict] = []  # sessions' mounts, to look at after the drain
        self.planned_stop = False  # the service said it stops us (``_stopping_op``)
        self.fs_queue: deque[dict] = fs_queue if fs_queue is not None else deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.files = files
        self._fs_rescanner: _FsRescanner | None = None  # made at the first overflow
        self.probes = probes or bpf.load(
            bpf.BuildOptions(ringbuf_pages=cfg.ringbuf_pages, max_procs=max_procs),
            cfg.cache_dir, pin_for=cfg.state_dir if pin else None,
            expected=self.previous.pins if not self.previous.clean else None,
        )  # fmt: skip
        # Pins found not ours as we started: said once the stream has listeners.
        self._pin_findings = list(self.probes.findings)
        self.took_over = 0  # processes of recovered sessions still in the pinned map
        self.ring = RingBuffer(self.probes.fd("events"), self.probes.ringbuf_size())
        self.probes.set_budget(cfg.session_budget_rate, cfg.session_budget_burst)
        # session -> tier -> records dropped over its budget: those of ended sessions, whose
        # counters the kernel no longer keeps (``budget_losses``)
        self._budget_ended: BoundedDict[int, dict[str, int]] = BoundedDict(BUDGET_ENDED_MAX)
        self._budget_reported: dict[int, int] = {}  # session -> total in its last report
        self.ctx = zmq.Context.instance()
        # Nothing in a session may listen to the stream or speak for the monitor.
        self.pub = bus.Publisher(
            cfg.events_endpoint, self.ctx,
            admit=lambda peer: self.standing(peer) >= Standing.OPERATOR,
            on_refused=lambda peer: self._refused("subscription_refused", "the event stream",
                                                  peer),
        )  # fmt: skip
        self.control: ControlServer | None = None
        if cfg.control_endpoint:
            self.control = ControlServer(
                cfg.control_endpoint, self.wake, self.standing,
                lambda op, peer, _who: self._refused(
                    "control_refused", f"the control socket (op {op!r})", peer),
            )  # fmt: skip
            self._register_operations(self.control)
        self.cache = ProcessCache()
        self.sigwatch = SignalWatch(self.identity_of)
        self._homes_seen: set[tuple[str, str]] = set()
        self.batch: list[dict] = []
        self._idents: dict[bytes, dict] = {}  # identity bytes of a header → identity fields
        # tid → (boot-time ts, event): each thread's last event of a foldable type
        self._last_foldable: BoundedDict[int, tuple[int, dict]] = BoundedDict(LAST_FOLDABLE_MAX)
        self.repeats_unmatched = 0  # repeats records whose event was not at hand (counted lost)
        self.events_total = 0
        self.lost_decode = 0
        self._reported = Losses({}, 0, 0, 0)
        self._next_adopt = 0
        self._stopping = False
        self.rate = 0
        self._rate_mark = 0
        self.sessions: dict[int, dict] = {}
        # Host names in egress allowlists, re-resolved on their TTL (a thread of its own).
        self.hosts = HostRefresher(self._egress_hosts_changed, cfg.egress_refresh_s)
        self.adoptions: list[policy_mod.Adoption] = []
        self.egress_owners: dict[int, list[str]] = {}  # allowlists in force in the kernel
        self._egress_root_fd: int | None = None
        # The adoption selectors in the kernel: uid -> policy, comm -> policy
        self._selectors: tuple[dict[int, int], dict[str, int]] = ({}, {})
        self.started = time.time()

    # -- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        """Guard ourselves, put egress judgement in the kernel, adopt by the selectors."""
        self.guard_self()
        self.attach_egress()
        if self.probes.reused:
            # The kernel's selectors are the last collector's: what to change is against them.
            self._selectors = self.probes.selectors()
        self.recover()
        if self._egress_root_fd is not None:
            # A dead collector's unpinned programs go once ours judge the recovered sessions.
            self.probes.sweep_stale_egress()
        self.adoptions = policy_mod.load_adoption_dirs(self.policy_dirs())
        self._apply_selectors()
        if self.probes.reused:
            self._prune_taken_over()
        self.scan_procfs()
        self.pin()
        if self.probes.pins is not None:
            log.info("kernel side %s %s (%d tracepoint links, %d processes of %d sessions "
                     "still tracked)", "taken over from" if self.probes.reused else "pinned in",
                     self.probes.pins.dir, len(self.probes.attached), self.took_over,
                     len(self.recovered))  # fmt: skip

    def _prune_taken_over(self) -> None:
        """What the last collector left in the pinned maps and nobody holds now: guards of
        its own threads (gone), allowlists of sessions that ended while no collector ran."""
        keep = set(procfs.threads(os.getpid())) | {os.getpid(), *self.guard_pids}
        for pid in self._guards:
            keep.update(procfs.threads(pid))
        for tid in self.probes.guarded_tids():
            if tid not in keep:
                self.probes.unguard(tid)
        for owner in self.probes.egress_owner_ids():
            if owner not in self.egress_owners:
                self.probes.forget_egress(owner)

    # -- what outlives a collector (core.sessionstate) -------------------------------------

    def recover(self) -> None:
        """After a restart: the monitor's pids guarded again, and every session the previous
        collector held that is still alive registered again under its own id (its root if it
        is the same process, every process of its cgroup), with its egress allowlist back in
        the kernel. Adopted sessions are adopted again by the selectors (``scan_procfs``)."""
        prev = self.previous
        for pid, start in prev.guarded:
            if start and procfs.start_ns(pid) == start:
                self._guard({"pid": pid})
        for s in prev.sessions:
            if s.adopted:
                continue
            pids = _cgroup_members(s.cgroup) if s.cgroup and os.path.isdir(s.cgroup) else []
            if s.root and s.root_start and procfs.start_ns(s.root) == s.root_start:
                pids = [s.root, *[p for p in pids if p != s.root]]
            # (taken over from pins: also what forked, or left its cgroup, meanwhile)
            pids += (
                [
                    p
                    for p, sid in self.probes.tracked().items()
                    if sid == s.session and p not in pids
                ]
                if self.probes.reused
                else []
            )
            if not pids:
                continue  # the session ended while no collector watched it
            for pid in pids:
                if self.probes.session_of(pid) == s.session:
                    self.took_over += 1  # still tracked: the pinned session map kept it
                    continue
                start = procfs.start_ns(pid)
                if start is None:
                    continue
                ppid = procfs.ppid(pid)
                self.probes.register(pid, s.session, start, procfs.start_ns(ppid) or 0, ppid,
                                     observe=s.mode == "observe")  # fmt: skip
            self.sessions[s.session] = {
                "root": s.root, "root_start": s.root_start, "cgroup": s.cgroup, "fd": None,
                "name": s.name, "mode": s.mode, "started": time.time(), "policy": s.policy,
                "recovered": True,
            }  # fmt: skip
            protect = list(s.policy.get("protect", []))
            if protect and self.files is not None:
                self.files.protect(protect, keep=True)  # not snapshotted over the gap
            if s.allow is not None:
                self._attach_egress({"session": s.session, "allow": s.allow,
                                     "cgroup": s.cgroup})  # fmt: skip
            self.recovered.append(s.session)

    def pin(self, clean: bool = False) -> None:
        """Write what the next collector (and the service, to fail closed) needs, when it
        changed: the sessions with their pids now, the guarded pids of the monitor."""
        by_session: dict[int, list[int]] = {}
        for pid, sid in self.probes.tracked().items():
            by_session.setdefault(sid, []).append(pid)
        sessions = []
        for sid, info in sorted(self.sessions.items()):
            sessions.append(sessionstate.PinnedSession(
                session=sid, root=int(info.get("root") or 0),
                root_start=int(info.get("root_start") or 0), cgroup=info.get("cgroup") or "",
                name=info.get("name", ""), mode=info.get("mode", "enforce"),
                policy=dict(info.get("policy") or {}), allow=info.get("allow"),
                pids=sorted(by_session.get(sid, [])), adopted=info.get("name") == "adopted",
            ))  # fmt: skip
        alive = {p: st for p, st in self._guards.items() if procfs.start_ns(p) == st}
        self._guards = alive
        pinned = sessionstate.Pinned(sessions, sorted(alive.items()), clean, os.getpid(),
                                     pins=dict(self.probes.pin_ids))  # fmt: skip
        text = repr(pinned)
        if text == self._pinned_text:
            return
        try:
            sessionstate.write(self.cfg.state_dir, pinned)
            self._pinned_text = text
        except OSError as exc:
            log.warning("cannot pin the sessions in %s: %s", self.cfg.state_dir, exc)

    def _stopping_op(self, req: dict, peer: Peer | None = None) -> dict:
        """Who started us says the stop that follows is asked for: a clean end (the next
        collector snapshots the baselines afresh). Any other end leaves a gap."""
        self.planned_stop = True
        return {"ok": True}

    def _resume(self, req: dict, peer: Peer | None = None) -> dict:
        """The service says every component is up again (the evaluator subscribed): every
        live session is announced again (a restarted evaluator knows nothing of them), and
        after a collector's unclean end, whatever changed in the watched paths while nobody
        watched is judged against the last good baseline (``fs_change``, change `gap`)."""
        for sid, info in sorted(self.sessions.items()):
            self.batch.append({
                "type": "session", "kind": "start", "ts": time.time_ns(), "session": sid,
                "pid": info.get("root", 0), "flags": ["recovered"],
                "name": info.get("name", ""), "root": info.get("root", 0),
                "cgroup": info.get("cgroup", ""), "mode": info.get("mode", "enforce"),
                "policy": info.get("policy") or {},
            })  # fmt: skip
        self.flush()
        self.resumed = True
        # (``rescan``: the evaluator was gone; what the stream said meanwhile was not judged)
        gap, self.gap = self.gap or bool(req.get("rescan")), False
        if gap and self.files is not None:
            files, out, wake = self.files, self.fs_queue, self.wake

            def rescan() -> None:
                files.snapshot_done.wait(60)
                try:
                    found = files.rescan()
                except Exception:  # a failed rescan must not end the collector
                    log.exception("the rescan of the gap failed")
                    return
                for ev in found:
                    ev["change"] = "gap"
                    ev["flags"] = ["gap"]
                out.extend(found)
                wake()

            threading.Thread(target=rescan, daemon=True, name="gap-rescan").start()
        return {"ok": True, "recovered": len(self.recovered), "gap": gap}

    def attach_egress(self) -> None:
        """Every connect and send of the host is judged by its session's allowlist from now
        on (egress.bpf.c, on the cgroup v2 root)."""
        root = kernelenv.cgroup2_mount()
        if root is None:
            log.warning("no cgroup v2 mount: egress is not denied in the kernel")
            return
        self._egress_root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.probes.attach_egress(self._egress_root_fd, sweep=False)  # (setup sweeps)

    def policy_dirs(self) -> list[str]:
        """policies.d, then the fleet's (roguewatch.fleet installs what it validated there)."""
        if not self.cfg.policies_dir:  # adoption off (run, record)
            return []
        fleet = self.cfg.fleet
        return [self.cfg.policies_dir] + ([fleet.policies_dir] if fleet.enabled else [])

    def _adoption_policies(self) -> list[policy_mod.StaticPolicy]:
        """Adoption policy 1: the daemon's own (its configured selectors); 2 on: the
        policies.d files, in order (the kernel's policy numbers: 1-255)."""
        default = (
            policy_mod.load(self.cfg.policy_file) if self.cfg.policy_file else policy_mod.default()
        )
        return [default, *(a.policy for a in self.adoptions[:254])]

    def _wanted_selectors(self) -> tuple[dict[int, int], dict[str, int]]:
        uids = dict.fromkeys(self.cfg.adopted_uids(), 1)
        comms = dict.fromkeys(self.cfg.adopt_comms, 1)
        for n, a in enumerate(self.adoptions[:254], start=2):
            for uid in a.all_uids():
                uids.setdefault(uid, n)
            for comm in a.comms:
                comms.setdefault(comm, n)
        return uids, comms

    def _apply_selectors(self) -> None:
        """Each adoption policy's allowlist in force in the kernel, then the selectors that
        use it (a selector never points at a policy whose allowlist is not in force)."""
        policies = self._adoption_policies()
        for n, pol in enumerate(policies, start=1):
            self._adoption_policy(n, pol)
        for n in range(len(policies) + 1, 256):  # policies that went away
            owner = self.probes.policy_owner(n)
            if self.egress_owners.pop(owner, None) is not None:
                self.hosts.untrack(owner)
                self.probes.forget_egress(owner)
        old_uids, old_comms = self._selectors
        uids, comms = self._selectors = self._wanted_selectors()
        for uid, n in uids.items():
            if old_uids.get(uid) != n:
                self.probes.adopt_uid(uid, n)
        for comm, n in comms.items():
            if old_comms.get(comm) != n:
                self.probes.adopt_comm(comm, n)
        for uid in old_uids.keys() - uids.keys():
            self.probes.unadopt_uid(uid)
        for comm in old_comms.keys() - comms.keys():
            self.probes.unadopt_comm(comm)

    def _adoption_policy(self, n: int, pol: policy_mod.StaticPolicy) -> None:
        owner = self.probes.policy_owner(n)
        if pol.mode != "enforce":  # observed: alerts only, the kernel lets it pass
            if self.egress_owners.pop(owner, None) is not None:
                self.hosts.untrack(owner)
                self.probes.forget_egress(owner)
            return
        allow = list(pol.egress_allow)
        self.probes.allow_egress(owner, allow, self.hosts.addresses)
        self.egress_owners[owner] = allow
        self.hosts.track(owner, egress_hosts(allow))

    def _reload_policies(self, req: dict, peer: Peer | None = None) -> dict:
        """Read the policies.d directories again; a broken file keeps the set in effect.

        Selectors that appeared are adopted in the kernel (and running processes they match
        found by a /proc scan); selectors that went away adopt nothing new from now on."""
        try:
            new = policy_mod.load_adoption_dirs(self.policy_dirs())
        except policy_mod.PolicyError as exc:
            return {"ok": False, "error": str(exc)}
        self.adoptions = new
        self._apply_selectors()
        self.scan_procfs()
        return {"ok": True, "policy_hash": policy_mod.digest(new),
                "policies": [a.source for a in new]}  # fmt: skip

    def fs_event(self, ev: dict) -> None:
        """A change from the filesystem sensor (its thread): queued, and the loop woken.

        A change whose writer fanotify named is the writer's session's, with the identity
        its probe events carry: a write the syscall tracepoints never saw (io_uring's) still
        reaches the session that made it, its policy, its rules and its enforcement."""
        pid = ev.get("pid") or 0
        if pid and not ev.get("session") and ev.get("type") == "fs_change":
            try:
                if self.session_of_tree(pid) is not None:
                    writer = ev.get("writer", "")
                    ev.update(self.identity_of(pid))
                    ev["writer"] = writer
            except (OSError, bpf.ProbeError):
                pass  # judged as it came: writer named, session unknown
        self.fs_queue.append(ev)
        self.wake()

    def _drain_fs(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        q = self.fs_queue
        while q:
            self.batch.append(q.popleft())
        if self.files is not None and self.files.rescan_needed:
            # After an overflow: whatever differs from the baseline is a change we missed. The
            # rescan (it reads every watched file) is never run here, where the ring must be
            # drained every millisecond: its thread queues what it finds and wakes us.
            if self._fs_rescanner is None:
                self._fs_rescanner = _FsRescanner(
                    self.files, self.fs_queue, self.wake, lambda: self._stopping
                )
            self._fs_rescanner.kick()
        self.flush()

    def _announce_adopted(self, ev: dict) -> None:
        """First sight of a session the kernel adopted: say which policy it runs under."""
        sid = ev["session"]
        pol = policy_mod.default()
        for a in self.adoptions:
            if a.matches(ev["uid"], ev["comm"]):
                pol = a.policy
                break
        self.sessions[sid] = {"root": ev["pid"], "cgroup": "", "fd": None, "name": "adopted",
                              "mode": pol.mode, "started": time.time(),
                              "policy": policy_mod.as_dict(pol)}  # fmt: skip
        cwd = procfs.readlink(ev["pid"], "cwd") or ""
        if self.files is not None and cwd:
            # Its hooks' baselines, beside the loop (the process already runs: as soon as we
            # can, never holding up the ring).
            threading.Thread(target=self.files.session_start, args=(cwd,), daemon=True,
                             name="session-baselines").start()  # fmt: skip
        self.batch.append({
            "type": "session", "kind": "start", "ts": time.time_ns(), "session": sid,
            "pid": ev["pid"], "flags": ["adopted"], "name": "adopted", "root": ev["pid"],
            "cgroup": "", "mode": pol.mode, "policy": policy_mod.as_dict(pol), "cwd": cwd,
        })  # fmt: skip

    def guard_self(self) -> None:
        """Every task of this process (ZeroMQ's threads too) is guarded, and the processes
        that said they started us (``--guard-pid``: roguewatchd and its supervisor; `run`'s
        launcher asks once the session is set up). Not our parent as such: the writes of
        whoever started us by hand (a shell, a test) are judged like anyone's."""
        for tid in procfs.threads(os.getpid()):
            self.probes.guard(tid)
        self.probes.guard(os.getpid())
        for pid in self.guard_pids:
            if procfs.start_ns(pid) is not None:
                self._guard({"pid": pid})

    def scan_procfs(self) -> int:
        """Register running processes that match the selectors (their events say `procfs`),
        under the adoption policy their selector names, as the kernel does at exec."""
        uids = self._selectors[0]
        comms = {c[:15]: n for c, n in self._selectors[1].items()}
        if not uids and not comms:
            return 0
        tracked = self.probes.tracked()
        me = os.getpid()
        found = []
        for pid in procfs.pids():
            if pid in tracked or pid == me:
                continue
            uid, comm = procfs.uid(pid), procfs.comm(pid)
            if uid is None or comm is None:
                continue  # gone meanwhile
            policy = uids.get(uid) or comms.get(comm)
            if policy:
                found.append((pid, uid, comm, policy))
        for pid, uid, comm, policy in found:
            start = procfs.start_ns(pid)
            if start is None:
                continue
            session = layout.ADOPTED_PROCFS_BASE | self._next_adopt
            self._next_adopt += 1
            ppid = procfs.ppid(pid)
            pstart = procfs.start_ns(ppid) or 0
            self.probes.register(pid, session, start, pstart, ppid, adopted=True, policy=policy)
            argv = procfs.cmdline(pid) or []
            exe = procfs.readlink(pid, "exe") or ""
            cwd = procfs.readlink(pid, "cwd") or ""
            self.cache.exe[pid] = exe
            if cwd:
                self.cache.cwd[pid] = cwd
            ev = {
                "type": "exec", "ts": time.time_ns(), "session": session, "pid": pid,
                "tid": pid, "ppid": ppid, "uid": uid, "gid": 0, "comm": comm, "ret": 0,
                "flags": ["procfs", "adopted"], "exec_id": exec_id(pid, start),
                "pexec_id": exec_id(ppid, pstart), "exe": exe,
                "filename": exe, "argv": argv, "cmdline": " ".join(argv), "cwd": cwd,
            }  # fmt: skip
            self._announce_adopted(ev)
            self.batch.append(ev)
        self.flush()
        return len(found)

    # -- the loop -------------------------------------------------------------------------

    def _handle(self, buf, off: int, length: int) -> None:
        """One record → one event appended to the batch (the hot path).

        The identity fields of an event (session, pid, ppid, uid, gid, comm, exec ids, exe)
        are the same in every record of a process image: they are computed once per image,
        cached on the 56 identity bytes of the header, and copied into each event. Per record
        only the changing fields are decoded. Nothing here reads /proc for a known process."""
        try:
            h, build, s1, s2 = _parse(buf, off, length)
        except RecordError:
            self.lost_decode += 1
            return
        t = h[_V_TYPE]
        if t == _REPEATS:
            self._repeats(h)
            return
        ev = {"type": TYPE_NAMES[t], "ts": h[_V_TS] + self.cache.offset, "tid": h[_V_TID],
              "ret": h[_V_RET], "flags": _FLAGS[h[_V_FLAGS] & 0xFF]}  # fmt: skip
        build(ev, h, s1, s2)
        key = buf[off + _IDENT_OFF : off + _HSIZE]
        if t == _EXEC:  # a new image: its exe and cwd are read now, then its identity
            i = _IDENT.unpack(key)
            self.cache.on_exec(ev, i[_I_PID])
            ident = self._identity(key, i)
        else:
            ident = self._idents.get(key) or self._identity(key, _IDENT.unpack(key))
            if (
                t in _STATEFUL
                or "_path" in ev
                or (t == _KILL and (ev["call"] == _PIDFD or (not ev["target_comm"] and ev["sig"])))
            ):
                self.cache.after(ev, ident["pid"])
                if t == _EXIT:
                    self._idents.pop(key, None)
        ev.update(ident)
        if t == _TARGET and not self._target_other(ev):
            return  # one of its own threads, named by its thread id: no other process
        if h[_V_FLAGS] & _F_ADOPTED and ev["session"] not in self.sessions:
            self._announce_adopted(ev)
        if t == _MOUNT and ev["ret"] == 0 and ev["session"] and not ev["umount"]:
            self._mounts.append(ev)  # looked at after the drain (it reads the mount table)
        if t in _SIGWATCH:
            self.sigwatch.note(ev)
            if t == _EXEC and ("home" in ev or "xdg_config_home" in ev):
                self._watch_homes(ev.get("home"), ev.get("xdg_config_home"))
        if t in _FOLDABLE:
            last = self._last_foldable
            if len(last) >= LAST_FOLDABLE_MAX:
                last.clear()
            last[h[_V_TID]] = (h[_V_TS], ev)
        self.batch.append(ev)

    def _watch_homes(self, home: str | None, config_home: str | None) -> None:
        """A session process's own HOME and XDG_CONFIG_HOME: the filesystem sensor watches
        and baselines the `~/` paths there (once each; best before the agent runs: at
        registration)."""
        if self.files is None:
            return
        for d, means in ((home, "~"), (config_home, "~/.config")):
            key = (d, means)
            if d and key not in self._homes_seen:
                if len(self._homes_seen) < 4096:
                    self._homes_seen.add(key)
                h = clean_home(d)
                if h:
                    self.files.watch_home(h, means)

    def check_signals(self) -> None:
        """The deferred signal-disposition checks whose time came, published."""
        if self.sigwatch.next_due_ns() is not None:
            found = self.sigwatch.due()
            if found:
                self.batch.extend(found)
                self.flush()

    def _repeats(self, h: tuple) -> None:
        """A `repeats` record (roguewatch.h, "Repeats folded"): the thread's last event again,
        with how many times the kernel folded it and when. Without that event at hand (a
        collector restarted since; never otherwise), the repeats are counted as lost."""
        ev = {}
        layout.BUILDERS[_REPEATS](ev, h, b"", b"")
        found = self._last_foldable.get(h[_V_TID])
        of = ev["of"]
        if (found is None or found[0] != ev["_repeated_ts"] or of not in _FOLDABLE
                or found[1]["type"] != TYPE_NAMES[of]):  # fmt: skip
            self.repeats_unmatched += ev["repeats"]
            return
        out = dict(found[1])
        off = self.cache.offset
        out["ts"] = ev["last_ts"] + off
        out["repeats"] = ev["repeats"]
        out["first_ts"] = ev["first_ts"] + off
        out["last_ts"] = ev["last_ts"] + off
        self.batch.append(out)

    def _target_other(self, ev: dict) -> bool:
        """A `target` event names a task by its id: the process it belongs to instead, and
        False when that is the caller itself (a thread library setting its own threads'
        priorities)."""
        tid = ev["target"]
        tgid = int(procfs.status(tid).get("Tgid", tid) or tid)
        ev["target"] = tgid
        return tgid != ev["pid"] or "guard" in ev["flags"]

    def _identity(self, key: bytes, i: tuple) -> dict:
        d = self.cache.identity(i)
        if i[_I_START]:  # records of untracked senders (guard events, start 0) are not cached
            if len(self._idents) >= 65536:
                self._idents.clear()
            self._idents[key] = d
        return d

    def flush(self) -> None:
        if self.batch:
            self.events_total += len(self.batch)
            self.pub.publish(self.batch)
            self.batch = []

    def drain(self) -> int:
        """Read everything the kernel has written, publishing in batches of batch_max."""
        n = 0
        limit = self.cfg.batch_max
        while True:
            got = self.ring.drain(self._handle, limit)
            n += got
            self.flush()
            if got < limit:
                return n

    def sweep_denials(self, older_than_ns: int = 0) -> None:
        """Egress denials no syscall exit claimed (io_uring's): published as their own events
        once older than DENIAL_CLAIM_NS (a refused syscall's exit claims its denial within
        microseconds; one that took longer is published twice, never lost)."""
        for raw in self.probes.unclaimed_denials(older_than_ns or DENIAL_CLAIM_NS):
            self._handle(raw, 0, len(raw))
        self.flush()

    def losses(self) -> Losses:
        ring = {TYPE_NAMES[t]: c for t, c in enumerate(self.probes.lost_by_type()) if c and t}
        return Losses(ring, self.probes.pending_overflows(),
                      self.lost_decode + self.repeats_unmatched, self.pub.lost_events,
                      self.probes.untracked_forks())  # fmt: skip

    def budget_losses(self) -> dict[int, dict[str, int]]:
        """session -> tier -> records dropped in the kernel over the session's budget
        (roguewatch.h, "Budgets per session"), since it started. The kernel's counters of a
        session that ended (no process tracked, not registered) are kept here instead."""
        kernel = self.probes.budget_losses()
        out = {sid: dict(by) for sid, by in self._budget_ended.items()}
        live: set[int] | None = None
        for sid, by in kernel.items():
            if sid not in self.sessions:
                if live is None:
                    live = set(self.probes.tracked().values())
                if sid not in live:  # ended: nothing of it writes any more
                    self.probes.forget_budget(sid)
                    ended = self._budget_ended.get(sid) or {}
                    self._budget_ended[sid] = {t: ended.get(t, 0) + n for t, n in by.items()}
            mine = out.setdefault(sid, {})
            for tier, n in by.items():
                mine[tier] = mine.get(tier, 0) + n
        return out

    def report_losses(self) -> Losses | None:
        """A `monitor` event when any loss counter grew since the last report; and one of
        each session whose losses over its budget grew (with its session id)."""
        self._report_budget_losses()
        now = self.losses()
        if now.total() == self._reported.total():
            return None
        budget = self.probes.budget_dropped()
        self.pub.publish([{
            "type": "monitor", "kind": "loss", "ts": time.time_ns(), "session": 0,
            "pid": os.getpid(), "flags": [],
            "lost_ring": now.ring, "lost_pending": now.pending, "lost_decode": now.decode,
            "lost_bus": now.bus, "untracked_forks": now.untracked, "lost_budget": budget,
            "detail": (
                f"events lost: {sum(now.ring.values())} in the kernel ring buffer"
                + (f" ({budget} of them over their session's budget)" if budget else "")
                + f", {now.pending} for a full pending map, {now.decode} malformed, "
                f"{now.bus} not sent on the bus (totals since start)"
                + (f"; {now.untracked} forked children could not be tracked (the session map "
                   "is full: their parents were killed in enforce mode)" if now.untracked else "")
            ),
        }])  # fmt: skip
        self._reported = now
        return now

    def _report_budget_losses(self) -> None:
        cfg = self.cfg
        for sid, by in sorted(self.budget_losses().items()):
            total = sum(by.values())
            if total == self._budget_reported.get(sid, 0):
                continue
            self._budget_reported[sid] = total
            what = ", ".join(f"{n} {tier}" for tier, n in sorted(by.items()) if n)
            self.pub.publish([{
                "type": "monitor", "kind": "loss", "ts": time.time_ns(), "session": sid,
                "pid": os.getpid(), "flags": ["budget"], "lost_budget": total,
                "lost_budget_by_tier": dict(by),
                "detail": (
                    f"session {sid:x} went over its budget ({cfg.session_budget_rate} records "
                    f"a second of files and of sockets, burst {cfg.session_budget_burst}) "
                    f"while the collector was behind: {total} of its records dropped in the "
                    f"kernel ({what}; totals since it started), so that its flood left the "
                    "ring to the other sessions"
                ),
            }])  # fmt: skip
        if len(self._budget_reported) > BUDGET_ENDED_MAX * 2:
            self._budget_reported.clear()  # (then each is reported once more)

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # a wake-up is already pending

    # -- the kernel side, checked against what it should be ---------------------------------

    def reconcile(self) -> None:
        """Once a second: what an attacker could have undone in the kernel, repaired and
        said (a `tamper` event each): the egress programs detached from the cgroup root, a
        registered session's processes gone from the session map (a bpf() map delete), a
        thread of ours that is not guarded, a pin in bpffs removed or replaced (pinned
        again: the next collector would otherwise start without the kernel side)."""
        for f in self._pin_findings:  # found as we started: the last collector's pins
            self.tamper(f"pin_{f.what}", f"the pinned {f.name} (id {f.expected}) was {f.what} "
                        f"(id {f.found}) while no collector ran: the kernel side was made "
                        "afresh", target=f"bpffs pin {f.name}")  # fmt: skip
        self._pin_findings = []
        self._check_sockets()
        try:
            findings = self.probes.check_pins()
        except OSError as exc:
            log.warning("cannot check the pins: %s", exc)
            findings = []
        for f in findings:
            where = os.path.join(self.probes.pins.dir if self.probes.pins else "", f.name)
            self.tamper(f"pin_{f.what}", f"{where} (id {f.expected}) was {f.what}"
                        + (f" by object id {f.found}" if f.found is not None else "")
                        + ": pinned again", target=f"bpffs pin {f.name}")  # fmt: skip
        if self._egress_root_fd is not None:
            try:
                attached = self.probes.egress_attached()
            except bpf.ProbeError:
                attached = []
            if len(attached) < len(bpf.SOCK_ADDR_PROGS):
                self.probes.detach_egress_root()
                self.probes.attach_egress(self._egress_root_fd)
                # Every session lost its egress denial meanwhile: each one hears of it.
                self._tamper_every_session("egress_detached", "the egress programs were "
                                           "detached from the cgroup root: attached again",
                                           "cgroup root")  # fmt: skip
        for sid, info in list(self.sessions.items()):
            cgroup = info.get("cgroup") or ""
            if not cgroup or info.get("adopted"):
                continue
            for pid in _cgroup_members(cgroup):
                if self.probes.session_of(pid) is not None:
                    continue
                st = procfs.stat(pid)
                if st is None or st.exiting:
                    continue  # gone meanwhile, or dying: its exit took it off the map
                start = st.start_ns
                ppid = procfs.ppid(pid)
                self.probes.register(pid, sid, start, procfs.start_ns(ppid) or 0, ppid,
                                     observe=info.get("mode") == "observe")  # fmt: skip
                self.tamper("untracked_in_session", f"pid {pid} of session {sid:x}'s cgroup "
                            "was missing from the session map: tracked again",
                            target=f"the session map (pid {pid})", session=sid)  # fmt: skip
        for tid in procfs.threads(os.getpid()):
            if not self.probes.is_guarded(tid):
                self.probes.guard(tid)
        for pid in list(self._guards):  # the monitor's other processes: threads made since
            for tid in procfs.threads(pid):
                if not self.probes.is_guarded(tid):
                    self.probes.guard(tid)
        self.pin()

    def check_mounts(self) -> None:
        """A session's mount over a path the monitor watches blinds it there (a tmpfs over
        /etc/cron.d, over the alert log), or changes a protected file without a write (a
        bind mount): unmounted at once in enforce mode, and said (a `tamper` event; the rules
        end the session)."""
        pending, self._mounts = self._mounts, []
        if self.files is None:
            return
        for ev in pending:
            pid, sid = ev["pid"], ev["session"]
            mode = self.sessions.get(sid, {}).get("mode", "enforce")
            cwd = self.cache.cwd.get(pid) or procfs.readlink(pid, "cwd")
            try:
                found = self.files.mount_over(ev, cwd, undo=mode != "observe")
            except OSError as exc:
                log.warning("could not look at the mount of pid %d: %s", pid, exc)
                continue
            if found is not None:
                point, detail = found
                self.tamper("mount_over_watched_path", detail, pid=pid, target=point,
                            session=sid)  # fmt: skip

    # -- who may speak to the monitor -------------------------------------------------------

    def in_any_session(self, pid: int) -> bool:
        """In a session of this collector (or descended from one), or in any session's cgroup
        (another roguewatch's `run`: its agents are no operators to us either)."""
        if self.session_of_tree(pid) is not None:
            return True
        cg = procfs.cgroup_path(pid) or ""
        return cg.startswith(f"/{paths.SESSION_CGROUPS}/")

    def session_of_tree(self, pid: int) -> int | None:
        """The session of a process or of its nearest tracked ancestor (None: in no session).
        A process that left the session map still descends from its session's processes."""
        seen = 0
        while pid > 1 and seen < 64:
            s = self.probes.session_of(pid)
            if s is not None:
                return s
            pid = procfs.ppid(pid)
            seen += 1
        return None

    def standing(self, peer: Peer | None) -> Standing:
        if peer is None:
            return Standing.STRANGER
        if self.in_any_session(peer.pid):
            return Standing.SESSION
        if peer.pid == os.getpid() or self.probes.is_guarded(peer.pid):
            return Standing.MONITOR
        return Standing.OPERATOR if peer.uid == 0 else Standing.STRANGER

    def identity_of(self, pid: int) -> dict:
        """The identity fields of a live process, as its probe events carry them (the exec
        ids from the session map when it is tracked, so the evaluator links its lineage)."""
        entry = self.probes.process(pid)
        if entry is not None:
            session, start, pstart, ppid = entry[:4]
        else:
            session, start = self.session_of_tree(pid) or 0, procfs.start_ns(pid)
            ppid = procfs.ppid(pid)
            pstart = procfs.start_ns(ppid) if ppid else None
        return {
            "session": session, "pid": pid, "tid": pid, "ppid": ppid,
            "uid": procfs.uid(pid) or 0, "gid": 0, "comm": procfs.comm(pid) or "",
            "exec_id": exec_id(pid, start), "pexec_id": exec_id(ppid, pstart),
            "exe": procfs.readlink(pid, "exe") or "",
        }  # fmt: skip

    def _check_sockets(self) -> None:
        """Our socket files where we bound them: one removed (no `roguewatch status`, no new
        subscriber could reach us) or replaced (a listener of the agent's in our place) is
        bound again, and said."""
        bound = [self.pub.broadcast.bound]
        if self.control is not None:
            bound.append(self.control.bound)
        for b in bound:
            try:
                what = b.check()
            except bus.BusError as exc:
                kind, detail = "socket_lost", str(exc)
            else:
                if what is None:
                    continue
                kind, detail = f"socket_{what}", f"{b.path} was {what}: bound again"
            # Every session was out of its monitor's reach meanwhile: each one hears of it.
            self._tamper_every_session(kind, detail, b.path or b.endpoint)

    def _tamper_every_session(self, kind: str, detail: str, target: str) -> None:
        """A `tamper` event with no offender known that cost every session its cover: one
        to each session (its report shows it), or one to the host when there is none."""
        for sid in list(self.sessions) or [0]:
            self.tamper(kind, detail, target=target, session=sid)

    def tamper(
        self, kind: str, detail: str, pid: int = 0, target: str = "", session: int = 0
    ) -> None:
        """A `tamper` event: something tried to blind, stop or reconfigure the monitor (``pid``
        the offender when known). Rules decide what it costs the offender's session. With no
        offender known, ``session`` is the session it was done to (its report shows it)."""
        ev = {"type": "tamper", "ts": time.time_ns(), "ret": 0, "flags": [], "kind": kind,
              "target": target, "detail": detail}  # fmt: skip
        ev.update(self.identity_of(pid) if pid else
                  {"session": session, "pid": 0, "tid": 0, "ppid": 0, "uid": 0, "gid": 0,
                   "comm": "", "exec_id": "", "pexec_id": "", "exe": ""})  # fmt: skip
        self._publish_now(ev)

    def _refused(self, kind: str, what: str, peer: Peer | None) -> None:
        who = f"pid {peer.pid} (uid {peer.uid})" if peer else "a peer without credentials"
        self.tamper(kind, f"{who} was refused {what}", peer.pid if peer else 0, what)

    # -- the control socket's operations -----------------------------------------------------

    def _register_operations(self, server: ControlServer) -> None:
        ops: dict[str, Callable[[dict, Peer | None], dict]] = {
            "ping": lambda req, peer: {
                "ok": True,
                "pid": os.getpid(),
                "resumed": self.resumed,
                "subscribers": self.pub.broadcast.subscriptions,
            },
            "register": self._register,
            "attach_egress": self._attach_egress,
            "session_end": self._session_end,
            "unregister": lambda req, peer: {"ok": self.probes.unregister(int(req["pid"]))},
            "sessions": lambda req, peer: {"ok": True, "sessions": self.session_list()},
            "release": self._release,
            "guard": self._guard,
            "stats": lambda req, peer: {"ok": True, **self.stats()},
            "reload_policies": self._reload_policies,
            "standing": lambda req, peer: {
                "ok": True,
                "standing": self.standing(Peer(int(req["pid"]), 0, 0)).name,
            },
        }
        for op, handler in ops.items():
            server.register(op, handler)
        server.register("restore", self._restore, threaded=True)
        # Only roguewatch's own processes speak in the monitor's name (the service reports,
        # `run`'s launcher reports what the agent's seccomp filter refused).
        server.register("announce", self._announce, needs=Standing.MONITOR)
        server.register("resume", self._resume, needs=Standing.MONITOR)
        server.register("stopping", self._stopping_op, needs=Standing.OPERATOR)
        server.register("refused", self._refused_call, needs=Standing.MONITOR)
        server.register("drill", self._drill)  # an operator's shutdown drill (respond/drill)
        server.register("install_config", self._install_config, needs=Standing.MONITOR)

    def _install_config(self, req: dict, peer: Peer | None = None) -> dict:
        """A file the fleet sent (a policy, a rule file) written into the fleet's own
        directory by the collector, as the new baseline of a watched path: the monitor's
        change is never judged as someone's tampering, whatever the writer pids say."""
        fleet = self.cfg.fleet
        dirs = {"policy": fleet.policies_dir, "rules": fleet.rules_dir} if fleet.enabled else {}
        directory, name = dirs.get(str(req.get("kind"))), str(req.get("name") or "")
        if not directory or not name or "/" in name or name.startswith("."):
            return {"ok": False, "error": f"not a fleet file: {req.get('kind')}/{name}"}
        data = req.get("data")
        content = (
            None if data is None else (data if isinstance(data, bytes) else str(data).encode())
        )
        path = os.path.join(directory, f"{name}.yaml")
        if self.files is None:  # nothing watches it: the sender writes it itself
            return {"ok": True, "outcome": "unwatched"}
        return {"ok": True, "outcome": self.files.install(path, content)}

    def _restore(self, req: dict, peer: Peer | None = None) -> dict:
        if self.files is None:
            return {"ok": True, "outcome": "not restored: the filesystem watchers are off"}
        who = dict(req.get("who") or {})
        try:
            info = self.sessions.get(int(str(who.get("session") or "0"), 16))
        except ValueError:
            info = None
        if info is not None and info.get("started"):
            # A file born after this was made by the session (a restore with no baseline).
            who["started_ns"] = int(info["started"] * 1e9)
        return {"ok": True, "outcome": self.files.restore(str(req["path"]), who)}

    def _refused_call(self, req: dict, peer: Peer | None = None) -> dict:
        """A call the agent's seccomp filter refused (EPERM), as the `refused` event the
        syscall tracepoints could not see (seccomp runs before them)."""
        tid = int(req["pid"])
        tgid = int(procfs.status(tid).get("Tgid", tid) or tid)
        args = [int(a) for a in (req.get("args") or [])][:6]
        ev = {"type": "refused", "ts": time.time_ns(), "ret": -1, "flags": [],
              "call": str(req.get("call", "")), "nr": int(req.get("nr", -1)), "args": args,
              **self.identity_of(tgid)}  # fmt: skip
        ev["tid"] = tid
        self._publish_now(ev)
        return {"ok": True}

    def _drill(self, req: dict, peer: Peer | None = None) -> dict:
        """A shutdown drill's compliance record, as the session's `drill` event (the
        evaluator makes it the `shutdown_drill` alert; a recording keeps it)."""
        sid = int(req["session"])
        ev = {"type": "drill", "ts": time.time_ns(), "session": sid, "pid": int(req["root"]),
              "tid": int(req["root"]), "ppid": 0, "uid": 0, "gid": 0, "ret": 0, "flags": [],
              "comm": str(self.sessions.get(sid, {}).get("name", ""))[:15], "exec_id": "",
              "pexec_id": "", "exe": ""}  # fmt: skip
        for key, kind in DRILL_FIELDS.items():
            ev[key] = kind(req.get(key) or kind())
        ev["acts"] = [str(a) for a in ev["acts"]][:100]
        ev["act_kinds"] = [str(a) for a in ev["act_kinds"]][:100]
        self._publish_now(ev)
        return {"ok": True}

    def _announce(self, req: dict, peer: Peer | None = None) -> dict:
        """The service reporting on its components (restarts), as a `monitor` event that says
        who reported it (only roguewatch's own processes may: see the operation's standing)."""
        origin = f"{procfs.comm(peer.pid) or '?'} (pid {peer.pid})" if peer else "unknown"
        self._publish_now({
            "type": "monitor", "kind": str(req.get("kind", "monitor")), "ts": time.time_ns(),
            "session": 0, "pid": os.getpid(), "flags": [], "origin": origin,
            "detail": str(req.get("detail", "")), "missed": int(req.get("missed", 0)),
            **({"severity": str(req["severity"])} if req.get("severity") else {}),
        })  # fmt: skip
        return {"ok": True}

    def _release(self, req: dict, peer: Peer | None = None) -> dict:
        session = int(req["session"])
        for pid, s in self.probes.tracked().items():
            if s == session:
                self.probes.unregister(pid)
        self.release(session)
        return {"ok": True}

    def _guard(self, req: dict, peer: Peer | None = None) -> dict:
        """Guard a process and every thread it has now."""
        pid = int(req["pid"])
        self.probes.guard(pid)
        for tid in procfs.threads(pid):
            self.probes.guard(tid)
        start = procfs.start_ns(pid)
        if start is not None and pid != os.getpid():
            self._guards[pid] = start  # pinned: a restarted collector guards it again
        return {"ok": True}

    def stats(self) -> dict:
        loss = self.losses()
        files = self.files
        return {
            "events": self.events_total, "batches": self.pub.sent_batches,
            "uptime": time.time() - self.started,
            "lost_ring": loss.ring, "lost_pending": loss.pending, "lost_decode": loss.decode,
            "untracked_forks": loss.untracked, "folded": self.probes.folded(),
            "lost_budget": {f"{sid:x}": by for sid, by in self.budget_losses().items()},
            "budget": {"rate": self.cfg.session_budget_rate,
                       "burst": self.cfg.session_budget_burst},
            "lost_bus": loss.bus, "probes": len(self.probes.attached), "rate": self.rate,
            "probes_failed": [f for f, _ in self.probes.failed],
            "baseline_ready": files is None or files.snapshot_done.is_set(),
            "watcher": files.limits() if files is not None else None,
            "tracked": len(self.probes.tracked()),
            "egress_hosts": {"refreshes": self.hosts.refreshes, "changes": self.hosts.changes},
            "policy_hash": policy_mod.digest(self.adoptions),
            "sessions": len(self.sessions),
            "pins": {"dir": self.probes.pins.dir if self.probes.pins else None,
                     "taken_over": self.probes.reused, "links": self.probes.links,
                     "processes_kept": self.took_over},
        }  # fmt: skip

    def _register(self, req: dict, peer: Peer | None = None) -> dict:
        """Put a process in a session; announce the session on the stream (kind `start`).

        A session starts only once the baselines exist: a change it makes before then would
        become the baseline (at start-up only; the snapshot takes a second or two)."""
        if self.files is not None:
            deadline = time.monotonic() + 30
            while not self.files.snapshot_done.wait(0.05) and time.monotonic() < deadline:
                if self._beat is not None:
                    self._beat()  # waiting here is not hanging
        pid = int(req["pid"])
        start = procfs.start_ns(pid)
        if start is None:
            return {"ok": False, "error": f"no process {pid}"}
        ppid = procfs.ppid(pid)
        session = int(req.get("session") or new_session_id())
        mode = req.get("mode", "enforce")
        self.cache.remember(pid)
        env = procfs.environ_vars(pid, (b"HOME", b"XDG_CONFIG_HOME"))
        self._watch_homes(env.get("HOME"), env.get("XDG_CONFIG_HOME"))
        self.probes.register(
            pid, session, start, procfs.start_ns(ppid) or 0, ppid, observe=mode == "observe"
        )
        protect = list((req.get("policy") or {}).get("protect", []))
        if protect and self.files is not None:
            self.files.protect(protect)  # the session's protected files: both sensors
        cwd = procfs.readlink(pid, "cwd") or ""
        if self.files is not None:
            # What it could turn into a hook near where it works: baselined before it runs.
            self.files.session_start(cwd)
        self.sessions[session] = {
            "root": pid, "root_start": start, "cgroup": req.get("cgroup", ""), "fd": None,
            "name": req.get("name", ""), "mode": mode, "started": time.time(),
            "policy": req.get("policy") or {},
        }  # fmt: skip
        self.pin()
        self._publish_now({
            "type": "session", "kind": "start", "ts": time.time_ns(), "session": session,
            "pid": pid, "flags": [], "name": req.get("name", ""), "root": pid,
            "cgroup": req.get("cgroup", ""), "mode": mode, "policy": req.get("policy") or {},
            "cwd": cwd,
        })  # fmt: skip
        return {"ok": True, "session": session}

    def _attach_egress(self, req: dict, peer: Peer | None = None) -> dict:
        """Refuse in the kernel, for every process of the session wherever it moves, every
        destination outside the allowlist."""
        session = int(req["session"])
        allow = [str(a) for a in req["allow"]]
        try:
            self.probes.allow_egress(session, allow, self.hosts.addresses)
        except (bpf.ProbeError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}
        self.egress_owners[session] = allow
        info = self.sessions.setdefault(session, {"root": 0, "cgroup": str(req.get("cgroup", ""))})
        info["allow"] = allow
        self.pin()
        self.hosts.track(session, egress_hosts(allow))  # kept current on their TTL
        return {"ok": True}

    def _egress_hosts_changed(self, owner: int) -> None:
        """A host name of this owner's allowlist resolves elsewhere now (refresher thread)."""
        allow = self.egress_owners.get(owner)
        if allow is not None:
            self.probes.update_egress(owner, allow, self.hosts.addresses)

    def _session_end(self, req: dict, peer: Peer | None = None) -> dict:
        """The root exited: name the survivors on the stream (kind `end`), drop egress."""
        session = int(req["session"])
        self.drain()  # the session's last events go out before its end
        self.sweep_denials(DENIAL_END_NS)  # and its io_uring denials, not a second later
        survivors = sorted(p for p, s in self.probes.tracked().items() if s == session)
        self._publish_now({
            "type": "session", "kind": "end", "ts": time.time_ns(), "session": session,
            "pid": int(req.get("root", 0)), "flags": [], "survivors": survivors,
        })  # fmt: skip
        return {"ok": True, "survivors": survivors}

    def session_list(self) -> list[SessionEntry]:
        """Live sessions: those registered here and those the kernel adopted by selector."""
        pids: dict[int, list[int]] = {}
        for pid, s in self.probes.tracked().items():
            pids.setdefault(s, []).append(pid)
        out = []
        budget = self.budget_losses()
        for sid in sorted(set(pids) | set(self.sessions)):
            info = self.sessions.get(sid, {})
            out.append(SessionEntry(
                session=f"{sid:x}", name=info.get("name", ""),
                root=info.get("root", min(pids.get(sid, [0]))),
                cgroup=info.get("cgroup", ""), mode=info.get("mode", "enforce"),
                pids=sorted(pids.get(sid, [])), started=info.get("started", 0),
                adopted=sid not in self.sessions, lost=sum(budget.get(sid, {}).values()),
            ))  # fmt: skip
        return out

    def release(self, session: int) -> None:
        self.sessions.pop(session, None)
        if self.egress_owners.pop(session, None) is not None:
            self.hosts.untrack(session)
            self.probes.forget_egress(session)
        self.pin()

    def _publish_now(self, ev: dict) -> None:
        self.flush()
        self.batch.append(ev)
        self.flush()

    def stop(self, *_: object) -> None:
        self._stopping = True

    def run(
        self, ready: Callable[[], None] | None = None, gate: Gate | None = None,
        beat: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        """The loop, until stopped. ``beat()`` is called every turn, and a turn is at most
        BEAT_MAX_S long when it is given (the supervisor's heartbeat)."""
        self._beat = beat
        # Two pollers: `idle` waits for the ring too; `busy` does not. The ring's fd is
        # readable whenever a record is there, so a collector that re-polled it after each
        # drain would loop as fast as records arrive, a handful of events per batch (and
        # the per-message cost for each handful: bench/README.md, "events per bus message").
        # While records keep coming it drains once per BUSY_POLL_S instead, answering its
        # other sockets meanwhile: batches grow with the rate, and a record waits at most
        # that long (the kernel's wake-ups are rationed the same way: RW_WAKE_NS).
        busy_poller = zmq.Poller()
        busy_poller.register(self.pub.socket, zmq.POLLIN)
        if self.control is not None:
            busy_poller.register(self.control.socket, zmq.POLLIN)
        busy_poller.register(self._wake_r, zmq.POLLIN)
        idle_poller = zmq.Poller()
        idle_poller.register(self.ring.fd, zmq.POLLIN)
        for s, _ in busy_poller.sockets:
            idle_poller.register(s, zmq.POLLIN)
        if ready:
            ready()
        next_tick = time.monotonic() + 1.0
        busy = False
        drained_at = 0.0
        # A ring taken over from pins holds what the kernel saw while no collector ran: kept
        # until someone listens (the evaluator reconnecting), so that none of it is lost.
        hold_until = time.monotonic() + RING_HOLD_S if self.probes.reused else 0.0
        while not self._stopping:
            now = time.monotonic()
            holding = self.pub.broadcast.subscriptions == 0 and now < hold_until
            timeout = max(0.0, next_tick - now)
            if holding:
                timeout = min(timeout, 0.02)
            due = self.sigwatch.next_due_ns()
            if due is not None:
                timeout = min(timeout, max(0.0, due / 1e9 - now))
            if busy:
                timeout = min(timeout, max(0.0, drained_at + BUSY_POLL_S - now))
            if beat is not None:
                beat()
                timeout = min(timeout, BEAT_MAX_S)
            try:
                # in whole milliseconds (ZeroMQ's unit), rounded up: a wait rounded down to 0
                # would spin until the millisecond is over
                poller = busy_poller if busy or holding else idle_poller
                socks = dict(poller.poll(math.ceil(timeout * 1000)))
            except zmq.ZMQError as exc:
                if exc.errno == 4:  # EINTR: a signal; the flag decides
                    continue
                raise
            if holding:
                pass  # nobody listens yet to what the pinned ring kept
            elif busy and time.monotonic() < drained_at + BUSY_POLL_S:
                pass  # woken early by another socket: the ring waits for its millisecond
            else:
                drained_at = time.monotonic()
                busy = self.drain() > 0
                if self._mounts:
                    self.check_mounts()
            self.check_signals()
            if self.fs_queue or self._wake_r in socks:
                self._drain_fs()
            if gate is not None and gate.poll():
                self._stopping = True
            if self.pub.socket in socks:
                self.pub.drain_subscriptions()
            if self.control is not None:
                self.control.finish()
                if self.control.socket in socks:
                    self.control.serve()
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + 1.0
                self.rate = self.events_total - self._rate_mark
                self._rate_mark = self.events_total
                self.cache.refresh_clock()
                self.sweep_denials()
                self.report_losses()
                self.reconcile()
        self.drain()
        self.report_losses()

    def close(self, clean: bool = False) -> None:
        """``clean``: the stop was asked for by who started us (the service, `run`): the
        next collector snapshots the baselines afresh; otherwise it keeps the last good ones
        and judges the gap against them."""
        if clean:
            self.pin(clean=True)
        self.hosts.close()
        # Not asked to stop, and pinned: the kernel side stays in force (egress refused,
        # forks followed) for the collector that takes over.
        keep = not clean and self.probes.pins is not None
        if self._egress_root_fd is not None:
            if not keep:
                self.probes.detach_egress_root()
            os.close(self._egress_root_fd)
            self._egress_root_fd = None
        if self.control is not None:
            self.control.close()  # a restore under way finishes first
        if self.files is not None:
            self.files.close()
        self.ring.close()
        self.pub.close()
        self.probes.close(unpin=not keep)
