"""The session report: one page a reviewer reads in a minute, and the same content as JSON.

Owns turning one session's events (a recording, or the daemon's per-session record) and its
alerts into the report: the summary (who ran what, when, for how long, under which policy and
mode; alerts by category, actions, what was killed, restored and quarantined; the shutdown
drill's result; losses, said at the top), the process tree (exec lineage with command lines,
exit codes and signals, the processes that alerted marked), the timeline of what left the
workspace (network attempts allowed and denied, files written outside it, signals and
ptrace aimed outside the session, namespace and cgroup changes, each with its alerts and
what was done), and every alert with its lineage and outcome.

The page (``render_html``) is one self-contained file: inline CSS, the timeline as inline
SVG, no script, no external asset, and a Content-Security-Policy that forbids every fetch,
so it opens from a mail attachment. It is rendered by Jinja2 with autoescaping: everything
the agent controls (names, paths, command lines) is text, never markup.

It must not judge events (the rules did: alerts come in made) nor read files: the caller
feeds it events (``ReportBuilder.add``, one pass, cheap per event: a report of a million
events is a bar in bench/README.md) and alerts. Repeated identical actions are aggregated
(a count, first and last time): the full stream stays in the recording.
"""

from __future__ import annotations

import os
import pwd
from collections import Counter
from dataclasses import dataclass, field

from roguewatch.core.timefmt import parse_rfc3339, rfc3339

FORMAT = "roguewatch-report"
VERSION = 1
# Bounds of the page (the JSON has the same): a reviewer's minute, and the 5 MB bar.
MAX_PROCESSES = 2000
MAX_TIMELINE = 2000
MAX_ALERTS = 2000
MAX_SIBLINGS = 25  # more children with one command line than this are folded into one row
_CMDLINE_MAX = 400
_WRITE_TYPES = frozenset({"open", "rename", "unlink", "link", "symlink", "chmod", "chown",
                          "truncate", "utimes", "fs_change"})  # fmt: skip
_NET_TYPES = frozenset({"connect", "sendto", "sendmsg"})
_NS_TYPES = frozenset({"unshare", "setns", "mount"})
# Written by every program, never the agent leaving its workspace.
_PSEUDO = ("/dev/null", "/dev/tty", "/dev/pts/", "/dev/stdout", "/dev/stderr", "/dev/shm/",
           "/proc/self/", "/dev/fd/")  # fmt: skip
_TIMELINE_TYPES = _NET_TYPES | _NS_TYPES | {"kill", "ptrace", "cgroup_attach", "refused",
                                            "tamper"}  # fmt: skip
_SPECIAL = frozenset({"fork", "exec", "exit", "session", "monitor", "drill"})
_MISS = object()
_FAST_MAX = 200_000
LANES = ("network", "files", "signals", "ptrace", "namespaces", "cgroups", "monitor")


def _short(text: object, n: int = _CMDLINE_MAX) -> str:
    s = str(text or "")
    return s if len(s) <= n else s[: n - 1] + "…"


def _beneath(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


@dataclass
class _Node:
    pid: int
    parent: _Node | None
    start_ns: int
    execs: list[str] = field(default_factory=list)
    exe: str = ""
    comm: str = ""
    code: int | None = None
    signal: int = 0
    end_ns: int = 0
    children: list[_Node] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)  # alert ids
    exec_ids: set[str] = field(default_factory=set)
    uid: int | None = None
    folded: int = 0  # siblings with the same command line shown as this one row


@dataclass
class _Item:
    lane: str
    what: str
    verdict: str  # allowed, denied, failed, done
    pid: int
    comm: str
    first_ns: int
    last_ns: int
    count: int = 1
    alerts: list[str] = field(default_factory=list)


def item_key(ev: dict, pid: int, roots: tuple[str, ...], inside: set[int] | None) -> tuple | None:
    """(lane, what, verdict) of an action that leaves the workspace, else None. ``roots``:
    the workspace; ``inside``: the session's pids (signals and ptrace aimed elsewhere)."""
    t = ev.get("type")
    flags = ev.get("flags") or ()
    if t in _NET_TYPES:
        addr = str(ev.get("addr") or "")
        if not addr or addr.startswith("/") or ev.get("family") in ("unix", "netlink"):
            return None
        what = f"{ev.get('proto') or t} {addr}:{ev.get('port', 0)}" if ":" not in addr else (
            f"{ev.get('proto') or t} [{addr}]:{ev.get('port', 0)}")  # fmt: skip
        if ev.get("dns_name"):
            what += f" (dns {ev['dns_name']})"
        verdict = "denied" if "denied" in flags else ("failed" if (ev.get("ret") or 0) < 0 else
                                                      "allowed")  # fmt: skip
        return ("network", what, verdict)
    if t in _WRITE_TYPES:
        path = str(ev.get("path") or "")
        if not path or _beneath(path, roots) or path.startswith(_PSEUDO):
            return None
        what = f"{t} {path}" + (f" ({ev['change']})" if ev.get("change") else "")
        if t in ("rename", "link", "symlink") and ev.get("source"):
            what = f"{t} {ev['source']} -> {path}"
        return ("files", what, "failed" if (ev.get("ret") or 0) < 0 else "done")
    if t in ("kill", "ptrace"):
        target = int(ev.get("target") or 0)
        if t == "kill" and not ev.get("sig"):
            return None  # kill(pid, 0): a probe, not a signal
        guard = "guard" in flags
        if not guard and inside is not None and target > 0 and target in inside:
            return None
        who = "the monitor" if guard else (f"process group {-target}" if target < 0 else
                                           f"pid {target}")  # fmt: skip
        what = (f"signal {ev.get('sig')} to {who}" if t == "kill" else
                f"ptrace request {ev.get('request')} on {who}")  # fmt: skip
        return ("signals" if t == "kill" else "ptrace", what,
                "failed" if (ev.get("ret") or 0) < 0 else "done")  # fmt: skip
    if t in _NS_TYPES:
        if t == "mount":
            what = f"{'umount' if ev.get('umount') else 'mount'} {ev.get('target', '')}"
        elif t == "unshare":
            what = f"unshare flags {int(ev.get('ns_flags') or 0):#x}"
        else:
            what = f"setns type {int(ev.get('nstype') or 0):#x}"
        return ("namespaces", what, "failed" if (ev.get("ret") or 0) < 0 else "done")
    if t == "cgroup_attach":
        return ("cgroups", f"task {ev.get('target')} moved to {ev.get('cgroup') or '/'}", "done")
    if t in ("refused", "tamper"):
        what = (f"{ev.get('call')} refused by the sandbox" if t == "refused" else
                f"tamper: {ev.get('kind')} {ev.get('target') or ''}".rstrip())  # fmt: skip
        return ("monitor", what, "denied")
    return None


class ReportBuilder:
    """Fed one session's events in order (``add``) and its alerts (``finish``)."""

    def __init__(self, header: dict | None = None, source: dict | None = None) -> None:
        self.header = dict(header or {})
        self.source = {"kind": "recording", "path": "", **(source or {})}
        self.session = int(self.header.get("session") or 0)
        self.events = 0
        self.by_type: Counter = Counter()
        self.first_ns = 0
        self.last_ns = 0
        self.start: dict = {}
        self.end: dict = {}
        self.drills: list[dict] = []
        self.losses: Counter = Counter()
        self.loss_details: list[str] = []
        self.nodes: dict[int, _Node] = {}  # pid -> its latest incarnation
        self.roots: list[_Node] = []
        self.count_nodes = 0
        self.items: dict[tuple, _Item] = {}
        self.items_dropped = 0
        self.workspace: tuple[str, ...] = ()
        self._root_cwd = ""
        self._inside_prefixes: tuple[str, ...] = ()
        self._fast: dict[tuple, _Item | None] = {}

    # -- the one pass ----------------------------------------------------------------------------

    def _node(self, pid: int, ts: int, ppid: int = 0) -> _Node:
        n = self.nodes.get(pid)
        if n is None:
            parent = self.nodes.get(ppid) if ppid else None
            n = _Node(pid, parent, ts)
            self.count_nodes += 1
            (parent.children if parent is not None else self.roots).append(n)
            self.nodes[pid] = n
        return n

    def add(self, ev: dict) -> None:
        """One event (the report's one pass: keep the common case, a write inside the
        workspace or an event the report only counts, a few dict operations)."""
        t = ev.get("type")
        self.events += 1
        by_type = self.by_type
        by_type[t] = by_type.get(t, 0) + 1
        ts = ev.get("ts") or 0
        if ts > self.last_ns:
            self.last_ns = ts
        if ts and (ts < self.first_ns or not self.first_ns):
            self.first_ns = ts
        if t in _WRITE_TYPES:
            path = ev.get("path")
            if (path and path.startswith(self._inside_prefixes) and not ev.get("source")
                    and ev.get("pid") in self.nodes):  # fmt: skip
                return  # written inside the workspace, by a process the tree has
        elif t not in _SPECIAL and t not in _TIMELINE_TYPES:
            pid = ev.get("pid") or 0
            if pid and pid not in self.nodes:
                self._stranger(ev, pid, ts)
            return
        pid = ev.get("pid") or 0
        if t == "fork":
            if ev.get("thread"):
                return
            child = ev.get("child_pid") or 0
            old = self.nodes.get(child)
            if old is not None and old.end_ns:
                del self.nodes[child]  # a reused pid: a new process
            parent = self._node(pid, ts, ev.get("ppid") or 0)
            n = self.nodes.get(child)
            if n is None:
                n = _Node(child, parent, ts, exe=parent.exe, comm=parent.comm, uid=parent.uid)
                self.count_nodes += 1
                parent.children.append(n)
                self.nodes[child] = n
            if ev.get("child_exec_id"):
                n.exec_ids.add(ev["child_exec_id"])
            return
        if t == "exec":
            n = self._node(pid, ts, ev.get("ppid") or 0)
            cmd = ev.get("cmdline") or " ".join(ev.get("argv") or ()) or ev.get("filename", "")
            n.execs.append(_short(cmd))
            n.uid = ev.get("uid", n.uid)
            n.exe = ev.get("exe") or ev.get("filename") or n.exe
            n.comm = ev.get("comm") or n.comm
            if ev.get("exec_id"):
                n.exec_ids.add(ev["exec_id"])
            if not self._root_cwd and (n.parent is None) and ev.get("cwd"):
                self._root_cwd = str(ev["cwd"])
                self._set_roots()
            return
        if t == "exit":
            n = self.nodes.get(pid)
            if n is None:
                n = self._node(pid, ts, ev.get("ppid") or 0)
            n.code = ev.get("code") or 0
            n.signal = ev.get("signal") or 0
            n.end_ns = ts
            n.comm = n.comm or ev.get("comm", "")
            return
        if t == "session":
            if ev.get("kind") == "start":
                self.start = ev
                writable = (ev.get("policy") or {}).get("writable")
                if writable:
                    self.workspace = tuple(os.path.normpath(w) for w in writable)
                    self._set_roots()
                root = ev.get("root") or 0
                if root and root not in self.nodes:
                    self._node(root, ts)
                if not self.session:
                    self.session = ev.get("session") or 0
            else:
                self.end = ev
            return
        if t == "monitor":
            if ev.get("kind") == "loss" and "budget" in (ev.get("flags") or ()):
                # This session's records dropped over its budget: totals since it started.
                self.losses["over_budget"] = max(self.losses["over_budget"],
                                                 int(ev.get("lost_budget") or 0))  # fmt: skip
                if ev.get("detail") and len(self.loss_details) < 20:
                    self.loss_details.append(str(ev["detail"]))
            elif ev.get("kind") == "loss":
                for k, v in (ev.get("lost_ring") or {}).items():
                    self.losses[f"ring:{k}"] += int(v or 0)
                for k in (
                    "lost_bus",
                    "lost_decode",
                    "lost_pending",
                    "untracked_forks",
                    "record_left_out",
                ):
                    if ev.get(k):
                        self.losses[k] += int(ev[k])
                if ev.get("detail") and len(self.loss_details) < 20:
                    self.loss_details.append(str(ev["detail"]))
            return
        if t == "drill":
            self.drills.append(ev)
            return
        if pid and pid not in self.nodes:
            self._stranger(ev, pid, ts)
        # The same action again (the common case of a loop): one lookup.
        fast = (
            t,
            pid,
            ev.get("path"),
            ev.get("addr"),
            ev.get("port"),
            ev.get("target"),
            ev.get("sig"),
            (ev.get("ret") or 0) < 0,
            "denied" in (ev.get("flags") or ()),
        )
        it = self._fast.get(fast, _MISS)
        if it is None:
            return  # seen before: not an action that leaves the workspace
        if it is not _MISS:
            it.count += 1
            if ts > it.last_ns:
                it.last_ns = ts
            return
        key = item_key(ev, pid, self._roots(), self._inside())
        it = None
        if key is not None:
            k = (*key, pid)
            it = self.items.get(k)
            if it is not None:
                it.count += 1
                it.last_ns = max(it.last_ns, ts)
            elif len(self.items) >= MAX_TIMELINE * 4:
                self.items_dropped += 1
                return
            else:
                it = self.items[k] = _Item(key[0], _short(key[1]), key[2], pid,
                                           ev.get("comm", ""), ts, ts)  # fmt: skip
        if len(self._fast) < _FAST_MAX:
            self._fast[fast] = it

    def _stranger(self, ev: dict, pid: int, ts: int) -> None:
        """A process first seen acting (not seen starting: tracked from /proc)."""
        n = self._node(pid, ts, ev.get("ppid") or 0)
        n.comm = ev.get("comm", "")
        n.exe = ev.get("exe", "")

    def _set_roots(self) -> None:
        roots = self._roots()
        self._inside_prefixes = tuple(r.rstrip("/") + "/" for r in roots)
        self._fast.clear()

    def _roots(self) -> tuple[str, ...]:
        return self.workspace or ((self._root_cwd,) if self._root_cwd else ())

    def _inside(self) -> set[int]:
        return self.nodes.keys()  # type: ignore[return-value]  (a live view: the session's pids)

    # -- the report ------------------------------------------------------------------------------

    def finish(self, alerts: list[dict], integrity: dict | None = None) -> dict:
        """The report as a JSON-ready dict (what ``--json`` prints and the page shows)."""
        sid = f"{self.session:x}"
        mine = [a for a in alerts if not self.session or a.get("session") in (sid, "0", "")]
        mine.sort(key=lambda a: a.get("ts", ""))
        self._mark(mine)
        start_ns = self.start.get("ts") or self.header.get("started") or self.first_ns
        end_ns = self.end.get("ts") or self.last_ns or start_ns
        pol = self.start.get("policy") or {}
        uid = self._root_uid()
        by_cat = Counter(a.get("category", "") for a in mine)
        actions = Counter(a.get("action", "") for a in mine if a.get("action") != "alert")
        killed = sum(int(a.get("killed") or 0) for a in mine)
        restored = [
            a["event"].get("path", "")
            for a in mine
            if a.get("action") == "restore" or "restored" in str(a.get("outcome"))
        ]
        quarantined = [a.get("outcome", "") for a in mine if "quarantin" in str(a.get("outcome"))]
        drill = self._drill(mine)
        losses_total = sum(self.losses.values())
        integrity = integrity or {"status": "unknown", "detail": "not verified"}
        problems = []
        if losses_total:
            problems.append(f"{losses_total} events were lost while this session ran: the "
                            "record below is incomplete")  # fmt: skip
        if integrity.get("status") not in ("intact", "unknown"):
            problems.append(f"the record is {integrity.get('status')}: {integrity.get('detail')}")
        if self.items_dropped:
            problems.append(f"{self.items_dropped} more distinct actions outside the workspace "
                            "than the report shows (see the recording)")  # fmt: skip
        timeline = sorted(self.items.values(), key=lambda i: i.first_ns)
        shown = timeline[:MAX_TIMELINE]
        processes = self._flatten()
        return {
            "format": FORMAT, "version": VERSION,
            "source": self.source, "integrity": integrity, "problems": problems,
            "summary": {
                "session": sid, "name": self.start.get("name") or "",
                "command": list(self.header.get("command") or ()),
                "root": self.start.get("root") or 0, "uid": uid, "user": _user(uid),
                "host": self.header.get("host", ""), "kernel": self.header.get("kernel", ""),
                "roguewatch": self.header.get("roguewatch", ""),
                "started": rfc3339(start_ns) if start_ns else "",
                "ended": rfc3339(end_ns) if end_ns else "",
                "duration_s": round(max(0, end_ns - start_ns) / 1e9, 3),
                "mode": self.start.get("mode") or pol.get("mode") or "",
                "policy": pol, "workspace": list(self._roots()),
                "events": self.events, "events_by_type": dict(self.by_type.most_common()),
                "processes": self.count_nodes,
                "alerts": len(mine), "alerts_by_category": dict(sorted(by_cat.items())),
                "actions": dict(sorted(actions.items())), "killed": killed,
                "restored": restored, "quarantined": quarantined,
                "drill": drill, "losses": dict(self.losses), "losses_total": losses_total,
                "loss_details": self.loss_details,
                "survivors_at_end": list(self.end.get("survivors") or ()),
            },
            "processes": processes,
            "processes_shown": len(processes), "processes_total": self.count_nodes,
            "timeline": [self._item(i, start_ns) for i in shown],
            "timeline_total": len(timeline) + self.items_dropped,
            "alerts": [self._alert(a) for a in mine[:MAX_ALERTS]],
            "alerts_total": len(mine),
        }  # fmt: skip

    def _root_uid(self) -> int | None:
        root = self.nodes.get(self.start.get("root") or 0)
        return None if root is None else root.uid

    def _mark(self, alerts: list[dict]) -> None:
        """Each alert on its process (by exec id, else pid) and on its timeline item."""
        by_eid: dict[str, _Node] = {}
        for n in self._walk():
            for eid in n.exec_ids:
                by_eid[eid] = n
        roots, inside = self._roots(), self._inside()
        for a in alerts:
            n = by_eid.get(a.get("exec_id") or "") or self.nodes.get(a.get("pid") or 0)
            if n is not None:
                n.alerts.append(a["id"])
            ev = a.get("event") or {}
            key = item_key(ev, a.get("pid") or 0, roots, inside)
            if key is not None:
                it = self.items.get((*key, a.get("pid") or 0))
                if it is None:  # the event itself is not in this record: the alert says it
                    ts = _ts_ns(a.get("ts"))
                    it = _Item(key[0], _short(key[1]), key[2], a.get("pid") or 0,
                               a.get("comm", ""), ts, ts)  # fmt: skip
                    self.items[(*key, a.get("pid") or 0)] = it
                it.alerts.append(a["id"])

    def _drill(self, alerts: list[dict]) -> dict | None:
        if self.drills:
            ev = self.drills[-1]
        else:
            found = [a["event"] for a in alerts if a.get("rule") == "shutdown_drill"]
            if not found:
                return None
            ev = found[-1]
        keys = ("verdict", "acts", "act_kinds", "request", "deadline_s", "exited", "killed",
                "survivors", "last_exit_s", "detail")  # fmt: skip
        return {k: ev.get(k) for k in keys}

    def _walk(self):
        stack = list(reversed(self.roots))
        while stack:
            n = stack.pop()
            yield n
            stack.extend(reversed(n.children))

    def _flatten(self) -> list[dict]:
        """The tree as rows (depth-first, each with its depth): no recursion in the page, and
        at most MAX_PROCESSES rows; many siblings with one command line fold into one."""
        rows: list[dict] = []
        stack: list[tuple[_Node, int]] = [(n, 0) for n in reversed(self.roots)]
        while stack and len(rows) < MAX_PROCESSES:
            n, depth = stack.pop()
            rows.append(_row(n, depth))
            kids = n.children
            groups: dict[str, list[_Node]] = {}
            for c in kids:
                groups.setdefault(c.execs[-1] if c.execs else c.comm, []).append(c)
            keep: list[_Node] = []
            for same in groups.values():
                if len(same) > MAX_SIBLINGS and not any(c.alerts or c.children for c in same):
                    keep.append(same[0])
                    same[0].folded = len(same) - 1
                else:
                    keep.extend(same)
            keep.sort(key=lambda c: c.start_ns)
            stack.extend((c, depth + 1) for c in reversed(keep))
        return rows

    @staticmethod
    def _item(i: _Item, start_ns: int) -> dict:
        return {"lane": i.lane, "what": i.what, "verdict": i.verdict, "pid": i.pid,
                "comm": i.comm, "first": rfc3339(i.first_ns) if i.first_ns else "",
                "t_s": round(max(0, i.first_ns - start_ns) / 1e9, 3),
                "last_t_s": round(max(0, i.last_ns - start_ns) / 1e9, 3),
                "count": i.count, "alerts": i.alerts}  # fmt: skip

    @staticmethod
    def _alert(a: dict) -> dict:
        keys = (
            "id",
            "ts",
            "rule",
            "message",
            "category",
            "severity",
            "pid",
            "comm",
            "exe",
            "cmdline",
            "lineage",
            "action",
            "outcome",
            "count",
            "killed",
            "event",
        )
        out = {k: a.get(k) for k in keys}
        out["cmdline"] = _short(out["cmdline"])
        out["message"] = _short(out["message"], 1000)
        return out


def _row(n: _Node, depth: int) -> dict:
    execs = n.execs[-8:]
    if not execs:  # forked, never exec'd: the program it was forked from
        p = n.parent
        while p is not None and not p.execs:
            p = p.parent
        execs = [f"(fork) {p.execs[-1]}" if p is not None else n.comm or "?"]
    return {
        "pid": n.pid, "depth": depth, "execs": execs,
        "exe": n.exe, "comm": n.comm,
        "exit": None if not n.end_ns else (
            f"signal {n.signal}" if n.signal else f"code {n.code}"),
        "alerts": n.alerts, "folded": n.folded,
    }  # fmt: skip


def _ts_ns(ts: object) -> int:
    try:
        return int(parse_rfc3339(str(ts)))
    except (ValueError, TypeError):
        return 0


def _user(uid: int | None) -> str:
    if uid is None:
        return ""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


# -- the page ------------------------------------------------------------------------------------

_COLORS = {"denied": "#c62828", "failed": "#8d6e63", "allowed": "#2e7d32", "done": "#1565c0"}
SVG_MARKS = 1500


def timeline_svg(report: dict, width: int = 1050) -> dict:
    """Where each timeline item goes on the page's SVG: lanes, marks, ticks (numbers only:
    the template draws them, escaping every label)."""
    items = report["timeline"][:SVG_MARKS]
    lanes = [lane for lane in LANES if any(i["lane"] == lane for i in items)]
    left, right, top, row = 90, width - 10, 20, 26
    span = max([report["summary"]["duration_s"], *(i["last_t_s"] for i in items), 0.001])
    y_of = {lane: top + k * row for k, lane in enumerate(lanes)}
    height = top + len(lanes) * row + 24

    def x(t: float) -> float:
        return round(left + (right - left) * min(max(t / span, 0.0), 1.0), 1)

    marks = []
    for i in items:
        title = f"{i['t_s']:.3f} s {i['lane']}: {i['what']} ({i['verdict']}, pid {i['pid']}"
        title += f", {i['count']} times)" if i["count"] > 1 else ")"
        marks.append({"x": x(i["t_s"]), "x2": x(i["last_t_s"]), "y": y_of[i["lane"]],
                      "color": _COLORS.get(i["verdict"], "#546e7a"),
                      "alerted": bool(i["alerts"]), "title": title})  # fmt: skip
    step = _tick_step(span)
    ticks = [{"x": x(k * step), "label": f"{k * step:g} s"}
             for k in range(int(span / step) + 1)]  # fmt: skip
    lane_rows = [{"name": lane, "y": y} for lane, y in y_of.items()]
    return {"width": width, "height": height, "left": left, "lanes": lane_rows,
            "marks": marks, "ticks": ticks}  # fmt: skip


def _tick_step(span: float) -> float:
    for step in (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600):
        if span / step <= 10:
            return step
    return 7200.0


def render_html(report: dict) -> str:
    """The report as one self-contained HTML page."""
    import jinja2

    from roguewatch import __version__

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates")),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True,
    )  # fmt: skip
    page = env.get_template("report.html.j2")
    return page.render(
        r=report, s=report["summary"], svg=timeline_svg(report),
        alerts_by_id={a["id"]: a for a in report["alerts"]}, generator=__version__,
    )  # fmt: skip
