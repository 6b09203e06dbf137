"""Timestamps along the kill path, for `enforcement_bench.py --trace` (bench only).

Put on PYTHONPATH with RW_TRACE=DIR, every Python process of a `roguewatch run` session (the
launcher, its collector and evaluator; the agents run `python3 -S`, without site) appends
one line per bench cron event to DIR/<pid>.txt:

    pub  EVENT_TS  T  BATCH_LEN   the collector published the batch holding it
    recv EVENT_TS  T  BATCH_LEN   the evaluator received that batch
    act  EVENT_TS  T0 T1          the enforcer's act() for it (kill, then the restore)
    kill PID       T0 T1          the SIGKILL syscall(s)

EVENT_TS is the event's own time (the kernel's, in wall-clock ns), which ties the lines of
one trial together; T are time.time_ns() readings. Nothing is patched without RW_TRACE.
"""

import os

if os.environ.get("RW_TRACE"):
    import time

    _PREFIX = "/etc/cron.d/roguewatch-bench-kill-"
    _files: dict = {}

    def _out(*rec) -> None:
        f = _files.get(os.getpid())
        if f is None:
            f = _files[os.getpid()] = open(  # noqa: SIM115
                os.path.join(os.environ["RW_TRACE"], f"{os.getpid()}.txt"), "a", buffering=1
            )
        f.write(" ".join(map(str, rec)) + "\n")

    _BPREFIX = _PREFIX.encode()

    def _hits(events) -> list:
        out = []
        for e in events:
            if isinstance(e, bytes):  # an event the collector encoded itself (msgpack map)
                if _BPREFIX not in e:
                    continue
                import msgpack

                e = msgpack.unpackb(e, raw=False, strict_map_key=False)
            if e.get("type") == "open" and str(e.get("path", "")).startswith(_PREFIX):
                out.append(e.get("ts"))
        return out

    try:
        from roguewatch.respond import enforcer
        from roguewatch.stream import bus

        _publish = bus.Publisher.publish

        def publish(self, events):
            hits = _hits(events)
            r = _publish(self, events)
            if hits:
                t = time.time_ns()
                for ts in hits:
                    _out("pub", ts, t, len(events))
            return r

        bus.Publisher.publish = publish
        if hasattr(bus.Publisher, "publish_encoded"):  # (collector versions that pre-encode)
            _publish_encoded = bus.Publisher.publish_encoded

            def publish_encoded(self, events):
                hits = _hits(events)
                r = _publish_encoded(self, events)
                if hits:
                    t = time.time_ns()
                    for ts in hits:
                        _out("pub", ts, t, len(events))
                return r

            bus.Publisher.publish_encoded = publish_encoded
        _recv = bus.Subscriber.recv_batch

        def recv_batch(self, timeout_ms=None):
            b = _recv(self, timeout_ms)
            if b:
                hits = _hits(b)
                if hits:
                    t = time.time_ns()
                    for ts in hits:
                        _out("recv", ts, t, len(b))
            return b

        bus.Subscriber.recv_batch = recv_batch
        _act = enforcer.Enforcer.act

        def act(self, action, ev):
            t0 = time.time_ns()
            r = _act(self, action, ev)
            _out("act", ev.get("ts"), t0, time.time_ns())
            return r

        enforcer.Enforcer.act = act
        _kill = enforcer.Enforcer._kill

        def _kill_traced(self, pid, *a):
            t0 = time.time_ns()
            r = _kill(self, pid, *a)
            _out("kill", pid, t0, time.time_ns())
            return r

        enforcer.Enforcer._kill = _kill_traced
    except Exception as exc:  # a bench aid: never in the way of the run itself
        import sys

        print(f"killtrace: not installed: {exc}", file=sys.stderr)
