"""`roguewatch quarantine list|show ID|release ID`: the operator's view of the quarantine.

Every quarantine on the host: roguewatchd's (``/var/lib/roguewatch/quarantine``) and those of
the private collectors of `roguewatch run` (``/var/lib/roguewatch/private/*/quarantine``,
kept after the run ends). ``release`` (alias ``restore``) is the operator's deliberate undo.

Owns the command line only; the quarantine itself (where the agent's versions of restored files
are kept, with a JSON sidecar saying who changed what and which rule restored it) is
``roguewatch.respond.baseline``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from roguewatch.core.paths import PRIVATE_STATE
from roguewatch.respond.baseline import STATE_DIR, BaselineError, Baselines

PREVIEW_BYTES = 4096


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quarantine", help="agents' versions of restored files: list, show, release")
    p.add_argument("--state-dir", default=STATE_DIR, help=argparse.SUPPRESS)
    p.set_defaults(fn=lambda args: _usage(p))
    qs = p.add_subparsers(dest="quarantine_cmd", metavar="{list,show,release}")
    q = qs.add_parser("list", help="list quarantined files, oldest first")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q.set_defaults(fn=cmd_list)
    q = qs.add_parser("show", help="show one entry: who, when, which rule, and the content")
    q.add_argument("id")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_show)
    q = qs.add_parser("release", aliases=["restore"],
                      help="put the agent's version back and make it the new baseline")  # fmt: skip
    q.add_argument("id")
    q.set_defaults(fn=cmd_release)


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_usage(sys.stderr)
    return 2


def _open(args: argparse.Namespace) -> Baselines | None:
    stores = _stores(args)
    return stores[0] if stores else None


def _stores(args: argparse.Namespace) -> list[Baselines]:
    """The service's store, then every private collector's that holds a quarantine."""
    if os.geteuid() != 0:
        print("roguewatch: needs root (the state directory is root-only): use sudo",
              file=sys.stderr)  # fmt: skip
        return []
    try:
        out = [Baselines(args.state_dir)]
    except (OSError, BaselineError, ValueError) as exc:
        print(f"roguewatch: cannot open {args.state_dir}: {exc}", file=sys.stderr)
        return []
    private = os.path.join(args.state_dir, os.path.relpath(PRIVATE_STATE, STATE_DIR))
    try:
        names = sorted(os.listdir(private))
    except OSError:
        names = []
    for n in names:
        d = os.path.join(private, n)
        q = os.path.join(d, "quarantine")
        if os.path.isdir(q) and not os.path.islink(d) and os.listdir(q):
            try:
                out.append(Baselines(d))
            except (OSError, BaselineError, ValueError):
                continue
    return out


def _find(args: argparse.Namespace, qid: str) -> Baselines | None:
    for b in _stores(args):
        if os.path.isfile(os.path.join(b.quarantine_dir, qid, "meta.json")):
            return b
    return None


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if ns else "-"


def _who(w: dict[str, Any]) -> str:
    parts = [f"{k} {w[k]}" for k in ("rule", "session", "pid", "exe", "alert") if w.get(k)]
    parts += [f"{k} {v}" for k, v in w.items() if k not in ("rule", "session", "pid", "exe",
              "alert") and v not in ("", None)]  # fmt: skip
    return ", ".join(parts) or "unknown"


def cmd_list(args: argparse.Namespace) -> int:
    stores = _stores(args)
    if not stores:
        return 1
    entries = sorted((e for b in stores for e in b.quarantine_list()),
                     key=lambda e: (e.get("ts", 0), e.get("id", "")))  # fmt: skip
    if args.json:
        for e in entries:
            print(json.dumps(e, sort_keys=True))
        return 0
    if not entries:
        print("quarantine is empty")
        return 0
    print(f"{'ID':<26} {'WHEN':<19} {'STATE':<8} {'SESSION':<16} {'RULE':<34} {'PATH':<40} WHO")
    for e in entries:
        state = "released" if e.get("released") else "held"
        who = dict(e.get("who") or {})
        session, rule = str(who.pop("session", "") or "-"), str(who.pop("rule", "") or "-")
        for k in ("started_ns", "source", "mode", "xattr", "open_flags"):
            who.pop(k, None)
        print(f"{e['id']:<26} {_when(e.get('ts', 0)):<19} {state:<8} {session:<16} {rule:<34} "
              f"{e.get('path', ''):<40} {_who(who)}")  # fmt: skip
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    b = _find(args, args.id) or _open(args)
    if b is None:
        return 1
    try:
        e = b.quarantine_show(args.id)
    except (OSError, BaselineError, ValueError) as exc:
        print(f"roguewatch: no quarantine entry {args.id!r}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(e, sort_keys=True, indent=1))
        return 0
    print(f"id:       {e['id']}")
    print(f"path:     {e.get('path', '')}")
    print(f"when:     {_when(e.get('ts', 0))}")
    print(f"who:      {_who(e.get('who') or {})}")
    print(f"type:     {e.get('type', '')}  mode {e.get('mode', 0):04o}  "
          f"owner {e.get('uid')}:{e.get('gid')}  size {e.get('size', 0)}")  # fmt: skip
    if e.get("sha256"):
        print(f"sha256:   {e['sha256']}")
    if e.get("target"):
        print(f"target:   {e['target']} (a symlink; never followed)")
    if e.get("released"):
        print(f"released: {_when(e['released'])}")
        return 0
    print(f"content:  {e['content_path']}")
    if e.get("type") == "file":
        try:
            fd = os.open(e["content_path"], os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                data = f.read(PREVIEW_BYTES + 1)
        except OSError as exc:
            print(f"(cannot read the content: {exc})")
            return 0
        text = data[:PREVIEW_BYTES].decode("utf-8", "replace")
        print("---")
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        if len(data) > PREVIEW_BYTES:
            print(f"... (first {PREVIEW_BYTES} bytes shown)")
    return 0


def _as_roguewatch() -> None:
    """Ask a running collector to guard this process, so the files a release writes are
    roguewatch's own writes (not alerted) rather than an unknown writer's."""
    from roguewatch.stream.control import ControlError, running

    client = running()
    if client is None:
        return  # no collector: nothing watches the files either
    try:
        client.request("guard", pid=os.getpid())
    except ControlError:
        pass
    finally:
        client.close()


def cmd_release(args: argparse.Namespace) -> int:
    b = _find(args, args.id) or _open(args)
    if b is None:
        return 1
    _as_roguewatch()
    try:
        out = b.quarantine_release(
            args.id, {"operator": os.environ.get("SUDO_USER") or "root", "via": "cli"}
        )
    except (OSError, BaselineError, ValueError) as exc:
        print(f"roguewatch: cannot release {args.id!r}: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0
