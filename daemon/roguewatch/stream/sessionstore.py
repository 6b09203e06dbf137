"""The record kept of each `roguewatch run` session, so that its report can be made after it
ended: its events as a chained recording, and its alerts as a chained alert log, under
``paths.SESSION_RECORDS`` (root's only), bounded and rotated.

Owns the store's layout (``<session hex>.rwrec`` and ``<session hex>.alerts.jsonl``), its
bounds (events per session: past ``max_events`` only exits, session, drill and monitor events
are kept, and the record says how many were left out; at most ``keep`` sessions, the oldest
removed first) and the recorder: a thread of the launcher, off the monitor's event path,
that subscribes to the event stream and writes the session's events, sealing each batch.
"""

from __future__ import annotations

import glob
import os
import threading
import time

from roguewatch.core.paths import SESSION_RECORDS
from roguewatch.stream import recording
from roguewatch.stream.bus import BusError, Subscriber

KEEP_SESSIONS = 100
MAX_EVENTS = 2_000_000
# Kept past the bound: what the report needs to say how the session ended.
_ALWAYS = frozenset({"exit", "session", "drill", "monitor", "tamper"})


def directory(base: str = SESSION_RECORDS) -> str:
    os.makedirs(base, mode=0o700, exist_ok=True)
    return base


def paths_of(session: int, base: str = SESSION_RECORDS) -> tuple[str, str]:
    return (os.path.join(base, f"{session:x}.rwrec"),
            os.path.join(base, f"{session:x}.alerts.jsonl"))  # fmt: skip


def find(key: str, base: str = SESSION_RECORDS) -> str | None:
    """The kept recording of the session ``key`` (hex id, with or without 0x)."""
    k = key.lower().removeprefix("0x").lstrip("0")
    if not k or not all(c in "0123456789abcdef" for c in k):
        return None
    path = os.path.join(base, f"{k}.rwrec")
    return path if os.path.isfile(path) else None


def newest(n: int, base: str = SESSION_RECORDS) -> list[str]:
    """The ids of the ``n`` sessions whose records were kept last."""
    recs = sorted(glob.glob(os.path.join(base, "*.rwrec")), key=_mtime, reverse=True)
    return [os.path.basename(p).removesuffix(".rwrec") for p in recs[:n]]


def alerts_of(recording_path: str) -> str | None:
    """The alert log kept beside a kept recording, when there is one."""
    path = recording_path.removesuffix(".rwrec") + ".alerts.jsonl"
    return path if path != recording_path and os.path.isfile(path) else None


def rotate(base: str = SESSION_RECORDS, keep: int = KEEP_SESSIONS) -> int:
    """Remove the oldest sessions' records beyond ``keep``; how many were removed."""
    recs = sorted(glob.glob(os.path.join(base, "*.rwrec")), key=_mtime)
    gone = 0
    for path in recs[: max(0, len(recs) - keep)]:
        for p in (path, path.removesuffix(".rwrec") + ".alerts.jsonl"):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        gone += 1
    return gone


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


class Recorder:
    """Writes one session's events to its kept record, from a thread of its own."""

    def __init__(self, events: str, session: int, command: list[str],
                 base: str = SESSION_RECORDS, max_events: int = MAX_EVENTS) -> None:  # fmt: skip
        directory(base)
        rotate(base, KEEP_SESSIONS - 1)
        self.path, self.alerts_path = paths_of(session, base)
        self.session = session
        self.max_events = max_events
        self.left_out = 0
        self._sub = Subscriber(events)
        self._writer = recording.Writer(self.path, command, session, mode=0o600)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="session-record", daemon=True)

    @classmethod
    def start(cls, events: str, session: int, command: list[str], **kw: object) -> Recorder | None:
        """A running recorder, or None when the store or the stream cannot be had (the
        session runs all the same: its report then cannot be made after it ends)."""
        try:
            rec = cls(events, session, command, **kw)  # type: ignore[arg-type]
        except (OSError, BusError, recording.RecordingError):
            return None
        if not rec._sub.wait_ready(2000):
            rec._sub.close()
            rec._writer.close()
            return None
        rec._thread.start()
        return rec

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._take(self._sub.recv_batch(100))
        end = time.monotonic() + 0.3  # what is still in flight: the root's own exit
        while time.monotonic() < end:
            if not self._take(self._sub.recv_batch(50)):
                break

    def _take(self, batch: list[dict] | None) -> int:
        n = 0
        for ev in batch or ():
            mine = ev.get("session") == self.session
            # the monitor's losses of the whole host, not another session's over its budget
            host_loss = ev.get("type") == "monitor" and ev.get("kind") == "loss"
            if not mine and not (host_loss and not ev.get("session")):
                continue
            if self._writer.count >= self.max_events and ev.get("type") not in _ALWAYS:
                self.left_out += 1
                continue
            self._writer.write(ev)
            n += 1
        if n:
            self._writer.seal()
        return n

    def stop(self) -> str:
        """Finish the record (sealed); its path."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self.left_out:
            self._writer.write({
                "type": "monitor", "kind": "loss", "ts": time.time_ns(), "session": self.session,
                "pid": 0, "flags": [], "lost_bus": 0, "record_left_out": self.left_out,
                "detail": f"the session's kept record reached its bound ({self.max_events} "
                f"events): {self.left_out} events were left out of it",
            })  # fmt: skip
        self._writer.close()
        self._sub.close()
        return self.path
