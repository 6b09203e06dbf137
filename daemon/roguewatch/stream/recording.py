"""Recordings: a session's events in a file, as `roguewatch record` writes them.

Format: a msgpack stream. The first object is a header map (``format``, ``version``, host,
kernel, roguewatch version, the command, the session); every following object is one event
map exactly as it was on the bus. Readers check the header and name what is wrong.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Iterator
from typing import BinaryIO

import msgpack

from roguewatch import __version__

FORMAT = "roguewatch-recording"
VERSION = 1


class RecordingError(Exception):
    pass


class Writer:
    def __init__(self, path: str, command: list[str], session: int = 0) -> None:
        self.path = path
        self._f: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._packer = msgpack.Packer(use_bin_type=True)
        self.count = 0
        self.header = {
            "format": FORMAT, "version": VERSION, "host": socket.gethostname(),
            "kernel": platform.release(), "roguewatch": __version__, "command": command,
            "session": session, "started": time.time_ns(),
        }  # fmt: skip
        self._f.write(self._packer.pack(self.header))

    def write(self, event: dict) -> None:
        self._f.write(self._packer.pack(event))
        self.count += 1

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def read(path: str) -> tuple[dict, Iterator[dict]]:
    """(header, events) of a recording; RecordingError names the problem."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - the iterator closes it
    except OSError as exc:
        raise RecordingError(f"{path}: cannot open: {exc.strerror}") from None
    unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False)
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
    if header.get("version") != VERSION:
        f.close()
        raise RecordingError(
            f"{path}: recording format version {header.get('version')}, "
            f"this roguewatch reads version {VERSION}"
        )

    def events() -> Iterator[dict]:
        n = 0
        try:
            for obj in unpacker:
                n += 1
                if not isinstance(obj, dict):
                    raise RecordingError(f"{path}: object {n} after the header is not an event")
                yield obj
        except msgpack.exceptions.ExtraData as exc:
            raise RecordingError(f"{path}: corrupt after event {n}: {exc}") from None
        except ValueError as exc:
            raise RecordingError(f"{path}: corrupt after event {n}: {exc}") from None
        finally:
            f.close()

    return header, events()
