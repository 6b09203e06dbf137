"""The collector's control socket: the client that asks, and the server that answers.

Owns the wire (one msgpack map per ZeroMQ REQ/REP message, ``{"op": NAME, ...}`` in and
``{"ok": bool, ...}`` out), finding a running collector, and the server's table of
operations: each operation is a handler, the lowest standing of the peer that may ask for it
(``Standing``: the peer's pid, uid and gid come from the kernel through ZeroMQ's
``Peer-Address``; the owner judges them), and whether it runs in a worker thread (a restore
copies and fsyncs files: the collector's loop must keep draining the ring meanwhile). The
socket is root-only (0600 in a 0700 directory), but a root agent can connect anyway: the
standing is what keeps a session from speaking for the monitor.

It must not know what the operations do: the collector registers them.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import msgpack
import zmq

from roguewatch.stream import bus
from roguewatch.stream.bus import Peer


class ControlError(Exception):
    pass


class ControlClient:
    def __init__(self, endpoint: str = bus.CONTROL_ENDPOINT, timeout_ms: int = 30000) -> None:
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        path = bus.ipc_path(endpoint)
        if path is not None and not os.path.exists(path):
            raise ControlError(f"no collector listening at {endpoint}")
        self._sock = zmq.Context.instance().socket(zmq.REQ)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        self._sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
        self._sock.connect(endpoint)

    def set_timeout(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self._sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        self._sock.setsockopt(zmq.SNDTIMEO, timeout_ms)

    def request(self, op: str, **kw: object) -> dict:
        try:
            self._sock.send(msgpack.packb({"op": op, **kw}, use_bin_type=True))
            reply = msgpack.unpackb(self._sock.recv(), raw=False)
        except zmq.Again:
            raise ControlError(f"{self.endpoint}: no answer within {self.timeout_ms} ms") from None
        except zmq.ZMQError as exc:  # a socket left in a bad state by an earlier timeout
            raise ControlError(f"{self.endpoint}: {exc}") from None
        if not isinstance(reply, dict):
            raise ControlError(f"{op}: a malformed answer")
        if not reply.get("ok"):
            raise ControlError(f"{op}: {reply.get('error', 'refused')}")
        return reply

    def close(self) -> None:
        self._sock.close(0)


def running(endpoint: str = bus.CONTROL_ENDPOINT) -> ControlClient | None:
    """A client for a collector that answers at ``endpoint``, or None."""
    try:
        client = ControlClient(endpoint, timeout_ms=1000)
        client.request("ping")
    except ControlError:
        return None
    client.set_timeout(30000)  # a register waits for the start-up baseline snapshot
    return client


# ---------------------------------------------------------------------------------------------
# The server


Handler = Callable[[dict, "Peer | None"], dict]


class Standing(enum.IntEnum):
    """Who a peer is to the monitor, lowest trust first. An operation names the lowest
    standing it accepts."""

    SESSION = 0  # in a watched session, or descended from one: never speaks for the monitor
    STRANGER = 1  # not root, or not known (no peer credentials)
    OPERATOR = 2  # root, outside every session: an administrator, `roguewatch run`
    MONITOR = 3  # one of roguewatch's own processes (guarded)


@dataclass(frozen=True)
class Operation:
    handler: Handler
    needs: Standing = Standing.OPERATOR
    threaded: bool = False  # runs in the worker thread (slow: file copies, fsyncs)


class ControlServer:
    """A REP socket and its operations, served from its owner's loop without blocking it.

    ``serve()`` answers what is queued; a threaded operation is handed to the worker and its
    answer sent by ``finish()`` once done (the REP socket takes no other request meanwhile).
    ``wake`` is called when a threaded operation finishes, so the owner's loop comes round.
    """

    def __init__(
        self,
        endpoint: str,
        wake: Callable[[], None] = lambda: None,
        judge: Callable[[Peer | None], Standing] = lambda _p: Standing.MONITOR,
        on_refused: Callable[[str, Peer | None, Standing], None] | None = None,
    ) -> None:
        """``judge(peer)`` says who a peer is; a request from a peer below its operation's
        standing is refused, counted (``refused``) and told to ``on_refused(op, peer, who)``."""
        bus.prepare_endpoint(endpoint)
        self.endpoint = endpoint
        self.socket = zmq.Context.instance().socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        path = bus.ipc_path(endpoint)
        if path:
            os.chmod(path, 0o600)
        self.bound = bus.BoundPath(self.socket, endpoint)
        self.ops: dict[str, Operation] = {}
        self._wake = wake
        self.judge = judge
        self.on_refused = on_refused
        self.refused = 0
        self._pending: Future | None = None
        self._worker: ThreadPoolExecutor | None = None

    def register(
        self, op: str, handler: Handler, *, needs: Standing = Standing.OPERATOR,
        threaded: bool = False,
    ) -> None:  # fmt: skip
        self.ops[op] = Operation(handler, needs, threaded)

    def _answer(self, req: object, peer: Peer | None) -> dict | Future:
        if not isinstance(req, dict):
            return {"ok": False, "error": "a request is a map with an 'op'"}
        name = str(req.get("op"))
        who = self.judge(peer)
        op = self.ops.get(name)
        if who <= Standing.SESSION or (op is not None and who < op.needs):
            # Refused, in as few words whatever the operation: a session learns nothing of
            # the table by trying.
            self.refused += 1
            if self.on_refused is not None:
                self.on_refused(name, peer, who)
            return {"ok": False, "error": "refused"}
        if op is None:
            return {"ok": False, "error": f"unknown op {req.get('op')!r}"}
        if op.threaded:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="control")
            fut = self._worker.submit(op.handler, req, peer)
            fut.add_done_callback(lambda _f: self._wake())
            return fut
        return op.handler(req, peer)

    def serve(self) -> None:
        while self._pending is None:
            try:
                frame = self.socket.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                reply = self._answer(msgpack.unpackb(frame.bytes, raw=False), Peer.of(frame))
            except Exception as exc:  # a bad request must never stop the owner
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            if isinstance(reply, Future):
                self._pending = reply
                return
            self._send(reply)

    def finish(self) -> None:
        """Send the answer of a threaded operation that has finished, then serve the rest."""
        f = self._pending
        if f is None or not f.done():
            return
        self._pending = None
        try:
            reply = f.result()
        except Exception as exc:  # as in serve: an answer, never a crash
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self._send(reply)
        self.serve()

    def _send(self, reply: dict) -> None:
        self.socket.send(msgpack.packb(reply, use_bin_type=True))

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)  # an operation under way finishes
        self.socket.close(0)
        path = bus.ipc_path(self.endpoint)
        if path and os.path.exists(path):
            os.unlink(path)
