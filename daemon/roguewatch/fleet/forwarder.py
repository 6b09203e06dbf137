"""The forwarder: the host's spool, published to JetStream in order, at least once; the
host's heartbeats; fleet policies and rules; remote actions.

Owns the connection's life (connect to any configured server, our own reconnection with
back-off doubling to ``fleet.reconnect_max_s``) and, per connection:

- **drain**: records are read from the spool in order and published with their message id
  (``Nats-Msg-Id``) and a reply subject of their own; up to ``WINDOW`` wait for the server's
  acknowledgement at once. The spool's ``acked`` moves over the acknowledged prefix (one
  fsync per batch of acknowledgements). A refusal, a missing acknowledgement
  (``ACK_TIMEOUT_S``) or a lost connection rewinds to the first unacknowledged record: it and
  those after it are sent again, and the server drops the copies it already stored (same id,
  within the stream's duplicate window). One connection and one publisher keep the order.
- **heartbeats** every ``fleet.heartbeat_s`` on ``roguewatch.heartbeat.<host>``.
- **the policy bucket**, watched; each entry validated and applied by ``kvwatch.PolicyStore``.
- **remote actions** on ``roguewatch.control.<host>``, checked by ``remote.Gate``.

It runs in its own asyncio event loop (nats-py is asyncio) in the forwarder process
(``roguewatch.runtime.forwarderd``), or several in one loop (the tests' and the bench's many
hosts). Blocking work (the collector's control socket, rule compiles) goes to worker threads.
Nothing secret is logged or reported: server addresses and errors pass ``connect.redact``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable

import nats

from roguewatch import __version__
from roguewatch.fleet import connect, kvwatch, remote, spool, subjects
from roguewatch.fleet.records import boot_id
from roguewatch.policy.config import Config

log = logging.getLogger("roguewatch.fleet")

WINDOW = 1024  # publishes awaiting their acknowledgement at once
READ_BATCH = 256
ACK_TIMEOUT_S = 5.0
POLL_S = 0.02  # how often an idle drain looks at the spool
FIRST_BACKOFF_S = 0.2


class PublishError(Exception):
    pass


class HourCounts:
    """Alerts by severity over the last hour, in minute buckets, kept across restarts."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.buckets: dict[int, Counter] = {}
        if path:
            try:
                with open(path) as f:
                    self.buckets = {int(k): Counter(v) for k, v in json.load(f).items()}
            except (OSError, ValueError, AttributeError, TypeError):
                self.buckets = {}

    def add(self, severity: str, now: float | None = None) -> None:
        minute = int((now or time.time()) // 60)
        self.buckets.setdefault(minute, Counter())[severity] += 1

    def last_hour(self, now: float | None = None) -> dict[str, int]:
        minute = int((now or time.time()) // 60)
        self.buckets = {m: c for m, c in self.buckets.items() if m > minute - 60}
        total: Counter = Counter()
        for c in self.buckets.values():
            total.update(c)
        return dict(total)

    def save(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({str(m): dict(c) for m, c in self.buckets.items()}, f)
            os.replace(tmp, self.path)
        except OSError:
            pass


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except TimeoutError:
        return False


class Forwarder:
    """One host's forwarder. ``status_path``: where ``roguewatch status`` reads it (None:
    nowhere). ``local``: False for a simulated host (no collector to ask, no remote actions;
    ``watch_bucket`` then says whether it still watches the policy bucket)."""

    def __init__(
        self,
        cfg: Config,
        host: str | None = None,
        status_path: str | None = None,
        local: bool = True,
        check_credentials: bool = True,
        watch_bucket: bool | None = None,
    ) -> None:
        self.cfg = cfg
        self.fc = cfg.fleet
        self.host = host or self.fc.host()
        self.boot = boot_id()
        self.local = local
        self.watch_bucket = local if watch_bucket is None else watch_bucket
        self.creds = connect.from_fleet_config(self.fc, self.host)
        if check_credentials:
            self.creds.check()
        self.reader = spool.Reader(self.fc.spool_dir)
        self.gate = remote.Gate(self.fc, self.host)
        self.store = kvwatch.PolicyStore(
            cfg, self.announce, self._reload_policies, self._install if local else None
        )
        self.hour = HourCounts(os.path.join(self.fc.state_dir, "hour.json") if local else None)
        self.status_path = status_path
        self.counters = Counter(published=0, acked=0, duplicates=0, refused=0, timeouts=0,
                                rewinds=0, connects=0, heartbeats=0, remote_actions=0)  # fmt: skip
        self.connected_to = ""
        self.last_error = ""
        self.started = time.time()
        self.acked_at = 0.0
        self._errors_logged = 0
        self._violation = ""
        self._wake = asyncio.Event()
        self.ack_timeout_s = ACK_TIMEOUT_S

    # -- the host's own alerts ----------------------------------------------------------------

    def announce(self, kind: str, detail: str, severity: str = "high") -> None:
        """A monitor alert on this host, through the collector (the evaluator raises it, so it
        reaches every sink, the spool included)."""
        if not self.local:
            log.warning("%s: %s", kind, detail)
            return
        from roguewatch.stream.control import ControlClient, ControlError

        try:
            client = ControlClient(self.cfg.control_endpoint, timeout_ms=5000)
            try:
                client.request("announce", kind=kind, detail=detail, severity=severity)
            finally:
                client.close()
        except ControlError as exc:
            log.error("could not raise the alert %s (%s): %s", kind, detail, exc)

    def _install(self, kind: str, name: str, data: bytes | None) -> None:
        """A fleet file written by the collector (the watched paths' owner), so that its
        watchers take it as the new baseline instead of judging a change by an unknown
        writer; written here when the collector's watchers are off or it is away."""
        from roguewatch.stream.control import ControlClient, ControlError

        try:
            client = ControlClient(self.cfg.control_endpoint, timeout_ms=10000)
            try:
                reply = client.request("install_config", kind=kind, name=name, data=data)
            finally:
                client.close()
            if reply.get("outcome") != "unwatched":
                return
        except ControlError as exc:
            log.warning("the collector did not install %s %s (%s): written here", kind, name, exc)
        kvwatch.install_here(self.store.directory(kind), name, data)

    def _reload_policies(self) -> dict:
        from roguewatch.stream.control import ControlClient

        client = ControlClient(self.cfg.control_endpoint, timeout_ms=30000)
        try:
            return client.request("reload_policies")
        finally:
            client.close()

    def _collector_stats(self) -> dict:
        if not self.local:
            return {}
        from roguewatch.stream.control import ControlClient, ControlError

        try:
            client = ControlClient(self.cfg.control_endpoint, timeout_ms=2000)
            try:
                return client.request("stats")
            finally:
                client.close()
        except ControlError:
            return {}

    def _evaluator_status(self) -> dict:
        if not self.local or not self.cfg.status_file:
            return {}
        try:
            with open(self.cfg.status_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve the connection until it is lost, back off, again, until ``stop``."""
        status = asyncio.ensure_future(self._status_loop(stop))
        backoff = FIRST_BACKOFF_S
        try:
            while not stop.is_set():
                lost = asyncio.Event()

                async def _lost(*_: object, lost: asyncio.Event = lost) -> None:
                    lost.set()

                async def _error(exc: Exception) -> None:
                    self._note_error(exc)
                    text = str(exc).lower()
                    if "permissions violation" in text and f'"{subjects.PREFIX}.' in text:
                        # The server refuses what we publish: no acknowledgement will come.
                        self._violation = connect.redact(exc)
                        self._wake.set()

                try:
                    opts = self.creds.options()
                    opts.update(disconnected_cb=_lost, closed_cb=_lost, error_cb=_error)
                    nc = await nats.connect(**opts)
                except Exception as exc:  # refused, TLS, authorization, timeout
                    self._note_error(exc)
                    await _wait(stop, backoff)
                    backoff = min(backoff * 2, self.fc.reconnect_max_s)
                    continue
                self.counters["connects"] += 1
                self.connected_to = connect.redact(nc.connected_url.geturl() if nc.connected_url
                                                   else "")  # fmt: skip
                log.info("connected to %s as host %s", self.connected_to, self.host)
                try:
                    await self._serve(nc, stop, lost)
                    backoff = FIRST_BACKOFF_S
                except PublishError as exc:
                    self._note_error(exc)
                except Exception as exc:  # a lost connection surfaces as many types
                    self._note_error(exc)
                finally:
                    self.connected_to = ""
                    self.reader.rewind()  # what was in flight is sent again, de-duplicated
                    self.counters["rewinds"] += 1
                    try:
                        await asyncio.wait_for(nc.close(), 2)
                    except Exception:
                        pass
                if not stop.is_set():
                    await _wait(stop, backoff)
                    backoff = min(backoff * 2, self.fc.reconnect_max_s)
        finally:
            status.cancel()
            self.write_status()
            self.hour.save()

    def _note_error(self, exc: BaseException) -> None:
        text = connect.redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        self.last_error = text
        self._errors_logged += 1
        if self._errors_logged <= 3 or self._errors_logged % 100 == 0:
            log.warning("fleet: %s (%d errors so far; records wait in the spool)", text,
                        self._errors_logged)  # fmt: skip

    async def _serve(self, nc, stop: asyncio.Event, lost: asyncio.Event) -> None:
        tasks = [asyncio.ensure_future(self._drain(nc, lost)),
                 asyncio.ensure_future(self._heartbeats(nc, lost))]  # fmt: skip
        if self.watch_bucket:
            tasks.append(asyncio.ensure_future(self._watch_bucket(nc)))
        if self.local:
            await nc.subscribe(subjects.control(self.host), cb=self._on_control)
        ended = asyncio.ensure_future(_either(stop, lost))
        try:
            done, _ = await asyncio.wait([*tasks, ended], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not ended and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in [*tasks, ended]:
                t.cancel()
            await asyncio.gather(*tasks, ended, return_exceptions=True)

    # -- the drain ----------------------------------------------------------------------------

    async def _drain(self, nc, lost: asyncio.Event) -> None:
        prefix = f"{subjects.inbox_prefix(self.host)}.ack.{nc._nuid.next().decode()}"
        done: set[int] = set()
        failure: list[str] = []
        acked_event = asyncio.Event()

        async def on_ack(msg) -> None:
            try:
                seq = int(msg.subject.rsplit(".", 1)[1])
            except ValueError:
                return
            status = (msg.headers or {}).get("Status")
            if status:  # 503: no stream listens on the subject
                failure.append(f"the server answered {status} (no stream "
                               f"{subjects.STREAM}? run `roguewatch fleet setup`)")  # fmt: skip
            else:
                try:
                    resp = json.loads(msg.data)
                except ValueError:
                    resp = {"error": {"description": "a malformed acknowledgement"}}
                if "error" in resp:
                    self.counters["refused"] += 1
                    err = resp["error"]
                    failure.append(f"the server refused a record: {err.get('description', err)}")
                else:
                    if resp.get("duplicate"):
                        self.counters["duplicates"] += 1
                    done.add(seq)
            acked_event.set()

        sub = await nc.subscribe(f"{prefix}.*", cb=on_ack, pending_msgs_limit=4 * WINDOW)
        # seq, sent at, severity of an alert ("" for a session summary)
        inflight: deque[tuple[int, float, str]] = deque()
        alert_prefix = f"{subjects.PREFIX}.alert."
        reader = self.reader
        try:
            while not lost.is_set():
                now = time.monotonic()
                sent = 0
                room = WINDOW - len(inflight)
                if room > 0:
                    for rec in reader.read(min(room, READ_BATCH)):
                        await nc.publish(
                            rec.subject, rec.payload, reply=f"{prefix}.{rec.seq}",
                            headers={subjects.H_MSG_ID: rec.msg_id,
                                     subjects.H_HOST: self.host,
                                     subjects.H_SEVERITY: rec.severity},
                        )  # fmt: skip
                        is_alert = rec.subject.startswith(alert_prefix)
                        inflight.append((rec.seq, now, rec.severity if is_alert else ""))
                        sent += 1
                    self.counters["published"] += sent
                last = 0
                while inflight and inflight[0][0] in done:
                    seq, _, sev = inflight.popleft()
                    done.discard(seq)
                    last = seq
                    if sev:
                        self.hour.add(sev)
                    self.counters["acked"] += 1
                if last:
                    reader.ack(last)
                    self.acked_at = time.time()
                if failure:
                    raise PublishError(failure[0])
                if self._violation:
                    why, self._violation = self._violation, ""
                    raise PublishError(f"the server refuses this host's records: {why}")
                if inflight and now - inflight[0][1] > self.ack_timeout_s:
                    self.counters["timeouts"] += 1
                    raise PublishError(f"no acknowledgement within {self.ack_timeout_s:g} s")
                if sent:
                    await asyncio.sleep(0)  # let the acknowledgements in
                    continue
                acked_event.clear()
                await _wait(acked_event, POLL_S if not inflight else self.ack_timeout_s / 10)
        finally:
            try:
                await sub.unsubscribe()
            except Exception:
                pass

    # -- heartbeats ---------------------------------------------------------------------------

    def heartbeat(self) -> dict:
        """What the fleet sees of this host (no secret: hashes, counters, states)."""
        ev, col = self._evaluator_status(), self._collector_stats()
        segs, backlog = self.reader.backlog()
        lost = dict(ev.get("lost") or {})
        spooled = ev.get("fleet_spool") or {}
        return {
            "host": self.host, "ts": time.time(), "version": __version__, "boot": self.boot,
            "interval_s": self.fc.heartbeat_s, "uptime_s": round(time.time() - self.started, 1),
            "rules_hash": ev.get("rules_hash", ""), "rules": ev.get("rules", 0),
            "policy_hash": col.get("policy_hash", self.store.policy_hash),
            "sessions": col.get("sessions", ev.get("sessions", 0)),
            "events": col.get("events", ev.get("events", 0)), "alerts": ev.get("alerts", 0),
            "kills": ev.get("kills", 0), "alerts_last_hour": self.hour.last_hour(),
            "losses": {**{k: v for k, v in lost.items() if v},
                       "spool_dropped": int(spooled.get("dropped", 0))},
            "spool": {"acked": self.reader.acked, "segments": segs, "bytes": backlog},
            "fleet_entries": self.store.report(), "remote_actions": self.fc.remote_actions,
        }  # fmt: skip

    async def _heartbeats(self, nc, lost: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not lost.is_set():
            hb = await loop.run_in_executor(None, self.heartbeat)
            await nc.publish(subjects.heartbeat(self.host), json.dumps(hb).encode())
            self.counters["heartbeats"] += 1
            await loop.run_in_executor(None, self.hour.save)
            await _wait(lost, self.fc.heartbeat_s)

    # -- the policy bucket --------------------------------------------------------------------

    async def _watch_bucket(self, nc) -> None:
        js = nc.jetstream()
        loop = asyncio.get_running_loop()
        while True:
            try:
                kv = await js.key_value(self.fc.policy_bucket)
                break
            except Exception as exc:  # no bucket yet (nothing pushed), or not allowed
                self._note_error(exc)
                await asyncio.sleep(min(30.0, self.fc.reconnect_max_s))
        watcher = await kv.watchall()
        keys: set[str] = set()
        initial = True
        async for entry in watcher:
            if entry is None:  # the bucket's current values are all in
                if initial:
                    initial = False
                    await loop.run_in_executor(None, self.store.reconcile, set(keys))
                continue
            deleted = entry.operation in ("DEL", "PURGE")
            (keys.discard if deleted else keys.add)(entry.key)
            await loop.run_in_executor(
                None, self.store.apply, entry.key, None if deleted else entry.value,
                entry.revision,
            )  # fmt: skip

    # -- remote actions -----------------------------------------------------------------------

    async def _on_control(self, msg) -> None:
        loop = asyncio.get_running_loop()
        verdict = self.gate.check(msg.data)
        req = verdict.request
        who = str(req.get("identity", "?"))
        what = f"remote {req.get('action', '?')} of session {req.get('session', '?')!s}"
        if verdict.ok:
            result = await loop.run_in_executor(
                None, remote.carry_out, self.cfg.control_endpoint, req
            )
            detail = f"{what} asked by {who}: {result['outcome']}"
        else:
            result = {"ok": False, "outcome": f"refused: {verdict.why}"}
            detail = f"{what} asked by {who[:56]} refused: {verdict.why}"
        self.counters["remote_actions"] += 1
        await loop.run_in_executor(None, self.announce, "fleet_remote_action", detail, "high")
        if msg.reply:
            try:
                await msg.respond(json.dumps({"host": self.host, **result}).encode())
            except Exception as exc:
                self._note_error(exc)

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict:
        segs, backlog = self.reader.backlog()
        return {
            "host": self.host, "connected": bool(self.connected_to), "server": self.connected_to,
            "acked": self.reader.acked, "acked_at": self.acked_at, "spool_segments": segs,
            "spool_bytes": backlog, "counters": dict(self.counters),
            "last_error": self.last_error, "entries": self.store.report(), "ts": time.time(),
        }  # fmt: skip

    def write_status(self) -> None:
        if not self.status_path:
            return
        tmp = f"{self.status_path}.tmp"
        try:
            os.makedirs(os.path.dirname(self.status_path), mode=0o700, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(self.status(), f)
            os.replace(tmp, self.status_path)
        except OSError:
            pass

    async def _status_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.write_status()
            await _wait(stop, 1.0)


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    ta, tb = asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())
    try:
        await asyncio.wait([ta, tb], return_when=asyncio.FIRST_COMPLETED)
    finally:
        ta.cancel()
        tb.cancel()


def status_path(cfg: Config) -> str | None:
    """Where the service's forwarder writes its status (beside the evaluator's)."""
    if not cfg.status_file:
        return None
    return os.path.join(os.path.dirname(cfg.status_file), "fleet.json")


Announce = Callable[[str, str, str], None]
