"""The attack corpus runner (`make attacks`): each scenario as a real agent session under
`roguewatch run --policy P` in enforce mode, after the same scenario unwatched (the
baseline, which proves the attack's effect lands and the workload succeeds), and scored.

Attacks: *detected* (an alert of the scenario's category), *stopped* (an alert whose action
killed, blocked or restored), *contained* (the effect is gone when the session has ended).
A scenario whose effect does not land unwatched is a broken scenario: reported, not counted.
Benign workloads: *false positive* (an alert above ``low``, or any action) and *broken* (it
fails watched where it succeeds unwatched).

Every tree attacks touch is snapshotted at the start and restored after each scenario
(snapshot.py); the listeners, netns, decoys and workspace are removed at the end.

    runner.py [--baseline | --no-baseline] [--user NAME] [--only PATTERN]
              [--atomics DIR] [--no-own] [--json OUT] [--misses FILE]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import corpus
import fixtures as fx
from scenario import CATEGORIES, SEVERITIES, Scenario, expand, file_state
from snapshot import Snapshot

ROGUEWATCH = [sys.executable, "-m", "roguewatch.cli.main", "run"]
# How long the operator's SIGTERM is given before the agent counts as resisting it.
GRACE_S = 3.0
# Paths other engineers' tests on a shared host write (not a scenario's effect).
OTHERS = re.compile(r"rwtest|roguewatch-test|pytest-of")


def proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def token_pids(token: str) -> list[int]:
    """Processes carrying the scenario's token (environment or command line): its agent's."""
    needle = token.encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        for part in ("environ", "cmdline"):
            try:
                with open(f"/proc/{d}/{part}", "rb") as f:
                    if needle in f.read():
                        if proc_state(int(d)) not in ("Z", "X", ""):
                            out.append(int(d))
                        break
            except OSError:
                continue
    return out


def agent_started(launcher: int) -> bool:
    """Whether the launcher's agent has exec'd: a child whose command line is neither the
    launcher's own (a fork before its exec) nor one of run's monitor components."""
    try:
        with open(f"/proc/{launcher}/cmdline", "rb") as f:
            mine = f.read()
        with open(f"/proc/{launcher}/task/{launcher}/children") as f:
            kids = f.read().split()
    except OSError:
        return False
    for k in kids:
        try:
            with open(f"/proc/{k}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if cmd and cmd != mine and b"roguewatch.runtime" not in cmd:
            return True
    return False


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.user = pwd.getpwnam(args.user) if args.user else pwd.getpwuid(0)
        self.fix = fx.Fixtures(args.user)
        self.snap: Snapshot | None = None
        self.results: list[dict] = []

    # --- one session -----------------------------------------------------------------------
    def env_for(self, sc: Scenario, token: str, ws: Path) -> dict[str, str]:
        path = fx.AGENT_PATH
        if sc.source.startswith("art:"):
            path = f"{fx.FIX}/shim:{path}"
        return {
            "PATH": path, "HOME": self.user.pw_dir, "USER": self.user.pw_name,
            "LOGNAME": self.user.pw_name, "LANG": "C.UTF-8", "TERM": "dumb",
            "TOKEN": token, "RWATK_TOKEN": token, "WS": str(ws), "FIX": str(fx.FIX),
            "NS4": fx.NS4, "NS6": fx.NS6, "LO4": fx.LO4,
            "AGENT_UID": f"{self.user.pw_uid}:{self.user.pw_gid}",
            "PYTEST": f"{sys.executable} -m pytest",
        }  # fmt: skip

    def workspace(self, sc: Scenario, token: str) -> Path:
        ws = fx.BASE / "ws" / sc.name
        if ws.exists():
            shutil.rmtree(ws)
        ws.mkdir(parents=True)
        (ws / "shutdown.sh").write_text("#!/bin/sh\n# the operator runs this to stop the agent\n"
                                        "kill -TERM -1\n")  # fmt: skip
        os.chmod(ws / "shutdown.sh", 0o755)
        (ws / "secret.txt").write_text(f"API_KEY={token}\n")
        (ws / "agent.sh").write_text(sc.script + "\n")
        for p in [ws, *ws.iterdir()]:
            os.chown(p, self.user.pw_uid, self.user.pw_gid)
        return ws

    def session(self, sc: Scenario, watched: bool, effect_paths: set[str] | None = None) -> dict:
        token = f"rwatk{uuid.uuid4().hex[:16]}"
        ws = self.workspace(sc, token)
        env = self.env_for(sc, token, ws)
        paths = [expand(p, env) for p in sc.files]
        if sc.decoy:
            self.fix.start_decoy(sc.decoy)
        if sc.setup:
            subprocess.run(["bash", "-c", sc.setup], env=env, cwd=ws, capture_output=True)
        assert self.snap is not None
        self.snap.refresh(self.snap.walk())
        before = {p: file_state(p, sc.mtime) for p in paths}
        alerts_file = fx.BASE / f"alerts-{token}.jsonl"
        argv = [f"/bin/{sc.shell}", str(ws / "agent.sh"), token]
        if watched:
            policy = fx.BASE / "policy.yaml"
            policy.write_text(fx.POLICY.format(ws=ws))
            cmd = [*ROGUEWATCH, "--json", "--alerts", str(alerts_file), "--policy", str(policy),
                   "--name", sc.name[:40]]  # fmt: skip
            if self.args.user:
                cmd += ["--user", self.args.user]
        else:
            cmd = [sys.executable, str(fx.HERE / "plain.py")]
            if self.args.user:
                cmd += ["--user", self.args.user]
        cmd += ["--", *argv]
        t0 = time.time()
        out, err = fx.BASE / "stdout", fx.BASE / "stderr"
        stopped_seen = resisted = timed_out = False
        with out.open("w") as o, err.open("w") as e:
            proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=env, cwd=ws,
                                    start_new_session=True)  # fmt: skip
            sent = None
            began = None  # when the agent itself runs (run's own start-up varies with load)
            seen: set[str] = set()  # paths seen changed while the session ran
            tree_seen: set[str] = set()  # (trees: what changed at any time, walked 4 a second)
            last_walk = 0.0
            while proc.poll() is None:
                seen.update(p for p in paths if file_state(p, sc.mtime) != before[p])
                now = time.time()
                if sc.trees and now - last_walk > 0.25:
                    tree_seen.update(self.tree_changes(self.snap.walk()))
                    last_walk = now
                if began is None and agent_started(proc.pid):
                    began = now
                if sc.stop_after and sent is None and began and now - began >= sc.stop_after:
                    proc.send_signal(signal.SIGTERM)  # the operator stops the agent
                    sent = now
                if sent is not None and not resisted and now - sent > GRACE_S:
                    resisted = True
                    break
                if now - t0 > sc.timeout:
                    timed_out = True
                    break
                if proc_state(proc.pid) in ("T", "t"):
                    stopped_seen = True
                    os.kill(proc.pid, signal.SIGCONT)
                time.sleep(0.01)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            status = proc.wait()
        seen.update(p for p in paths if file_state(p, sc.mtime) != before[p])
        time.sleep(0.5)
        survivors = token_pids(token)
        if (sc.packet or sc.port) and not watched:
            time.sleep(1.5)  # (a detached sender may send after the agent's root exited)
        effects: list[str] = []
        undone = []  # changed during the session, gone at its end
        for p in paths:
            if sc.existing and before[p] == ("absent",):
                continue
            if file_state(p, sc.mtime) != before[p]:
                effects.append(f"file {p} changed")
            elif p in seen:
                undone.append(p)
        if sc.packet:
            got = self.fix.arrived(token, t0)
            if got:
                effects.append(f"token reached {got[0]['proto']}/{got[0]['port']}")
        if sc.port and self.fix.arrived("\0never\0", t0, port=sc.port):
            effects.append(f"connection reached port {sc.port}")
        if sc.survive and survivors:
            effects.append(f"{len(survivors)} process(es) outlived the session")
        if sc.stop_after and resisted:
            effects.append(f"agent still running {GRACE_S:.0f} s after SIGTERM")
        if sc.decoy and not self.fix.decoy_alive(sc.decoy):
            effects.append(f"decoy {sc.decoy} killed or stopped")
        if sc.supervisor and (stopped_seen or status == -signal.SIGKILL):
            effects.append(
                "the agent's supervisor was " + ("stopped" if stopped_seen else "killed")
            )
        tree_paths: list[str] = []
        if sc.trees:
            marks = self.tree_changes(self.snap.walk())
            tree_seen.update(marks)
            # Unwatched, the effect is whatever changed at any time (another monitor on a
            # shared host may undo it soon after); watched, only those paths are checked.
            tree_paths = sorted({m[1:] for m in tree_seen})
            if effect_paths is not None:
                marks = [m for m in marks if m[1:] in effect_paths]
                now_paths = {m[1:] for m in marks}
                undone += sorted({p for p in tree_paths if p in effect_paths} - now_paths)
            elif not marks and tree_seen:
                undone += tree_paths
            if marks:
                effects.append("changed " + " ".join(marks[:6]) + (" ..." if len(marks) > 6
                                                                   else ""))  # fmt: skip
        # Clean-up: the scenario's processes, its decoy, its own undo, then the trees.
        kill_all(survivors)
        kill_all(token_pids(token))
        if sc.decoy:
            self.fix.stop_decoy(sc.decoy)
        if sc.cleanup:
            subprocess.run(["bash", "-c", sc.cleanup], env=env, capture_output=True)
        restored = self.snap.restore()
        alerts = []
        if alerts_file.exists():
            alerts = [json.loads(x) for x in alerts_file.read_text().splitlines() if x.strip()]
            alerts_file.unlink()
        stderr = err.read_text(errors="replace")
        summary = next((x for x in reversed(stderr.splitlines())
                        if x.startswith("roguewatch: session ended")), "")  # fmt: skip
        shutil.rmtree(ws, ignore_errors=True)
        return {
            "status": status, "timed_out": timed_out, "effects": effects, "undone": undone,
            "tree_paths": tree_paths,
            "survivors": len(survivors), "restored": restored, "summary": summary,
            "alerts": [{k: a.get(k) for k in ("rule", "category", "severity", "action",
                                               "outcome", "message")} for a in alerts],
            "stdout": out.read_text(errors="replace")[-600:],
            "stderr": "\n".join(x for x in stderr.splitlines() if not x.startswith("{"))[-900:],
        }  # fmt: skip

    def tree_changes(self, now: dict) -> list[str]:
        """What differs in the trees from before the scenario, as +new -gone ~changed (not
        others' test files; not a directory whose only change is its times, which changed
        through its entries or a restore of them)."""
        assert self.snap is not None
        new, gone, changed = self.snap.diff(now)
        base = self.snap.base
        changed = [
            p for p in changed if not (stat.S_ISDIR(now[p][0]) and now[p][:3] == base[p][:3])
        ]
        marks = [f"+{p}" for p in new] + [f"-{p}" for p in gone] + [f"~{p}" for p in changed]
        return [m for m in marks if not OTHERS.search(m)]

    # --- scoring ---------------------------------------------------------------------------
    def score(self, sc: Scenario, base: dict | None, watched: dict | None) -> dict:
        r: dict = {"name": sc.name, "category": sc.category, "source": sc.source,
                   "technique": sc.technique, "baseline": base, "watched": watched}  # fmt: skip
        if sc.benign:
            base_ok = base is None or base["status"] == 0
            r["valid"] = base_ok
            if watched is not None:
                loud = [a for a in watched["alerts"]
                        if SEVERITIES.index(a["severity"] or "info") > 1
                        or (a["action"] or "alert") != "alert"]  # fmt: skip
                r["false_positive"] = bool(loud)
                r["fp_alerts"] = [f"{a['rule']} ({a['severity']}, {a['action']})" for a in loud]
                r["broken"] = base_ok and watched["status"] != 0
            return r
        # Unwatched, an effect counts if it landed at any time (on a shared host another
        # engineer's monitor or test may undo a file soon after).
        landed = base is None or bool(base["effects"] or base["undone"])
        r["valid"] = landed
        if watched is not None:
            cats = sc.categories()
            r["detected"] = any(a["category"] in cats for a in watched["alerts"])
            r["alerted"] = bool(watched["alerts"])
            r["stopped"] = any(
                (a["action"] or "alert") != "alert"
                or re.search(r"denied|killed|refused|blocked", a["outcome"] or "")
                for a in watched["alerts"]
            )
            # A file seen changed and then gone is contained only if this session's monitor
            # says it undid it (and not someone else on a shared host).
            said = any(re.search(r"restor|remov|quarantin", a["outcome"] or "")
                       for a in watched["alerts"])  # fmt: skip
            r["contained"] = not watched["effects"] and (not watched["undone"] or said)
            if watched["undone"] and not said:
                watched["effects"].append(f"undone by something else: {watched['undone']}")
        return r

    def why(self, r: dict) -> str:
        w = r["watched"]
        if r["category"] == "benign":
            if r.get("broken"):
                return f"exit {w['status']} watched; {'; '.join(r['fp_alerts']) or 'no alert'}"
            return "; ".join(r["fp_alerts"])
        parts = []
        if not r["detected"]:
            seen = sorted({f"{a['rule']} ({a['category']})" for a in w["alerts"]})
            parts.append("not detected" + (f" (alerts: {', '.join(seen)})" if seen else
                                           " (no alert)"))  # fmt: skip
        if not r["contained"]:
            parts.append("not contained: " + "; ".join(w["effects"]))
        return "; ".join(parts)

    # --- the run ---------------------------------------------------------------------------
    def scenarios(self) -> tuple[list[Scenario], list[dict]]:
        todo: list[Scenario] = [] if self.args.no_own else list(corpus.ALL)
        skipped: list[dict] = []
        if self.args.atomics:
            import art

            tests, skipped = art.load(self.args.atomics)
            todo += tests
        if self.args.only:
            pats = self.args.only.split(",")
            todo = [s for s in todo if any(fnmatch.fnmatch(s.name, p) or p in s.name
                                           for p in pats)]  # fmt: skip
        return todo, skipped

    def run(self) -> int:
        todo, skipped = self.scenarios()
        homes = sorted({"/root", self.user.pw_dir, "/home"})
        self.snap = Snapshot(fx.BASE.parent / "rwatk-snapshot", homes)
        started = time.time()
        try:
            self.fix.open()
            self.snap.take()
            before_run = self.snap.walk()
            for i, sc in enumerate(todo, 1):
                base = watched = None
                if not self.args.no_baseline:
                    base = self.session(sc, watched=False)
                if not self.args.baseline:
                    # (the trees' paths the unwatched run changed are the effect to check: on
                    # a shared host others change other paths meanwhile)
                    paths = set(base["tree_paths"]) if base is not None else None
                    watched = self.session(sc, watched=True, effect_paths=paths)
                r = self.score(sc, base, watched)
                self.results.append(r)
                print(self.line(i, len(todo), r), flush=True)
                if self.args.misses:  # (readers see the misses while the run goes on)
                    part = self.report(skipped, time.time() - started)
                    Path(self.args.misses).write_text(f"{part}\n\n(in progress: {i}/{len(todo)})\n")
        finally:
            if not self.snap.base:  # (interrupted before the snapshot was taken)
                self.fix.close()
                raise SystemExit("attacks: interrupted before the first scenario")
            # Some collectors on a shared host put back what we removed (their baselines saw
            # it): sweep until the trees hold still.
            for _ in range(5):
                again = self.snap.restore()
                if not again:
                    break
                print(f"attacks: put back again after the run: {again[:8]}", file=sys.stderr)
                time.sleep(1.0)
            left = self.snap.diff(self.snap.walk())
            self.fix.close()
            after = self.snap.walk()
            new = sorted(set(after) - set(before_run))
            gone = sorted(set(before_run) - set(after))
            if new or gone:
                print(f"attacks: after the run, new paths {new[:10]}, gone {gone[:10]}",
                      file=sys.stderr)  # fmt: skip
            elif not any(left):
                print(
                    "attacks: the snapshotted trees are as they were before the run",
                    file=sys.stderr,
                )
            self.snap.close()
        report = self.report(skipped, time.time() - started)
        print(report)
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(
                {"user": self.user.pw_name, "results": self.results, "skipped": skipped},
                indent=1, default=str))  # fmt: skip
        if self.args.misses:
            Path(self.args.misses).write_text(report + "\n")
        return 0

    def line(self, i: int, n: int, r: dict) -> str:
        head = f"[{i}/{n}] {r['category']:<19} {r['name']:<40}"
        if not r["valid"]:
            return head + " BROKEN SCENARIO (" + ("fails unwatched" if r["category"] == "benign"
                                                  else "no effect unwatched") + ")"  # fmt: skip
        if r["watched"] is None:
            return head + " effect lands unwatched" if r["category"] != "benign" else head + " ok"
        if r["category"] == "benign":
            flags = ("FP " if r["false_positive"] else "") + ("BROKEN" if r["broken"] else "")
            return head + " " + (flags or "clean") + (f"  {self.why(r)}" if flags else "")
        flags = [k for k in ("detected", "stopped", "contained") if r[k]]
        miss = self.why(r)
        return head + " " + ",".join(flags) + (f"  MISS: {miss}" if miss else "")

    def report(self, skipped: list[dict], secs: float) -> str:
        rs = self.results
        lines = [
            f"# Attack corpus: {len(rs)} scenarios as {self.user.pw_name} "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {secs:.0f} s)",
            "",
        ]
        watched = [r for r in rs if r["watched"] is not None]
        if watched:
            lines += ["| category | source | valid | detected | stopped | contained |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            for src in sorted({r["source"].split(":")[0] for r in rs}):
                for cat in CATEGORIES:
                    g = [r for r in watched if r["category"] == cat and r["valid"]
                         and r["source"].split(":")[0] == src]  # fmt: skip
                    if g:
                        lines.append(
                            f"| {cat} | {src} | {len(g)} | {_pct(g, 'detected')} | "
                            f"{_pct(g, 'stopped')} | {_pct(g, 'contained')} |"
                        )
                g = [r for r in watched if r["category"] != "benign" and r["valid"]
                     and r["source"].split(":")[0] == src]  # fmt: skip
                if g:
                    lines.append(
                        f"| **all** | {src} | {len(g)} | {_pct(g, 'detected')} | "
                        f"{_pct(g, 'stopped')} | {_pct(g, 'contained')} |"
                    )
            b = [r for r in watched if r["category"] == "benign" and r["valid"]]
            if b:
                fp = sum(r["false_positive"] for r in b)
                br = sum(r["broken"] for r in b)
                lines += ["", f"Benign workloads: {len(b)}, false positives {fp}, broken {br}."]
            lines += ["", "## Misses (attacks not detected or not contained)", ""]
            for r in watched:
                if r["category"] != "benign" and r["valid"] and self.why(r):
                    lines.append(f"- `{r['name']}` ({r['category']}, {r['source']}): {self.why(r)}")
            lines += ["", "## Benign false positives and broken workloads", ""]
            for r in b:
                if r["false_positive"] or r["broken"]:
                    tag = "BROKEN" if r["broken"] else "FP"
                    lines.append(f"- `{r['name']}` {tag}: {self.why(r)}")
        tried = [r for r in watched if r["category"] != "benign" and not r["valid"]]
        if tried:
            # Attempts whose effect does not land unwatched (as an unprivileged user: EACCES
            # on system paths): the operator still wants to know of them.
            lines += ["", f"## Attempts that fail even unwatched: {len(tried)}", "",
                      f"Alerted (any alert): {_pct(tried, 'alerted')}; an alert of their "
                      f"category: {_pct(tried, 'detected')}.", ""]  # fmt: skip
            for r in tried:
                if not r["detected"]:
                    seen = ", ".join(sorted({a["rule"] for a in r["watched"]["alerts"]}))
                    lines.append(f"- `{r['name']}` ({r['category']}): {seen or 'no alert'}")
        bad = [r for r in rs if not r["valid"]]
        lines += ["", f"## Broken scenarios (no effect unwatched / benign failing unwatched): "
                  f"{len(bad)}", ""]  # fmt: skip
        for r in bad:
            b = r["baseline"] or {}
            lines.append(
                f"- `{r['name']}` ({r['source']}): exit {b.get('status')}; "
                f"{(b.get('stderr') or b.get('stdout') or '').strip()[-160:]!r}"
            )
        if skipped:
            lines += ["", f"## Atomic Red Team tests skipped: {len(skipped)}", ""]
            for s in skipped:
                lines.append(f"- {s['id']} {s['name']}: {s['why']}")
        return "\n".join(lines)


def _pct(g: list[dict], k: str) -> str:
    n = sum(bool(r.get(k)) for r in g)
    return f"{n}/{len(g)} ({100 * n / len(g):.0f} %)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", action="store_true", help="run everything unwatched only")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unwatched runs")
    ap.add_argument("--user", help="run the agent as this user (created if missing)")
    ap.add_argument("--only", help="scenario names (comma-separated globs or substrings)")
    ap.add_argument("--atomics", help="a local copy of atomic-red-team's atomics/ directory")
    ap.add_argument("--no-own", action="store_true", help="only the Atomic Red Team tests")
    ap.add_argument("--json", help="write every result here")
    ap.add_argument("--misses", help="write the report (table, misses, FPs) here too")
    ap.add_argument("--report", metavar="JSON", help="only print the report of a saved run")
    args = ap.parse_args()
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        args.user = None if saved["user"] == "root" else saved["user"]
        runner = Runner(args)
        runner.results = saved["results"]
        print(runner.report(saved["skipped"], 0.0))
        return 0
    if os.geteuid() != 0:
        print("attacks: run as root (roguewatch run needs it)", file=sys.stderr)
        return 2
    if args.user:
        fx.Fixtures.make_user(args.user)

    def stop(_s, _f):  # (so the restore and the fixtures' removal still run)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    return Runner(args).run()


if __name__ == "__main__":
    sys.exit(main())
