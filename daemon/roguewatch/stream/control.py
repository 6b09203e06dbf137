"""The client side of the collector's control socket (root-only IPC, msgpack requests).

Owns finding a running collector and asking it things: put a process in a session, guard a
pid, read its counters. The server side is ``Collector.serve_control``.
"""

from __future__ import annotations

import os

import msgpack
import zmq

from roguewatch.stream import bus


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

    def request(self, op: str, **kw: object) -> dict:
        try:
            self._sock.send(msgpack.packb({"op": op, **kw}, use_bin_type=True))
            reply = msgpack.unpackb(self._sock.recv(), raw=False)
        except zmq.Again:
            raise ControlError(f"{self.endpoint}: no answer within {self.timeout_ms} ms") from None
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
    client.timeout_ms = 30000  # a register waits for the start-up baseline snapshot
    client._sock.setsockopt(zmq.RCVTIMEO, client.timeout_ms)
    return client
