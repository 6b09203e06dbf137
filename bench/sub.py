"""The benchmark's event-stream subscriber: a process of its own, as a real consumer would be.

Usage: sub.py ENDPOINT. Connects a ZeroMQ SUB socket to the collector's event stream, waits for
the publisher's welcome (an empty batch), prints ``ready``, then decodes every batch (msgpack,
as the evaluator would) and counts calls by (session, type): an event the kernel folded
(``repeats``) for the calls it stands for; the events themselves are counted apart. It also
keeps, per session, the CLOCK_MONOTONIC time of the first and last event received and the
latency of each batch's oldest event (receive wall time minus the event's wall-clock ``ts``),
and every ``monitor`` event.

Commands on stdin, one per line, each answered with one JSON line on stdout:
  get SESSION   calls by type (counts), events by type (events), first/last receive
                times, latencies (ms) for that session
  monitors      the monitor events received so far (and forgets them)
  totals        events, batches, malformed messages so far
  quit
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter, defaultdict

import msgpack
import zmq


def main() -> int:
    endpoint = sys.argv[1]
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)  # the subscriber never drops: losses are the publisher's
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    if not sock.poll(10_000):
        print(json.dumps({"error": f"no welcome from {endpoint} in 10 s"}), flush=True)
        return 1
    sock.recv()  # the welcome: from here on nothing is missed
    print("ready", flush=True)

    counts: dict[int, Counter] = defaultdict(Counter)  # calls
    evcounts: dict[int, Counter] = defaultdict(Counter)  # events
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    lat: dict[int, list[float]] = defaultdict(list)
    monitors: list[dict] = []
    totals = {"events": 0, "batches": 0, "malformed": 0}
    unpackb = msgpack.unpackb
    stdin = sys.stdin.fileno()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(stdin, zmq.POLLIN)
    pending = b""
    while True:
        ready = dict(poller.poll())
        if sock in ready:
            # Everything queued now, before looking at stdin again.
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.monotonic()
                try:
                    batch = unpackb(frame, raw=False, strict_map_key=False)
                except Exception:
                    totals["malformed"] += 1
                    continue
                if not isinstance(batch, list):
                    totals["malformed"] += 1
                    continue
                if not batch:
                    continue
                totals["batches"] += 1
                totals["events"] += len(batch)
                wall = time.time_ns()
                seen = set()
                for ev in batch:
                    s = ev.get("session", 0)
                    t = ev.get("type")
                    counts[s][t] += ev.get("repeats", 1)
                    evcounts[s][t] += 1
                    if t == "monitor":
                        monitors.append(ev)
                    if s not in seen:
                        seen.add(s)
                        ts = ev.get("ts")
                        if isinstance(ts, int):
                            lat[s].append((wall - ts) / 1e6)
                        first.setdefault(s, now)
                for s in seen:
                    last[s] = now
        if stdin in ready:
            chunk = os.read(stdin, 4096)
            if not chunk:
                return 0
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                cmd = line.decode().split()
                if not cmd:
                    continue
                if cmd[0] == "quit":
                    return 0
                if cmd[0] == "get":
                    s = int(cmd[1])
                    ls = sorted(lat.get(s, []))
                    out = {
                        "counts": dict(counts.get(s, {})),
                        "events": dict(evcounts.get(s, {})),
                        "first": first.get(s),
                        "last": last.get(s),
                        "batches": len(ls),
                        "lat_p50_ms": ls[len(ls) // 2] if ls else None,
                        "lat_p99_ms": ls[int(len(ls) * 0.99)] if ls else None,
                        "lat_max_ms": ls[-1] if ls else None,
                    }
                elif cmd[0] == "monitors":
                    out, monitors = {"monitors": monitors}, []
                elif cmd[0] == "totals":
                    out = dict(totals)
                else:
                    out = {"error": f"unknown command {cmd[0]!r}"}
                sys.stdout.write(json.dumps(out, default=repr) + "\n")
                sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
