"""What the evaluator hands to the fleet: every alert and every session's start and end
summary, as spool records (subject, message id, payload), written before anything leaves
the host.

Owns the record payloads (the alert as JSON with its ``host``; session summaries with the
session's alert counts by severity and the processes its alerts' actions ended) and the
message id: ``<host>-<boot id>-<sequence>``, stamped when the record is spooled, so a copy
re-sent after a reconnect, a restart or a reboot carries the same id and the server drops it.

:class:`Recorder` is an alert sink (``send``) for ``roguewatch.outputs.alerts.Sinks`` plus
``session(event)`` for the stream's `session` events; ``commit()`` once per evaluator loop turn
makes the batch durable (one fsync). It must not block on the network: the forwarder publishes.
"""

from __future__ import annotations

import json
import time
from collections import Counter

from roguewatch.core.cache import BoundedDict
from roguewatch.core.timefmt import rfc3339
from roguewatch.fleet import spool, subjects
from roguewatch.policy.fleetconfig import FleetConfig

SPOOL_FULL_RULE = "roguewatch_fleet_spool_full"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    try:
        with open(BOOT_ID) as f:
            return f.read().strip().replace("-", "")[:32] or "noboot"
    except OSError:
        return "noboot"


def dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


class Recorder:
    def __init__(self, fc: FleetConfig, host: str | None = None, boot: str | None = None) -> None:
        self.host = host or fc.host()
        self.boot = boot or boot_id()
        self.prefix = f"{self.host}-{self.boot}-"
        self.writer = spool.Writer(fc.spool_dir, fc.spool_max_bytes)
        # Per live session: its name and start, alerts by severity, processes ended.
        self._sessions: BoundedDict[str, dict] = BoundedDict(65536)
        self._reported_drops = 0
        self.spooled = 0

    def send(self, alert: dict) -> bool:
        payload = dumps({**alert, "host": self.host})
        severity = str(alert.get("severity", ""))
        seq = self.writer.append(
            subjects.alert(self.host, str(alert.get("category", ""))), self.prefix, severity,
            payload, reserve=alert.get("rule") == SPOOL_FULL_RULE,
        )  # fmt: skip
        sid = str(alert.get("session") or "0")
        if sid != "0":
            s = self._sessions.get(sid)
            if s is not None:
                s["alerts"][severity] += 1
                s["killed"] += int(alert.get("killed") or 0)
        if seq is None:
            return False
        self.spooled += 1
        return True

    def session(self, ev: dict) -> None:
        """A `session` event of the stream: its start or end summary, spooled."""
        sid = f"{int(ev.get('session', 0)):x}"
        kind = str(ev.get("kind", ""))
        ts = int(ev.get("ts") or time.time_ns())
        if kind == "start":
            self._sessions.put(sid, {"name": ev.get("name", ""), "start": ts,
                                     "alerts": Counter(), "killed": 0})  # fmt: skip
            summary = {
                "type": "session", "kind": "start", "ts": rfc3339(ts), "host": self.host,
                "session": sid, "name": ev.get("name", ""), "root": ev.get("root", 0),
                "mode": ev.get("mode", ""), "cgroup": ev.get("cgroup", ""),
                "adopted": "adopted" in (ev.get("flags") or ()),
                "policy": ev.get("policy") or {},
            }  # fmt: skip
        elif kind == "end":
            s = self._sessions.pop(sid, None) or {}
            summary = {
                "type": "session", "kind": "end", "ts": rfc3339(ts), "host": self.host,
                "session": sid, "name": s.get("name", ""), "root": ev.get("pid", 0),
                "duration_s": round((ts - s["start"]) / 1e9, 3) if s else None,
                "survivors": len(ev.get("survivors") or ()),
                "alerts": dict(s.get("alerts") or {}), "killed": s.get("killed", 0),
            }  # fmt: skip
        else:
            return
        self.writer.append(subjects.session(self.host, kind), self.prefix, "info",
                           dumps(summary))  # fmt: skip

    def commit(self) -> int:
        """Make what was appended durable; how many records the bound dropped since the last
        call (the caller raises the critical alert)."""
        self.writer.commit()
        dropped = self.writer.dropped - self._reported_drops
        self._reported_drops = self.writer.dropped
        return dropped

    def close(self) -> None:
        self.writer.close()
