"""The ZeroMQ event bus: endpoints, the batch wire format, publisher and subscriber.

Owns how events cross process boundaries. A message is one ZeroMQ frame holding a msgpack
array of event maps (a *batch*): batching amortises the per-message cost of ZeroMQ and msgpack
over many events. Batches are encoded and decoded with ormsgpack (the same msgpack format,
several times faster than the msgpack package on this hot path: bench/README.md). The
publisher never blocks: it is an XPUB socket with
``XPUB_NODROP`` so a full subscriber queue surfaces as ``EAGAIN`` and every event that could
not be sent is counted (a plain PUB socket would drop silently). The subscriber counts and
drops malformed messages.

Endpoints are local IPC sockets in a root-only directory unless configured otherwise.
It must not know what events mean: that is ``roguewatch.stream.events``.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ormsgpack
import zmq

from roguewatch.core.paths import CONTROL_ENDPOINT, EVENTS_ENDPOINT, RUN_DIR  # noqa: F401

# Per subscriber, in messages (batches): enough for a few seconds of a burst.
SEND_HWM = 4096


@dataclass(frozen=True)
class Peer:
    """Who sent a request, as the kernel saw it when they connected (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def of(cls, frame: zmq.Frame) -> Peer | None:
        """From ZeroMQ's ``Peer-Address`` of an ipc message (``host:uid:gid:pid``)."""
        try:
            _, uid, gid, pid = str(frame.get("Peer-Address")).rsplit(":", 3)
            return cls(int(pid), int(uid), int(gid))
        except (ValueError, zmq.ZMQError):
            return None


class BusError(Exception):
    """An endpoint that cannot be used, with what to do about it."""


def ipc_path(endpoint: str) -> str | None:
    return endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else None


def prepare_endpoint(endpoint: str) -> None:
    """Make the directory of an ipc:// endpoint root-only (0700) before binding in it.

    A socket file inherits nothing from us but its directory's permissions decide who may
    connect: an agent that could connect to the control socket could reconfigure the monitor.
    """
    path = ipc_path(endpoint)
    if path is None:
        return
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.stat(directory)
    if os.geteuid() == 0 and st.st_uid != 0:
        raise BusError(f"{directory} is owned by uid {st.st_uid}, not root: refusing to bind there")
    if st.st_mode & stat.S_ISVTX:  # /tmp, /dev/shm: never ours to close to others
        raise BusError(
            f"{directory} is a shared directory: give the socket a directory of its own "
            f"(e.g. ipc://{directory.rstrip('/')}/roguewatch/NAME.sock)"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(directory, 0o700)
    if os.path.exists(path):
        os.unlink(path)  # a stale socket from a previous run


class BoundPath:
    """The socket file of a bound ipc:// endpoint, as it was when bound: ``check`` says
    when it was since removed or replaced (whoever connects then reaches nothing, or the
    replacer) and binds the socket again, so the monitor is never left unreachable."""

    def __init__(self, sock: zmq.Socket, endpoint: str) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.path = ipc_path(endpoint)
        self.id = self._id()

    def _id(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.lstat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISSOCK(st.st_mode) else None

    def check(self) -> str | None:
        """None while the file is ours; else what happened to it ("removed", "replaced"),
        after binding again (BusError when that fails: the path is held by something that
        is not a socket file)."""
        if self.path is None or self.id is None:
            return None
        now = self._id()
        if now == self.id:
            return None
        what = "removed" if not os.path.lexists(self.path) else "replaced"
        # Bound again beside the old binding, never unbound first: an unbind would drop the
        # peers connected through it (the evaluator), and what is said next would be lost.
        try:
            if os.path.lexists(self.path) and not os.path.isdir(self.path):
                os.unlink(self.path)
            self.sock.bind(self.endpoint)
            os.chmod(self.path, 0o600)
        except (OSError, zmq.ZMQError) as exc:
            raise BusError(f"{self.path} was {what} and cannot be bound again: {exc}") from None
        self.id = self._id()
        return what


_OPTS = ormsgpack.OPT_NON_STR_KEYS


def _encodable(o: object) -> object:
    """The same value with every string made valid UTF-8.

    Paths and names come from the kernel as bytes and are decoded with ``surrogateescape``
    so no byte is lost; msgpack strings must be UTF-8, so the bytes that are not become
    ``\\xNN`` escapes here (an agent's file named with invalid UTF-8 must not stop the
    stream)."""
    if isinstance(o, str):
        try:
            o.encode()
            return o
        except UnicodeEncodeError:
            return o.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(o, dict):
        return {_encodable(k): _encodable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_encodable(v) for v in o]
    return o


def pack_batch(events: list[dict]) -> bytes:
    try:
        return ormsgpack.packb(events, option=_OPTS)
    except TypeError:  # a string that is not valid UTF-8 (the rare case): escape it
        return ormsgpack.packb(_encodable(events), option=_OPTS)


def unpack_batch(frame: bytes) -> list[dict]:
    """Decode one message; raises ValueError for anything that is not a list of maps."""
    try:
        batch = ormsgpack.unpackb(frame, option=_OPTS)
    except Exception as exc:  # a malformed message, whatever the decoder calls it
        raise ValueError(f"not msgpack: {exc}") from None
    if not isinstance(batch, list) or not all(isinstance(e, dict) for e in batch):
        raise ValueError("not a list of event maps")
    return batch


class Broadcast:
    """A bound XPUB socket that never blocks its owner, and the peers it serves.

    ``XPUB_NODROP``: a full subscriber queue surfaces as ``EAGAIN`` (counted by the caller)
    instead of a silent drop. ``welcome`` greets each new subscriber so it can tell when its
    subscription is live (ZeroMQ's slow-joiner problem) instead of sleeping and hoping.
    ``XPUB_MANUAL``: a subscription takes effect only once ``admit(peer)`` said yes, where the
    peer is the subscribing process as the kernel saw it (``Peer``); a refused peer gets the
    welcome and nothing else, and ``on_refused(peer)`` is told.

    ZeroMQ attaches a new subscriber only when the socket is touched: the owner polls
    ``socket`` for POLLIN and calls ``drain_subscriptions`` when it is readable."""

    def __init__(
        self,
        endpoint: str,
        welcome: bytes,
        send_hwm: int = SEND_HWM,
        context: zmq.Context | None = None,
        admit: Callable[[Peer | None], bool] | None = None,
        on_refused: Callable[[Peer | None], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.admit = admit
        self.on_refused = on_refused
        self.subscriptions = 0
        self.refused = 0
        prepare_endpoint(endpoint)
        sock = (context or zmq.Context.instance()).socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.setsockopt(zmq.XPUB_MANUAL, 1)
        sock.setsockopt(zmq.SNDHWM, send_hwm)
        sock.setsockopt(zmq.RCVHWM, 64)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.XPUB_WELCOME_MSG, welcome)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise BusError(f"cannot bind {endpoint}: {exc}") from None
        path = ipc_path(endpoint)
        if path:
            os.chmod(path, 0o600)
        self.socket = sock
        self.bound = BoundPath(sock, endpoint)

    def send(self, frame: bytes) -> bool:
        """False when a subscriber's queue is full (the caller counts the loss)."""
        try:
            self.socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def drain_subscriptions(self, timeout_ms: int = 0) -> int:
        """Take the subscription frames waiting (each admitted or refused); how many new
        subscriptions were admitted. With ``timeout_ms``, waits that long for the first."""
        if timeout_ms and not self.socket.poll(timeout_ms):
            return 0
        new = 0
        while True:
            try:
                frame = self.socket.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return new
            data = frame.bytes
            if data[:1] != b"\x01":  # an unsubscription: applied for the peer that sent it
                self.socket.setsockopt(zmq.UNSUBSCRIBE, data[1:])
                continue
            peer = Peer.of(frame)
            if self.admit is not None and not self.admit(peer):
                self.refused += 1
                if self.on_refused is not None:
                    self.on_refused(peer)
                continue
            self.socket.setsockopt(zmq.SUBSCRIBE, data[1:])
            self.subscriptions += 1
            new += 1

    def close(self) -> None:
        self.socket.close(0)
        path = ipc_path(self.endpoint)
        if path and os.path.exists(path):
            os.unlink(path)


class Publisher:
    """Publishes event batches without ever blocking; counts what it could not send."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None, **peers: Any) -> None:
        self.endpoint = endpoint
        self.sent_events = 0
        self.lost_events = 0
        self.sent_batches = 0
        self._out = Broadcast(endpoint, pack_batch([]), SEND_HWM, context, **peers)

    @property
    def socket(self) -> zmq.Socket:
        return self._out.socket

    @property
    def broadcast(self) -> Broadcast:
        return self._out

    def publish(self, events: list[dict]) -> bool:
        if not events:
            return True
        n = len(events)
        if not self._out.send(pack_batch(events)):
            self.lost_events += n
            return False
        self.sent_events += n
        self.sent_batches += 1
        return True

    def drain_subscriptions(self) -> int:
        return self._out.drain_subscriptions()

    def close(self) -> None:
        self._out.close()


@dataclass
class Subscriber:
    """Receives event batches; malformed messages are counted in ``malformed`` and dropped."""

    endpoint: str
    context: zmq.Context | None = None
    malformed: int = 0
    wait_s: float = 0.0
    _sock: zmq.Socket = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ctx = self.context or zmq.Context.instance()
        self._sock = ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 0)  # the subscriber itself never drops
        self._sock.setsockopt(zmq.LINGER, 0)
        # A restarted collector is heard again within tens of milliseconds (not ZeroMQ's
        # default 100 ms, doubling): the sessions stay frozen until it is.
        self._sock.setsockopt(zmq.RECONNECT_IVL, 20)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 100)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        path = ipc_path(self.endpoint)
        deadline = time.monotonic() + self.wait_s
        while path is not None and not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)  # a publisher that is still starting (run starts both at once)
        if path is not None and not os.path.exists(path):
            raise BusError(
                f"no event stream at {self.endpoint}: is roguewatchd running? "
                "(start it with `sudo roguewatchd`, or use `roguewatch record`)"
            )
        self._sock.connect(self.endpoint)

    @property
    def socket(self) -> zmq.Socket:
        return self._sock

    def wait_ready(self, timeout_ms: int = 5000) -> bool:
        """Wait for the publisher's welcome: from then on no event is missed."""
        return self.recv_batch(timeout_ms) is not None

    def recv_batch(self, timeout_ms: int | None = None) -> list[dict] | None:
        """One batch, or None when nothing arrived within the timeout."""
        if timeout_ms is not None and not self._sock.poll(timeout_ms):
            return None
        frame = self._sock.recv()
        try:
            return unpack_batch(frame)
        except ValueError:
            self.malformed += 1
            return []

    def events(self, timeout_ms: int | None = None) -> Iterator[dict]:
        """Events one by one until a timeout passes with nothing received."""
        while True:
            batch = self.recv_batch(timeout_ms)
            if batch is None:
                return
            yield from batch

    def close(self) -> None:
        self._sock.close(0)
