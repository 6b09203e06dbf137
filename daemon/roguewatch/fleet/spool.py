"""The spool: an append-only queue on disk between the evaluator (its one writer) and the
forwarder (its one reader), so that no record is lost while the server is unreachable, the
forwarder restarts, or the host reboots.

Owns the on-disk format and its guarantees:

- Segment files ``<first seq, 20 digits>.seg`` in one root-only directory, each a run of
  frames ``[u32 length][u32 crc32][msgpack body]``; the body is ``[seq, subject, msg_id,
  severity, payload]``. Sequence numbers are consecutive across segments and restarts (the
  writer recovers the last one from the last segment, which is never deleted).
- The writer appends a batch of records with one ``write`` and one ``fsync``
  (:meth:`Writer.commit`). A crash mid-write leaves a torn frame at the very end; the next
  writer cuts it off.
- The reader keeps the last sequence the server acknowledged in ``acked`` (written to a temporary
  file, fsynced, renamed), reads on from there in order, and deletes segments that hold only
  acknowledged records (never the last one: the writer may still append to it).
- Bounded: the segments never exceed ``max_bytes``. A record that does not fit is dropped and
  counted (:attr:`Writer.dropped`); the owner raises the critical alert. The last
  ``RESERVE_BYTES`` are kept for records marked ``reserve`` (the monitor's own alerts about
  the loss), so the fleet learns of the loss once the spool drains.

Each side takes an exclusive ``flock`` of its own, so two writers (or two readers) never share
a spool. It must not know about NATS, alerts or the evaluator: records are opaque bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import msgpack

FRAME = struct.Struct("<II")  # length of the body, crc32 of the body
SEGMENT_BYTES = 4 * 1024 * 1024
RESERVE_BYTES = 64 * 1024
SUFFIX = ".seg"


class SpoolError(Exception):
    pass


@dataclass(frozen=True)
class Record:
    seq: int
    subject: str
    msg_id: str
    severity: str
    payload: bytes


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def segments(directory: str) -> list[tuple[int, str]]:
    """(first seq, path) of every segment, oldest first."""
    out = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        if name.endswith(SUFFIX) and name[: -len(SUFFIX)].isdigit():
            out.append((int(name[: -len(SUFFIX)]), os.path.join(directory, name)))
    return sorted(out)


def _prepare(directory: str) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)  # makedirs' mode is filtered by the umask


def _lock(directory: str, name: str) -> int:
    fd = os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        role = name.strip(".").split(".")[0]
        raise SpoolError(f"{directory}: another {role} holds the spool") from None
    return fd


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode(rec: Record) -> bytes:
    body = msgpack.packb(
        [rec.seq, rec.subject, rec.msg_id, rec.severity, rec.payload], use_bin_type=True
    )
    return FRAME.pack(len(body), zlib.crc32(body)) + body


def scan(data: bytes | memoryview, start: int = 0) -> Iterator[tuple[int, Record]]:
    """(offset after it, record) for each whole, intact frame from ``start``; stops at the
    first incomplete or damaged one (the caller tells a torn tail from a write in progress)."""
    view = memoryview(data)
    off = start
    while off + FRAME.size <= len(view):
        length, crc = FRAME.unpack_from(view, off)
        end = off + FRAME.size + length
        if end > len(view):
            return
        body = bytes(view[off + FRAME.size : end])
        if zlib.crc32(body) != crc:
            return
        try:
            seq, subject, msg_id, severity, payload = msgpack.unpackb(body, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            return
        yield end, Record(seq, subject, msg_id, severity, payload)
        off = end


class Writer:
    """The evaluator's end: :meth:`append` records, :meth:`commit` them (one fsync)."""

    def __init__(self, directory: str, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max(64 * 1024, max_bytes // 8))
        self.dropped = 0  # records the bound refused
        self.torn = 0  # bytes of a torn frame cut off at start (a crash mid-write)
        self.written = 0
        self.commits = 0
        _prepare(directory)
        self._lock = _lock(directory, ".writer.lock")
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._fd: int | None = None
        self._size = 0  # of the current segment
        self.next_seq = self._recover()
        self._total = self._disk_bytes()

    def _recover(self) -> int:
        segs = segments(self.directory)
        if not segs:  # the first segment exists from the start: it carries the sequence
            self._roll(1)
            return 1
        first, path = segs[-1]
        with open(path, "rb") as f:
            data = f.read()
        last, good = first - 1, 0
        for end, rec in scan(data):
            last, good = rec.seq, end
        if good < len(data):  # a torn frame at the end: the crash's, never acknowledged
            self.torn = len(data) - good
            with open(path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        self._open(path)
        return last + 1

    def _open(self, path: str) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _disk_bytes(self) -> int:
        total = 0
        for _, path in segments(self.directory):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(path).st_size
        return total

    @property
    def pending(self) -> int:
        return len(self._pending)

    def append(
        self, subject: str, msg_id_prefix: str, severity: str, payload: bytes,
        reserve: bool = False,
    ) -> int | None:  # fmt: skip
        """Queue one record for the next commit; its sequence number, or None if dropped.

        The message id is ``msg_id_prefix`` + the sequence number (unique per host and boot)."""
        seq = self.next_seq
        frame = encode(Record(seq, subject, f"{msg_id_prefix}{seq}", severity, payload))
        limit = self.max_bytes - (0 if reserve else RESERVE_BYTES)
        if self._total + self._pending_bytes + len(frame) > limit:
            self._total = self._disk_bytes()  # the reader may have deleted segments since
            if self._total + self._pending_bytes + len(frame) > limit:
                self.dropped += 1
                return None
        self.next_seq += 1
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        return seq

    def commit(self) -> int:
        """Write what was appended (one write per segment) and fsync; how many records."""
        if not self._pending:
            return 0
        n = len(self._pending)
        frames, self._pending, self._pending_bytes = self._pending, [], 0
        first_seq = self.next_seq - n
        batch: list[bytes] = []
        for i, frame in enumerate(frames):
            if self._size > 0 and self._size + sum(map(len, batch)) + len(frame) > (
                self.segment_bytes
            ):
                self._write(batch)
                batch = []
                self._roll(first_seq + i)
            batch.append(frame)
        self._write(batch)
        self.written += n
        self.commits += 1
        return n

    def _write(self, frames: list[bytes]) -> None:
        if not frames:
            return
        assert self._fd is not None
        data = memoryview(b"".join(frames))
        while data:
            n = os.write(self._fd, data)
            data = data[n:]
            self._size += n
            self._total += n
        os.fsync(self._fd)

    def _roll(self, first_seq: int) -> None:
        self._open(os.path.join(self.directory, _segment_name(first_seq)))
        _fsync_dir(self.directory)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.commit()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        os.close(self._lock)


class Reader:
    """The forwarder's end: records after the acknowledged one, in order; :meth:`ack`."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        _prepare(directory)
        self._lock = _lock(directory, ".reader.lock")
        self.acked = self._load_acked()
        self._path: str | None = None
        self._first = 0
        self._data = b""
        self._off = 0
        self._file_off = 0  # the file offset of _data[0]
        self.next_seq = self.acked + 1  # the next one to hand out
        self.deleted = 0
        self.skipped = 0  # bytes of damaged frames passed over

    def _acked_path(self) -> str:
        return os.path.join(self.directory, "acked")

    def _load_acked(self) -> int:
        try:
            with open(self._acked_path()) as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            raise SpoolError(f"{self._acked_path()}: not a sequence number") from None

    def ack(self, seq: int) -> None:
        """The server has everything up to ``seq``: remember it, drop segments behind it."""
        if seq <= self.acked:
            return
        self.acked = seq
        tmp = self._acked_path() + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(seq))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._acked_path())
        segs = segments(self.directory)
        for (_first, path), (nxt, _) in itertools.pairwise(segs):
            if nxt - 1 <= seq and path != self._path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    self.deleted += 1

    def rewind(self) -> None:
        """Hand out again everything after the acknowledged one (a publish failed)."""
        self.next_seq = self.acked + 1
        self._path = None

    def _seek(self, seq: int) -> bool:
        """Position on the segment holding ``seq``; False when there is none yet."""
        segs = segments(self.directory)
        found = [s for s in segs if s[0] <= seq]
        if not found:
            if not segs:
                return False
            found = segs[:1]  # deleted behind us (a lost `acked`): the oldest we have
        self._switch(*found[-1])
        return True

    def _switch(self, first: int, path: str) -> None:
        self._first, self._path = first, path
        self._data, self._off, self._file_off = b"", 0, 0

    def _refresh(self) -> None:
        assert self._path is not None
        try:
            with open(self._path, "rb") as f:
                f.seek(self._file_off + len(self._data))
                more = f.read()
        except FileNotFoundError:
            more = b""
        if more:
            self._data += more

    def _take(self, out: list[Record], limit: int) -> None:
        for end, rec in scan(self._data, self._off):
            self._off = end
            if rec.seq >= self.next_seq:
                out.append(rec)
                self.next_seq = rec.seq + 1
                if len(out) >= limit:
                    return

    def read(self, limit: int = 1024) -> list[Record]:
        """Up to ``limit`` records from ``next_seq`` on, in order (none: nothing new yet)."""
        out: list[Record] = []
        if self._path is None and not self._seek(self.next_seq):
            return out
        while len(out) < limit:
            self._refresh()
            self._take(out, limit)
            if len(out) >= limit:
                break
            later = [s for s in segments(self.directory) if s[0] > self._first]
            if not later:
                break
            # The writer has moved to the next segment, after writing this one to its end:
            # one more read gets the rest of it, then on to the next.
            self._refresh()
            self._take(out, limit)
            if len(out) >= limit:
                break
            self.skipped += len(self._data) - self._off  # a damaged frame: nothing to wait for
            self._switch(*later[0])
        if self._off > (1 << 20):  # what was handed out need not stay in memory
            self._file_off += self._off
            self._data, self._off = self._data[self._off :], 0
        return out

    def backlog(self) -> tuple[int, int]:
        """(segments, bytes) on disk: what waits for the server, roughly."""
        segs = segments(self.directory)
        size = 0
        for _, p in segs:
            with contextlib.suppress(FileNotFoundError):
                size += os.stat(p).st_size
        return len(segs), size

    def close(self) -> None:
        os.close(self._lock)
