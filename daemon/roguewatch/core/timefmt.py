"""Time as roguewatch writes and reads it: RFC 3339 (UTC, microseconds) and ``--since``.

Owns the one formatter every alert, record and report uses, its parser, and the windows
``tail --since`` accepts (a time, or a duration back from now).
"""

from __future__ import annotations

import calendar
import re
import time
from datetime import datetime


def rfc3339(ts_ns: int) -> str:
    """``2026-11-23T22:30:01.123456Z`` from nanoseconds since the epoch (UTC, microseconds)."""
    secs, ns = divmod(int(ts_ns), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ns // 1000:06d}Z"


_TS_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})(?:[Tt ](?P<time>\d{2}:\d{2}(?::\d{2})?)(?P<frac>\.\d+)?)?"
    r"\s*(?P<tz>[Zz]|[+-]\d{2}:?\d{2})?$"
)


def parse_rfc3339(text: str) -> int:
    """Nanoseconds since the epoch from an RFC 3339 time (or a date, or one without an offset).

    Without an offset the time is local, as ``journalctl --since`` reads it. Fractions keep
    their full precision (datetime alone would cut them at microseconds).
    """
    m = _TS_RE.match(text.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    clock = m["time"] or "00:00:00"
    if len(clock) == 5:
        clock += ":00"
    tz = m["tz"] or ""
    if tz in ("Z", "z"):
        tz = "+00:00"
    elif tz and ":" not in tz:
        tz = f"{tz[:3]}:{tz[3:]}"
    try:
        dt = datetime.fromisoformat(f"{m['date']}T{clock}{tz}")
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 time: {text!r} ({exc})") from None
    if dt.tzinfo is None:
        secs = int(time.mktime(dt.timetuple()))
    else:
        secs = calendar.timegm(dt.utctimetuple())
    frac = m["frac"] or ".0"
    ns = int((frac[1:] + "000000000")[:9])
    return secs * 1_000_000_000 + ns


_UNIT_NS = {
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
    "w": 7 * 86400 * 1_000_000_000,
}
_DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?[smhdw])+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_since(text: str, now: int | None = None) -> int:
    """The start of a time window, in ns: an RFC 3339 time, or a duration back from now.

    Durations are a number and a unit (``30s``, ``10m``, ``2h``, ``1d``, ``1w``), and may be
    combined (``1h30m``). ``now`` is in ns (default: the current time).
    """
    raw = text.strip()
    compact = raw.lower().replace(" ", "")
    if _DURATION_RE.match(compact):
        back = sum(int(float(n) * _UNIT_NS[u]) for n, u in _DURATION_PART.findall(compact))
        return (time.time_ns() if now is None else now) - back
    try:
        return parse_rfc3339(raw)
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time: give an RFC 3339 time "
            "(2026-11-23T22:30:01Z, 2026-11-23 22:30) or a duration back from now "
            "(30s, 10m, 2h, 1d, 1h30m)"
        ) from None
