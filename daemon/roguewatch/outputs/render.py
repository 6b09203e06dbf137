"""Human and JSON forms of events, for the console and `roguewatch events`.

Also owns ``printable``: the one way agent-controlled text (comm, paths, command lines) is made
safe for a terminal, for events here and for alerts (``outputs.alerts.human``).
"""

from __future__ import annotations

import base64
import json
import re
import time

# C0 controls, DEL and C1 controls (0x9b is CSI on terminals that take 8-bit controls).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: object) -> str:
    """``value`` as text with every control character shown as ``\\xNN``: agent-controlled
    text must not drive the reader's terminal (clear it, move the cursor, fake a line)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _detail(ev: dict) -> str:
    t = ev.get("type")
    if t in ("connect", "sendto", "sendmsg", "bind"):
        d = f"{ev.get('proto') or ev.get('family', '')} {ev.get('addr', '')}:{ev.get('port', 0)}"
        if ev.get("dns_name"):
            d += f" dns={ev['dns_name']}"
        return d
    if t == "exec":
        return ev.get("cmdline") or ev.get("filename", "")
    if t == "fork":
        return f"child={ev.get('child_pid')}{' thread' if ev.get('thread') else ''}"
    if t == "exit":
        return f"signal={ev['signal']}" if ev.get("signal") else f"code={ev.get('code')}"
    if t in ("rename", "link", "symlink"):
        return f"{ev.get('source', '')} -> {ev.get('path', '')}"
    if t in ("kill", "ptrace"):
        what = f"sig={ev.get('sig')}" if t == "kill" else f"request={ev.get('request')}"
        return f"target={ev.get('target')} {what}"
    if t == "monitor":
        return ev.get("detail", ev.get("kind", ""))
    for key in ("path", "target", "name", "newcomm", "handler"):
        if ev.get(key) not in (None, ""):
            return str(ev[key])
    return ""


def human(ev: dict) -> str:
    """One line: time, session, pid, comm, type, detail; control characters escaped."""
    ts = ev.get("ts", 0)
    clock = (
        time.strftime("%H:%M:%S", time.localtime(ts / 1e9)) + f".{ts % 1_000_000_000 // 1000:06d}"
    )
    flags = ",".join(ev.get("flags") or [])
    ret = ev.get("ret")
    tail = f" ret={ret}" if ret not in (None, 0) else ""
    repeats = ev.get("repeats")
    if repeats:  # folded in the kernel: the calls it stands for, and over how long
        span = (ev.get("last_ts") or 0) - (ev.get("first_ts") or 0)
        tail += f" (repeated x{repeats} in {span / 1e6:.1f} ms)"
    return printable(
        f"{clock} {ev.get('session', 0):x} {ev.get('pid', 0)} {ev.get('comm', '')} "
        f"{ev.get('type')} {_detail(ev)}{tail}{f' [{flags}]' if flags else ''}"
    )


def _default(o: object) -> object:
    if isinstance(o, bytes):
        return base64.b64encode(o).decode()
    raise TypeError(type(o).__name__)


def as_json(ev: dict) -> str:
    return json.dumps(ev, default=_default, separators=(",", ":"))
