"""Recordings: a session's events in a file, as `roguewatch record` (and `run`'s kept
session record) writes them, chained so that a rewrite is seen.

Format: a msgpack stream. The first object is a header map (``format``, ``version``, host,
kernel, roguewatch version, the command, the session, and since version 2 ``chain``: the
algorithm and the id of the key); every following object is one event map exactly as it was
on the bus, or a *seal*: a map with ``seal`` (its number), ``n`` (the events since the last
seal), ``digest`` (SHA-256 of the previous seal's digest, the packed bytes of those events
and the seal's own numbers; the first one chains from the header's bytes), ``mac`` (HMAC of
the digest under the monitor's key, ``core.chain``) and ``final`` on the last one, written
at close. The writer seals each batch (``seal``). Readers check the header and name what is
wrong; ``verify`` says whether a file is intact, truncated or altered, and where.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import msgpack

from roguewatch import __version__
from roguewatch.core import chain

FORMAT = "roguewatch-recording"
VERSION = 2
READS = (1, 2)  # version 1: no chain


class RecordingError(Exception):
    pass


def _seal_data(seq: int, n: int, final: bool) -> bytes:
    return f"seal:{seq}:{n}:{int(final)}".encode()


class Writer:
    def __init__(self, path: str, command: list[str], session: int = 0,
                 key: bytes | None = None, mode: int = 0o644) -> None:  # fmt: skip
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        self._f: BinaryIO = os.fdopen(fd, "wb")
        self._packer = msgpack.Packer(use_bin_type=True)
        self.count = 0
        self._key = key if key is not None else chain.load_key()
        self.header = {
            "format": FORMAT, "version": VERSION, "host": socket.gethostname(),
            "kernel": platform.release(), "roguewatch": __version__, "command": command,
            "session": session, "started": time.time_ns(),
            "chain": {"alg": chain.ALG, "key": chain.key_id(self._key)},
        }  # fmt: skip
        head = self._packer.pack(self.header)
        self._f.write(head)
        self._digest = chain.link(chain.GENESIS, head)
        self._batch: list[bytes] = []
        self._seq = 0
        self._closed = False

    def write(self, event: dict) -> None:
        data = self._packer.pack(event)
        self._f.write(data)
        self._batch.append(data)
        self.count += 1

    def seal(self, final: bool = False) -> None:
        """Seal the events written since the last seal (a batch), and flush: what is sealed
        is on its way to disk. Nothing to seal (and not final): nothing written."""
        if not self._batch and not final:
            return
        self._seq += 1
        n = len(self._batch)
        self._digest = chain.link(self._digest, b"".join(self._batch) + _seal_data(
            self._seq, n, final))  # fmt: skip
        self._batch = []
        seal = {"seal": self._seq, "n": n, "digest": self._digest.hex(),
                "mac": chain.mac(self._key, self._digest)}  # fmt: skip
        if final:
            seal["final"] = True
        self._f.write(self._packer.pack(seal))
        self._f.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.seal(final=True)
        os.fsync(self._f.fileno())
        self._f.close()


def _open(path: str) -> tuple[BinaryIO, msgpack.Unpacker, dict]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise RecordingError(f"{path}: cannot open: {exc.strerror}") from None
    unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False, max_buffer_size=64 << 20)
    try:
        header = next(unpacker)
    except StopIteration:
        f.close()
        raise RecordingError(f"{path}: empty file, not a roguewatch recording") from None
    except Exception as exc:
        f.close()
        raise RecordingError(f"{path}: not a roguewatch recording ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        f.close()
        raise RecordingError(f"{path}: not a roguewatch recording (no {FORMAT} header)")
    if header.get("version") not in READS:
        f.close()
        raise RecordingError(
            f"{path}: recording format version {header.get('version')}, "
            f"this roguewatch reads versions {', '.join(map(str, READS))}"
        )
    return f, unpacker, header


def read(path: str) -> tuple[dict, Iterator[dict]]:
    """(header, events) of a recording (seals skipped: ``verify`` checks them);
    RecordingError names the problem."""
    r = Reader(path, check=False)
    return r.header, r.events()


@dataclass
class Integrity:
    status: str  # intact, truncated, altered, unchained, unverified (another key's)
    detail: str
    events: int = 0
    sealed: int = 0  # events covered by a good seal
    macs: bool | None = None  # the MACs were checked (None: no key to check them with)

    def as_dict(self) -> dict:
        return {"status": self.status, "detail": self.detail, "events": self.events,
                "sealed": self.sealed, "macs_checked": self.macs}  # fmt: skip


def verify(path: str, key: bytes | None = None) -> dict:
    """Whether the recording at ``path`` is intact, truncated or altered, and where (as a
    dict: status, detail, events, sealed, macs_checked). RecordingError for a file that is
    not a recording at all."""
    r = Reader(path, key=key)
    for _ in r.events():
        pass
    assert r.integrity is not None
    return r.integrity.as_dict()


class Reader:
    """One pass over a recording: its events (``events()``, seals skipped) and, with
    ``check``, its chain verified on the way (``integrity``, once the events are read: the
    first problem found, the events after it still given). A batch's bytes are read and
    hashed once per seal, not per event."""

    def __init__(self, path: str, key: bytes | None = None, check: bool = True) -> None:
        self.path = path
        self._f, self._unpacker, self.header = _open(path)
        self.check = check
        self.integrity: Integrity | None = None
        self._key = key

    def events(self) -> Iterator[dict]:
        path, unpacker, header = self.path, self._unpacker, self.header
        chained = self.check and header.get("version") != 1 and bool(header.get("chain"))
        key = stated = ""
        foreign = False
        macs: bool | None = None
        raw: BinaryIO | None = None
        if chained:
            key = self._key if self._key is not None else chain.load_key(create=False)
            stated = str((header.get("chain") or {}).get("key") or "")
            foreign = key is not None and chain.key_id(key) != stated
            if foreign:
                key = None  # chained with another host's (or an older) key: digests only
            macs = True if key and stated else None
            raw = open(path, "rb")  # noqa: SIM115 - closed below
        problem: Integrity | None = None
        events = sealed = seq = n = 0
        final = False
        pos = unpacker.tell()
        last = pos  # the end of the last seal (or of the header)
        digest = chain.link(chain.GENESIS, raw.read(pos)) if raw is not None else b""
        try:
            while True:
                try:
                    obj = next(unpacker)
                except StopIteration:
                    break
                except (msgpack.exceptions.ExtraData, ValueError, msgpack.UnpackException) as exc:
                    problem = problem or Integrity(
                        "altered", f"unreadable after event {events} (byte {pos}): {exc}",
                        events, sealed, macs)  # fmt: skip
                    if not self.check:
                        raise RecordingError(
                            f"{path}: corrupt after event {events}: {exc}"
                        ) from None
                    break
                end = unpacker.tell()
                if type(obj) is not dict:
                    raise RecordingError(
                        f"{path}: object {events + seq + 1} after the header is not an event"
                    )
                if "seal" in obj and "type" not in obj:
                    seq += 1
                    if raw is not None and problem is None:
                        problem = self._seal(obj, raw, pos - last, seq, n, events, sealed,
                                             macs, key, digest)  # fmt: skip
                        if problem is None:
                            digest = self._digest
                            sealed = events
                            if final:
                                problem = Integrity(
                                    "altered",
                                    f"a seal after the final one (byte {pos})",
                                    events,
                                    sealed,
                                    macs,
                                )
                            final = bool(obj.get("final"))
                        raw.seek(end)
                    last = end
                    n = 0
                else:
                    if final and problem is None:
                        problem = Integrity("altered", f"events after the final seal (byte "
                                            f"{pos})", events, sealed, macs)  # fmt: skip
                    events += 1
                    n += 1
                    yield obj
                pos = end
        finally:
            self._f.close()
            if raw is not None:
                raw.close()
        if not self.check:
            return
        if problem is not None:
            self.integrity = problem
        elif not chained:
            self.integrity = Integrity("unchained", "a version 1 recording: it has no hash "
                                       "chain", events)  # fmt: skip
        elif not final:
            self.integrity = Integrity(
                "truncated", f"ends after event {events} without its final seal: events "
                f"1-{sealed} are sealed, {events - sealed} after them are not (the writer "
                "stopped, or the end was cut off)", events, sealed, macs)  # fmt: skip
        elif foreign:
            self.integrity = Integrity(
                "unverified", f"{events} events in {seq} seals, chained with another key "
                f"({stated or 'none'}), not this monitor's: only the digests could be checked",
                events, sealed, None)  # fmt: skip
        else:
            how = "MACs checked" if macs else "digests checked (no key: MACs not)"
            self.integrity = Integrity("intact", f"{events} events in {seq} seals; {how}",
                                       events, sealed, macs)  # fmt: skip

    def _seal(self, obj: dict, raw: BinaryIO, size: int, seq: int, n: int, events: int,
              sealed: int, macs: bool | None, key: bytes | None,
              digest: bytes) -> Integrity | None:  # fmt: skip
        """The seal ``obj`` checked against the ``size`` bytes of its batch (read here);
        None when it holds (the new digest in ``_digest``)."""
        final = bool(obj.get("final"))
        new = chain.link(digest, raw.read(size) + _seal_data(seq, n, final))
        first = events - n + 1
        where = f"events {first}-{events}" if n else f"after event {events}"
        if obj.get("seal") != seq or obj.get("n") != n:
            return Integrity("altered", f"seal {obj.get('seal')} at {where} is out of order "
                             f"(expected seal {seq} of {n} events): events were removed, added "
                             "or moved", events, sealed, macs)  # fmt: skip
        if obj.get("digest") != new.hex():
            return Integrity(
                "altered",
                f"{where} (seal {seq}) do not match their seal: changed after they were written",
                events,
                sealed,
                macs,
            )
        if macs and not chain.mac_ok(key, new, str(obj.get("mac") or "")):
            return Integrity("altered", f"seal {seq} ({where}) does not carry the monitor's "
                             "MAC: the file was rewritten and resealed without the key",
                             events, sealed, macs)  # fmt: skip
        self._digest = new
        return None
