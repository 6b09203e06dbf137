"""The alert log's hash chain: each JSON line carries ``chain`` (``seq``, ``digest``: SHA-256 of
the previous line's digest and this line's alert text, ``mac``: HMAC of the digest under the
monitor's key, ``core.chain``), and ``verify`` says whether a log is intact or altered, where.

Owns the line form and its check; ``outputs.alerts.AlertFile`` writes through ``Chain``. The
chain goes on across rotation (the first line of a new file links to the last of the one
before), so a file that does not begin at seq 1 begins where its predecessor ended.
"""

from __future__ import annotations

import json
import os

from roguewatch.core import chain

_MARK = ',"chain":{'


class Chain:
    """The writer's side: the last link, and the next line."""

    def __init__(self, path: str, key: bytes | None = None) -> None:
        self.key = key if key is not None else chain.load_key()
        self.digest, self.seq = _last_link(path)

    def line(self, text: str) -> str:
        """``text`` (one alert as compact JSON) with its link (no newline)."""
        self.seq += 1
        self.digest = chain.link(self.digest, f"{self.seq}:".encode() + text.encode())
        mac = chain.mac(self.key, self.digest)
        link = f'"seq":{self.seq},"digest":"{self.digest.hex()}","mac":"{mac}"'
        return f"{text[:-1]}{_MARK}{link}}}}}"


def _split(line: str) -> tuple[str, dict] | None:
    """(the alert's own text, its chain) of one line, None when it has no chain."""
    at = line.rfind(_MARK)
    if at < 0 or not line.endswith("}}"):
        return None
    try:
        link = json.loads(line[at + len(_MARK) - 1 : -1])
    except ValueError:
        return None
    return (line[:at] + "}", link) if isinstance(link, dict) else None


def _last_link(path: str) -> tuple[bytes, int]:
    """The digest and seq of the log's last chained line (the genesis when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return chain.GENESIS, 0
    for line in reversed(tail):
        parts = _split(line.strip())
        if parts is not None:
            try:
                return bytes.fromhex(str(parts[1]["digest"])), int(parts[1]["seq"])
            except (KeyError, ValueError, TypeError):
                break
    return chain.GENESIS, 0


def verify(path: str, key: bytes | None = None) -> dict:
    """Whether the alert log at ``path`` is intact or altered, and at which line; OSError when
    it cannot be read."""
    key = key if key is not None else chain.load_key(create=False)
    prev: bytes | None = None
    expect = 0
    first = 0
    lines = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            lines += 1
            parts = _split(line)
            if parts is None:
                return _result("altered", f"{path}:{n}: a line without its chain link "
                               "(added, or edited by hand)", lines, key)  # fmt: skip
            text, link = parts
            try:
                seq, stated = int(link["seq"]), bytes.fromhex(str(link["digest"]))
            except (KeyError, ValueError, TypeError):
                return _result("altered", f"{path}:{n}: a malformed chain link", lines, key)
            if prev is None:
                first = seq
                prev = chain.GENESIS if seq == 1 else None
            elif seq != expect:
                return _result("altered", f"{path}:{n}: seq {seq} where {expect} was due: lines "
                               "were removed, added or moved", lines, key)  # fmt: skip
            if prev is not None:
                digest = chain.link(prev, f"{seq}:".encode() + text.encode())
                if digest != stated:
                    return _result("altered", f"{path}:{n}: the alert does not match its link "
                                   "(changed after it was written)", lines, key)  # fmt: skip
            if key is not None and chain.mac_ok(key, stated, str(link.get("mac") or "")) is False:
                return _result("altered", f"{path}:{n}: the link does not carry the monitor's "
                               "MAC (rewritten without the key)", lines, key)  # fmt: skip
            prev, expect = stated, seq + 1
    if not lines:
        return _result("intact", "empty", 0, key)
    begins = "" if first == 1 else f"; begins at seq {first} (after a rotated file)"
    return _result("intact", f"{lines} alerts, seq {first}-{expect - 1}{begins}", lines, key)


def _result(status: str, detail: str, lines: int, key: bytes | None) -> dict:
    how = "MACs checked" if key is not None else "digests checked (no key: MACs not)"
    return {"status": status, "detail": f"{detail}; {how}", "alerts": lines,
            "macs_checked": key is not None}  # fmt: skip
