"""The alert stream's sinks: where alerts go, and their human form.

Owns the delivery of alerts that the evaluator has already decided on: a ZeroMQ PUB socket
(``ipc:///run/roguewatch/alerts.sock``, one msgpack map per message), an append-only JSON-lines
file rotated by size, journald with structured ``ROGUEWATCH_*`` fields, and the console. It also
owns the alert's time format (RFC 3339, UTC, microseconds), the severity order, and the compact
one-line form that ``roguewatch tail`` and ``roguewatch run`` print.

It must not decide what is an alert, how severe it is or what is done about it: that is the
evaluator's and the enforcer's. An alert here is a plain dict following the contract in
``docs/architecture.md`` (typed as ``core.contracts.Alert``).

Every sink is best-effort and never blocks the evaluator: a slow subscriber, a full disk or a
missing journald is counted, never raised into the caller (:class:`Sinks` isolates them).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import msgpack
import zmq

from roguewatch.core.paths import ALERTS_ENDPOINT, ALERTS_FILE
from roguewatch.core.timefmt import parse_rfc3339
from roguewatch.outputs.render import printable
from roguewatch.stream import bus

log = logging.getLogger("roguewatch.outputs.alerts")

JOURNAL_SOCKET = "/run/systemd/journal/socket"

SEVERITIES = ("info", "low", "medium", "high", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}

# syslog priorities (journald's PRIORITY=): crit, err, warning, notice, info.
JOURNAL_PRIORITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}

# Alerts are rare next to events: a deep queue per subscriber costs little and rides out a
# subscriber that pauses (a terminal scrolled back, a laptop lid closed on ssh).
ALERT_SEND_HWM = 10_000


def severity_rank(severity: str) -> int:
    """0 for info up to 4 for critical; -1 for anything that is not a known severity."""
    return _RANK.get(severity, -1)


# ---------------------------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------------------------


def _json_default(o: object) -> object:
    # The evaluator already base64s bytes; this keeps one stray bytes value from losing an alert.
    if isinstance(o, bytes | bytearray):
        return base64.b64encode(o).decode()
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def to_json(alert: dict) -> str:
    """The alert as one compact JSON line (no trailing newline)."""
    return json.dumps(alert, default=_json_default, separators=(",", ":"))


def pack(alert: dict) -> bytes:
    """The alert as one msgpack map, the message format of the alert socket."""
    return msgpack.packb(alert, use_bin_type=True, default=_json_default)


def unpack(frame: bytes) -> dict | None:
    """One alert from a socket message; None for the welcome (an empty map). ValueError if bad."""
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ValueError(f"not msgpack: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("not an alert map")
    return obj or None


# ---------------------------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------------------------


class Sink(Protocol):
    def send(self, alert: dict) -> bool: ...


class AlertPublisher:
    """Alerts on a ZeroMQ PUB socket, one msgpack map per message; never blocks.

    A :class:`roguewatch.stream.bus.Broadcast` (as the event stream's publisher): a full
    subscriber queue is counted in ``lost``, never dropped silently. Each new subscriber is
    greeted with an empty map so it knows when its subscription is live; subscribers skip
    empty maps. The owner must service the socket (``drain_subscriptions``) for new
    subscribers to be attached and welcomed: ``Sinks.service`` does.
    """

    def __init__(
        self, endpoint: str = ALERTS_ENDPOINT, context: zmq.Context | None = None,
        send_hwm: int = ALERT_SEND_HWM, **peers: Any,
    ) -> None:  # fmt: skip
        self.endpoint = endpoint
        self.sent = 0
        self.lost = 0
        self._out = bus.Broadcast(endpoint, pack({}), send_hwm, context, **peers)

    @property
    def socket(self) -> zmq.Socket:
        return self._out.socket

    @property
    def subscriptions(self) -> int:
        return self._out.subscriptions

    def send(self, alert: dict) -> bool:
        self.drain_subscriptions()
        if not self._out.send(pack(alert)):
            self.lost += 1
            return False
        self.sent += 1
        return True

    def drain_subscriptions(self, timeout_ms: int = 0) -> int:
        """Attach (and welcome) new subscribers; how many came. With ``timeout_ms`` it waits
        that long for the first one (to know someone listens)."""
        return self._out.drain_subscriptions(timeout_ms)

    def close(self) -> None:
        self._out.close()


@dataclass
class AlertFile:
    """Append-only JSON lines, one alert per line, written through per alert, rotated by size.

    Each alert is one ``write()`` on an ``O_APPEND`` descriptor (no user-space buffer), so a
    reader never sees half an alert from a crash of ours and every alert is on disk as soon as
    ``send`` returns (in the page cache: ``fsync`` per alert would cost a disk flush each).
    Rotation renames ``path`` to ``path.1``, ``path.1`` to ``path.2``... keeping ``keep`` rotated
    files (the oldest is dropped), so a reader following the file sees the inode change. A file
    that holds an alert another sink did not deliver (``hold``: a subscriber's full queue, a
    failing journald or fleet spool) is never dropped: it leaves the numbered chain at its
    rotation, as ``path.undelivered-<ns>``, kept until an operator has it delivered.
    """

    path: str = ALERTS_FILE
    max_bytes: int = 10 * 1024 * 1024
    keep: int = 5
    written: int = 0
    failed: int = 0
    rotations: int = 0
    kept: int = 0  # files kept out of the chain for their undelivered alerts
    # Each line linked to the one before (outputs/alertchain.py): the evaluator's log.
    chained: bool = False
    _fd: int | None = field(default=None, init=False, repr=False)
    _size: int = field(default=0, init=False, repr=False)
    _chain: Any = field(default=None, init=False, repr=False)
    _holding: bool = field(default=False, init=False, repr=False)

    def hold(self) -> None:
        """The current file holds an alert another sink did not deliver: rotation keeps it."""
        self._holding = True

    def __post_init__(self) -> None:
        if self.chained:
            from roguewatch.outputs.alertchain import Chain

            self._chain = Chain(self.path)
        self._open()

    def _open(self) -> None:
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o750, exist_ok=True)
            os.chmod(directory, 0o750)  # makedirs' mode is filtered by the umask
        existed = os.path.exists(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        if not existed:
            os.fchmod(fd, 0o640)  # ours and new: the umask must not change its mode
        self._fd = fd
        self._size = os.fstat(fd).st_size

    def _rotate(self) -> None:
        self._close_fd()
        if self._holding:
            held = f"{self.path}.undelivered-{time.time_ns()}"
            os.rename(self.path, held)
            log.warning("alert file rotated: %s holds alerts another sink did not deliver, "
                        "kept as %s", self.path, held)  # fmt: skip
            self._holding = False
            self.kept += 1
        elif self.keep <= 0:
            os.unlink(self.path)
        else:
            oldest = f"{self.path}.{self.keep}"
            if os.path.exists(oldest):
                os.unlink(oldest)
            for n in range(self.keep - 1, 0, -1):
                src = f"{self.path}.{n}"
                if os.path.exists(src):
                    os.rename(src, f"{self.path}.{n + 1}")
            os.rename(self.path, f"{self.path}.1")
        self.rotations += 1
        self._open()

    def send(self, alert: dict) -> bool:
        text = to_json(alert)
        data = ((self._chain.line(text) if self._chain is not None else text) + "\n").encode()
        try:
            if self._fd is None:
                self._open()  # a previous failure closed it: try again now
            if self._size > 0 and self._size + len(data) > self.max_bytes:
                self._rotate()
            assert self._fd is not None
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self._size += n
        except OSError as exc:
            self.failed += 1
            if self.failed == 1 or self.failed % 1000 == 0:
                log.warning(
                    "cannot write alerts to %s: %s (%d failed)", self.path, exc, self.failed
                )
            self._close_fd()
            return False
        self.written += 1
        return True

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()


class Journal:
    """Alerts to journald with structured ``ROGUEWATCH_*`` fields and a severity ``PRIORITY``.

    Where there is no journald (containers, build machines) ``available`` is False, sending does
    nothing, and that is logged once: a host without journald still gets every other sink.
    """

    def __init__(self, socket_path: str = JOURNAL_SOCKET) -> None:
        self.sent = 0
        self.failed = 0
        self.reason = ""
        self._send: Callable[..., Any] | None = None
        self._reported = False
        try:
            from systemd import journal
        except ImportError:
            self.reason = "the systemd Python module is not installed"
        else:
            if os.path.exists(socket_path):
                self._send = journal.send
            else:
                self.reason = f"journald is not running ({socket_path} does not exist)"

    @property
    def available(self) -> bool:
        return self._send is not None

    @staticmethod
    def fields(alert: dict) -> dict[str, str]:
        """The journal entry for an alert: its message, priority and structured fields."""
        event = alert.get("event") or {}
        return {
            "MESSAGE": f"{alert.get('rule', '?')}: {alert.get('message', '')}",
            "PRIORITY": str(JOURNAL_PRIORITY.get(alert.get("severity", ""), 4)),
            "SYSLOG_IDENTIFIER": "roguewatch",
            "ROGUEWATCH_RULE": str(alert.get("rule", "")),
            "ROGUEWATCH_CATEGORY": str(alert.get("category", "")),
            "ROGUEWATCH_SEVERITY": str(alert.get("severity", "")),
            "ROGUEWATCH_SESSION": str(alert.get("session", "")),
            "ROGUEWATCH_ACTION": str(alert.get("action", "")),
            "ROGUEWATCH_OUTCOME": str(alert.get("outcome", "")),
            "ROGUEWATCH_PID": str(alert.get("pid", "")),
            "ROGUEWATCH_EXE": str(alert.get("exe", "")),
            "ROGUEWATCH_EVENT": str(event.get("type", "")) if isinstance(event, dict) else "",
            "ROGUEWATCH_ALERT_ID": str(alert.get("id", "")),
            "ROGUEWATCH_ALERT": to_json(alert),
        }

    def send(self, alert: dict) -> bool:
        if self._send is None:
            if not self._reported:
                self._reported = True
                log.info("alerts are not sent to journald: %s", self.reason)
            return False
        try:
            self._send(**self.fields(alert))
        except OSError as exc:
            self.failed += 1
            if self.failed == 1:
                log.warning("cannot send alerts to journald: %s", exc)
            return False
        self.sent += 1
        return True


# ---------------------------------------------------------------------------------------------
# The human form
# ---------------------------------------------------------------------------------------------

_RESET = "\033[0m"
_SEVERITY_COLOR = {
    "critical": "\033[1;97;41m",  # bold white on red
    "high": "\033[1;31m",
    "medium": "\033[33m",
    "low": "\033[36m",
    "info": "\033[2m",
}


def _hostport(addr: object, port: object) -> str:
    a = str(addr or "")
    if ":" in a and port not in (None, "", 0):
        return f"[{a}]:{port}"  # IPv6
    return f"{a}:{port}" if port not in (None, "", 0) else a


# The event types detail() shows in their own way (stream/events.py names every type).
DETAIL_NETWORK_TYPES = ("connect", "sendto", "sendmsg", "bind", "listen")
DETAIL_SIGNAL_TYPES = ("kill", "ptrace")
DETAIL_TWO_PATH_TYPES = ("rename", "link", "symlink")


def detail(event: dict) -> str:
    """The one thing a person needs from the triggering event: path, destination, target..."""
    if not isinstance(event, dict):
        return ""
    t = event.get("type")
    if t in DETAIL_NETWORK_TYPES:
        d = _hostport(event.get("addr"), event.get("port"))
        if event.get("proto"):
            d = f"{event['proto']} {d}"
        if event.get("dns_name"):
            d += f" dns={event['dns_name']}"
        return d
    if t in DETAIL_SIGNAL_TYPES:
        what = f"sig={event.get('sig')}" if "sig" in event else f"request={event.get('request')}"
        return f"target={event.get('target')} {what}"
    if t == "exec":
        return str(event.get("filename") or event.get("cmdline") or "")
    if t in DETAIL_TWO_PATH_TYPES:
        return f"{event.get('source', '')} -> {event.get('path', '')}"
    if t == "monitor":
        return str(event.get("detail") or event.get("kind") or "")
    for key in ("path", "filename", "target", "name", "newcomm", "handler"):
        if event.get(key) not in (None, ""):
            return str(event[key])
    return ""


def _clock(ts: object) -> str:
    try:
        ns = parse_rfc3339(str(ts))
    except ValueError:
        return "??:??:??"
    return time.strftime("%H:%M:%S", time.localtime(ns // 1_000_000_000))


def human(alert: dict, color: bool = False) -> str:
    """One compact line: time, severity, rule, session, process, detail, action and outcome.

    ``22:30:01 high     egress_outside_allowlist 1a2b curl[4242] tcp 203.0.113.9:443 ->
    kill_session (3 processes killed) (x2)`` (on one line).
    """
    sev = str(alert.get("severity", "?"))
    sev_text = f"{sev:<8}"
    if color and sev in _SEVERITY_COLOR:
        sev_text = f"{_SEVERITY_COLOR[sev]}{sev}{_RESET}" + " " * max(0, 8 - len(sev))
    parts = [
        _clock(alert.get("ts")),
        sev_text,
        printable(alert.get("rule", "?")),
        f"session={printable(alert.get('session') or '-')}",
        f"{printable(alert.get('comm') or '?')}[{alert.get('pid', '?')}]",
    ]
    what = detail(alert.get("event") or {})
    if what:
        parts.append(printable(what))
    action = alert.get("action")
    if action:
        outcome = alert.get("outcome")
        parts.append(f"-> {printable(action)}" + (f" ({printable(outcome)})" if outcome else ""))
    count = alert.get("count")
    if isinstance(count, int) and count > 1:
        parts.append(f"(x{count})")
    return " ".join(parts)


@dataclass
class Console:
    """The console sink of ``roguewatch run``: one human line per alert (or JSON)."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    color: bool | None = None  # None: when the stream is a terminal
    as_json: bool = False

    def send(self, alert: dict) -> bool:
        if self.as_json:
            line = to_json(alert)
        else:
            color = self.color if self.color is not None else _isatty(self.stream)
            line = human(alert, color)
        self.stream.write(line + "\n")
        self.stream.flush()
        return True


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# Fan-out
# ---------------------------------------------------------------------------------------------


def _sink_name(sink: object) -> str:
    name = getattr(sink, "__name__", None) or type(sink).__name__
    return str(name)


class Sinks:
    """Sends each alert to every sink; one failing sink never stops the others.

    A sink is an object with ``send(alert)`` or a plain callable taking the alert. Exceptions
    are caught per sink, counted in ``failures`` (by sink name) and logged the first time.
    """

    def __init__(self, sinks: Iterable[Sink | Callable[[dict], object]] = ()) -> None:
        self.sinks: list[Any] = []
        self.names: list[str] = []
        self.failures: dict[str, int] = {}
        self.emitted = 0
        for sink in sinks:
            self.add(sink)

    def add(self, sink: Sink | Callable[[dict], object], name: str | None = None) -> None:
        name = name or _sink_name(sink)
        if name in self.names:  # two consoles, two files: keep their counters apart
            name = f"{name}#{len(self.names)}"
        self.sinks.append(sink)
        self.names.append(name)
        self.failures.setdefault(name, 0)

    def emit(self, alert: dict) -> None:
        self.emitted += 1
        undelivered = False
        for sink, name in zip(self.sinks, self.names, strict=True):
            try:
                send = getattr(sink, "send", None)
                ok = send(alert) if send is not None else sink(alert)
                # (a sink that is off, such as journald on a host without it, delivers nothing
                # by design: not a loss)
                if ok is False and getattr(sink, "available", True):
                    undelivered = True
            except Exception as exc:  # isolation is the point: any sink, any failure
                undelivered = True
                self.failures[name] += 1
                if self.failures[name] == 1:
                    log.warning("alert sink %s failed: %s: %s", name, type(exc).__name__, exc)
        if undelivered:  # the alert files keep it through their rotation
            for sink in self.sinks:
                hold = getattr(sink, "hold", None)
                if hold is not None:
                    hold()

    # Sinks is itself a sink: ``Sinks.send`` and calling it are the same as ``emit``.
    send = emit
    __call__ = emit

    def service(self) -> None:
        """Housekeeping for sinks that need it; call it on every loop iteration (>= 1/s).

        The alert publisher only welcomes new subscribers when its socket is touched: without
        this, ``roguewatch tail --follow`` would wait for the next alert to know it is live.
        """
        for sink, name in zip(self.sinks, self.names, strict=True):
            drain = getattr(sink, "drain_subscriptions", None)
            if drain is None:
                continue
            try:
                drain()
            except Exception as exc:
                self.failures[name] += 1
                if self.failures[name] == 1:
                    log.warning("alert sink %s failed: %s: %s", name, type(exc).__name__, exc)

    def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
