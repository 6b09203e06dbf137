"""``roguewatch tail``: alert history from the JSON-lines file, then the live alert stream.

Owns how a person reads alerts after the fact and as they happen: the filters (category,
severity and above, session, since), reading the file and its rotated predecessors, and joining
history to the live stream without a gap or a duplicate. The join works because the alert
socket is subscribed to *before* the file is read (the publisher's welcome says when the
subscription is live): every alert is then either already in the file, or queued on our
subscription, or both, and the ids of what history printed weed out the "both".

Without a live socket (no roguewatchd, or ``roguewatch run --alerts FILE``) it follows the file
itself, the way ``tail -F`` does: polling, across rotation (a new inode) and truncation.

It must not decide what is an alert nor how one looks: that is ``roguewatch.outputs.alerts``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

import zmq

from roguewatch.core import timefmt
from roguewatch.outputs import alerts
from roguewatch.stream import bus

POLL_S = 0.2
WELCOME_TIMEOUT_MS = 2000


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tail", help="show alerts: history from the file, then live")
    add_options(p)
    p.set_defaults(fn=main)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``roguewatch tail``."""
    parser.add_argument("--json", action="store_true", help="full alerts as JSON lines")
    parser.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new alerts until ^C"
    )
    parser.add_argument(
        "--category",
        metavar="C",
        help="only this category (egress, persistence, shutdown_evasion, oversight_tampering, "
        "monitor)",
    )
    parser.add_argument(
        "--severity",
        metavar="S",
        choices=alerts.SEVERITIES,
        help="only this severity and above (" + ", ".join(alerts.SEVERITIES) + ")",
    )
    parser.add_argument("--session", metavar="ID", help="only this session (hex id)")
    parser.add_argument(
        "--since",
        metavar="T",
        help="only alerts from T on: an RFC 3339 time or a duration back (10m, 2h, 1d); "
        "reaches into rotated files",
    )
    parser.add_argument("--file", default=alerts.ALERTS_FILE, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", default=alerts.ALERTS_ENDPOINT, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="roguewatch tail", description="Show alerts.")
    add_options(ap)
    return ap


def _session_key(value: object) -> object:
    """Session ids compare as numbers: ``0x1A2b``, ``1a2b`` and ``00001a2b`` are one session."""
    text = str(value).strip().lower().removeprefix("0x")
    try:
        return int(text, 16)
    except ValueError:
        return text


@dataclass
class Filter:
    category: str | None = None
    min_rank: int | None = None
    session: object = None  # a _session_key
    since_ns: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Filter:
        """Raises ValueError (with a message for the user) for a --since it cannot read."""
        since = getattr(args, "since", None)
        severity = getattr(args, "severity", None)
        session = getattr(args, "session", None)
        return cls(
            category=getattr(args, "category", None),
            min_rank=alerts.severity_rank(severity) if severity else None,
            session=_session_key(session) if session else None,
            since_ns=timefmt.parse_since(since) if since else None,
        )

    def matches(self, alert: dict) -> bool:
        if self.category is not None and alert.get("category") != self.category:
            return False
        if (
            self.min_rank is not None
            and alerts.severity_rank(str(alert.get("severity"))) < self.min_rank
        ):
            return False
        if self.session is not None:
            if alert.get("session") in (None, ""):
                return False
            if _session_key(alert["session"]) != self.session:
                return False
        if self.since_ns is not None:
            try:
                if timefmt.parse_rfc3339(str(alert.get("ts"))) < self.since_ns:
                    return False
            except ValueError:
                return False
        return True


def history_files(path: str, since_ns: int | None) -> list[str]:
    """The files that may hold alerts from ``since_ns`` on, oldest first.

    Without a start time, only the current file. With one, the rotated predecessors
    (``path.N`` ... ``path.1``) whose last write (mtime) is not older than it, then the file.
    """
    files: list[str] = []
    if since_ns is not None:
        n = 1
        while os.path.exists(f"{path}.{n}"):
            n += 1
        for k in range(n - 1, 0, -1):
            rotated = f"{path}.{k}"
            try:
                if os.stat(rotated).st_mtime_ns >= since_ns:
                    files.append(rotated)
            except FileNotFoundError:
                continue  # rotated away while we looked
    files.append(path)
    return files


@dataclass
class Tail:
    """One run of ``roguewatch tail``; ``run()`` returns the exit status."""

    file: str = alerts.ALERTS_FILE
    endpoint: str = alerts.ALERTS_ENDPOINT
    filter: Filter = field(default_factory=Filter)
    as_json: bool = False
    follow: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    color: bool | None = None  # None: when ``out`` is a terminal
    printed: int = 0
    malformed_lines: int = 0
    malformed_messages: int = 0
    _seen: set[str] = field(default_factory=set, repr=False)
    _partial: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.color is None:
            try:
                self.color = self.out.isatty()
            except (AttributeError, ValueError):
                self.color = False

    # -- output --------------------------------------------------------------------------

    def _note(self, text: str) -> None:
        print(f"roguewatch tail: {text}", file=self.err, flush=True)

    def _emit(self, alert: dict) -> None:
        if not self.filter.matches(alert):
            return
        line = alerts.to_json(alert) if self.as_json else alerts.human(alert, bool(self.color))
        self.out.write(line + "\n")
        self.out.flush()
        self.printed += 1

    def _line(self, raw: bytes, remember: bool) -> None:
        raw = raw.strip()
        if not raw:
            return
        try:
            alert = json.loads(raw)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
            self.malformed_lines += 1
            return
        if not isinstance(alert, dict):
            self.malformed_lines += 1
            return
        alert.pop("chain", None)  # the log's hash chain (outputs/alertchain.py), not the alert's
        if remember and isinstance(alert.get("id"), str):
            self._seen.add(alert["id"])
        self._emit(alert)

    def _lines(self, data: bytes, remember: bool = False) -> None:
        """Complete lines out of ``data``; an unterminated tail waits for the next read."""
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        for raw in complete:
            self._line(raw, remember)

    def _end_of_file(self, remember: bool = False) -> None:
        """The file is done: an unterminated last line counts if it is a whole alert."""
        rest, self._partial = self._partial, b""
        self._line(rest, remember)

    def _report(self) -> None:
        if self.malformed_lines:
            self._note(f"{self.malformed_lines} malformed lines skipped in {self.file}")
        if self.malformed_messages:
            self._note(f"{self.malformed_messages} malformed messages dropped from {self.endpoint}")

    # -- history -------------------------------------------------------------------------

    def _read_whole(self, path: str, remember: bool) -> bool:
        """Print every alert of one file; False when it does not exist."""
        try:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 16), b""):
                    self._lines(chunk, remember)
        except FileNotFoundError:
            return False
        self._end_of_file(remember)
        return True

    def _history(self, remember: bool) -> bool:
        """Print the history; False when there is no file at all."""
        found = False
        for path in history_files(self.file, self.filter.since_ns):
            found |= self._read_whole(path, remember)
        return found

    # -- the live stream -----------------------------------------------------------------

    def _subscribe(self) -> zmq.Socket | None:
        """A subscription that is live (welcomed), or None when there is no working socket."""
        path = bus.ipc_path(self.endpoint)
        if path is not None and not os.path.exists(path):
            return None
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 0)  # queue everything while we read the history
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            sock.connect(self.endpoint)
            # The welcome (an empty map) is the first message of a live subscription.
            if sock.poll(WELCOME_TIMEOUT_MS):
                frame = sock.recv()
                with contextlib.suppress(ValueError):
                    if alerts.unpack(frame) is None:
                        return sock
        except zmq.ZMQError:
            pass
        sock.close(0)
        self._note(f"no answer from {self.endpoint}; following {self.file} instead")
        return None

    def _follow_socket(self, sock: zmq.Socket, stop: threading.Event) -> None:
        while not stop.is_set():
            if not sock.poll(int(POLL_S * 1000)):
                continue
            try:
                alert = alerts.unpack(sock.recv())
            except ValueError:
                self.malformed_messages += 1
                continue
            if alert is None:
                continue  # another welcome (the publisher restarted)
            alert_id = alert.get("id")
            if isinstance(alert_id, str) and alert_id in self._seen:
                # Printed from the file already; each id comes live at most once.
                self._seen.discard(alert_id)
                continue
            self._emit(alert)

    # -- following the file --------------------------------------------------------------

    def _open(self) -> BinaryIO | None:
        try:
            # Held open across polls: after a rotation it still reads the renamed file.
            return open(self.file, "rb", buffering=0)
        except FileNotFoundError:
            return None

    def _drain(self, fh: BinaryIO) -> None:
        while chunk := fh.read(1 << 16):
            self._lines(chunk)

    def _follow_file(self, stop: threading.Event) -> None:
        for path in history_files(self.file, self.filter.since_ns)[:-1]:
            self._read_whole(path, remember=False)
        fh = self._open()
        if fh is None:
            self._note(f"no alerts yet ({self.file} does not exist); waiting for it")
        try:
            while True:
                if fh is None:
                    fh = self._open()
                if fh is not None:
                    self._drain(fh)
                    fh = self._check_rotation(fh)
                if stop.wait(POLL_S):
                    return
        finally:
            if fh is not None:
                fh.close()

    def _check_rotation(self, fh: BinaryIO) -> BinaryIO:
        """The handle to read next: a new file after rotation, rewound after truncation."""
        mine = os.fstat(fh.fileno())
        try:
            now = os.stat(self.file)
        except FileNotFoundError:
            return fh  # rotated, the new file not yet created: keep the old one for now
        if now.st_ino != mine.st_ino or now.st_dev != mine.st_dev:
            self._drain(fh)  # what was written just before the rename
            self._end_of_file()
            fh.close()
            # Rotated twice between two polls: the middle file is now path.1, read it whole.
            with contextlib.suppress(FileNotFoundError):
                mid = os.stat(f"{self.file}.1")
                if mid.st_ino not in (mine.st_ino, now.st_ino):
                    self._read_whole(f"{self.file}.1", remember=False)
            return self._open() or fh
        if now.st_size < fh.tell():
            fh.seek(0)  # truncated in place (copytruncate): start over
            self._partial = b""
        return fh

    # -- the run -------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> int:
        stop = stop or threading.Event()
        try:
            if not self.follow:
                if not self._history(remember=False):
                    self._note(f"no alerts yet ({self.file} does not exist)")
                return 0
            sock = self._subscribe()
            if sock is None:
                self._follow_file(stop)
                return 0
            try:
                self._history(remember=True)
                self._follow_socket(sock, stop)
            finally:
                sock.close(0)
            return 0
        except PermissionError as exc:
            self._note(f"cannot read {exc.filename or self.file}: permission denied (try sudo)")
            return 1
        finally:
            self._report()


def main(
    args: argparse.Namespace | None = None,
    *,
    stop: threading.Event | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``roguewatch tail``; ``args`` as parsed by a parser given :func:`add_arguments`."""
    if args is None:
        args = build_parser().parse_args()
    err = err or sys.stderr
    try:
        flt = Filter.from_args(args)
    except ValueError as exc:
        print(f"roguewatch tail: --since: {exc}", file=err)
        return 2
    tail = Tail(
        file=args.file,
        endpoint=args.endpoint,
        filter=flt,
        as_json=args.json,
        follow=args.follow,
        out=out or sys.stdout,
        err=err,
    )
    try:
        return tail.run(stop)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit flush quiet too.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
