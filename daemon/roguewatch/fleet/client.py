"""The fleet side: what anyone with credentials for the server can ask of it.

Owns setting up the server's streams and bucket (``setup``), reading alerts across hosts
(``tail``: history from the stream, then live, through an ordered consumer that re-creates
itself from the last sequence it delivered, so there is no gap and no duplicate), the hosts'
last heartbeats (``hosts``, stale ones flagged), pushing and listing fleet policies and rule
files (validated before they are stored, with the functions a host validates with), and
asking a host for a remote action (signed with the asker's NKey: ``remote.sign``).

It must not format for a terminal beyond the alert's compact line (``outputs.alerts.human``
with the host in front) and the hosts table; the `roguewatch fleet` command parses options.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import nats
from nats.js import api

from roguewatch.core import timefmt
from roguewatch.detect import ruleset
from roguewatch.fleet import connect, remote, subjects
from roguewatch.fleet.kvwatch import content_hash
from roguewatch.outputs import alerts
from roguewatch.outputs.render import printable
from roguewatch.policy import policy as policy_mod

STALE_AFTER_BEATS = 3  # a host is stale when its last heartbeat is older than this many beats


class FleetError(Exception):
    """Something a person can act on (no server, no stream, a refused file)."""


async def open_connection(creds: connect.Credentials, follow: bool = False):
    """A connection for the fleet client (one that keeps reconnecting when it follows)."""
    opts = creds.options()
    errors: list[Exception] = []

    async def note(exc: Exception) -> None:
        errors.append(exc)
        if follow:
            print(f"roguewatch fleet: {connect.redact(exc) or type(exc).__name__}; "
                  "reconnecting", file=sys.stderr)  # fmt: skip

    opts["error_cb"] = note
    if follow:
        opts.update(allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=1)
    try:
        return await nats.connect(**opts)
    except Exception as exc:
        why = errors[-1] if errors else exc
        raise FleetError(f"cannot connect to {', '.join(map(connect.redact, creds.servers))}: "
                         f"{connect.redact(why) or type(why).__name__}") from None  # fmt: skip


async def setup(nc, replicas: int = 1, bucket: str = subjects.DEFAULT_BUCKET) -> list[str]:
    """Make (or bring up to date) the streams and the policy bucket; what was done."""
    js = nc.jetstream()
    done = []
    for cfg in (subjects.stream_config(replicas), subjects.heartbeat_stream_config(replicas)):
        config = api.StreamConfig(**cfg)
        try:
            await js.stream_info(cfg["name"])
            await js.update_stream(config)
            done.append(f"stream {cfg['name']}: up to date")
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
            done.append(f"stream {cfg['name']}: created")
    await _bucket(js, bucket, replicas, create=True)
    done.append(f"bucket {bucket}: ready")
    return done


async def _bucket(js, bucket: str, replicas: int = 1, create: bool = False):
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        if not create:
            raise FleetError(
                f"no bucket {bucket} on the server: run `roguewatch fleet setup`"
            ) from None
        return await js.create_key_value(bucket=bucket, history=10, replicas=replicas)


# ---------------------------------------------------------------------------------------------
# tail
# ---------------------------------------------------------------------------------------------


@dataclass
class TailFilter:
    host: str | None = None
    category: str | None = None
    min_rank: int | None = None
    since_ns: int | None = None

    def subject(self) -> str:
        category = subjects.token(self.category) if self.category else "*"
        return f"{subjects.PREFIX}.alert.{self.host or '*'}.{category}"

    def matches(self, alert: dict) -> bool:
        if self.min_rank is None:
            return True
        return alerts.severity_rank(str(alert.get("severity"))) >= self.min_rank


def line(alert: dict, color: bool = False) -> str:
    """The compact line of `roguewatch tail`, the host in front."""
    host = printable(alert.get("host") or "?")
    return f"{host:<16} {alerts.human(alert, color)}"


async def tail(
    nc, flt: TailFilter, out: TextIO, as_json: bool = False, follow: bool = False,
    stop: asyncio.Event | None = None, color: bool = False,
    on_alert: Callable[[dict], None] | None = None,
) -> int:  # fmt: skip
    """Print matching alerts: the stream's history (from ``since``), then, with ``follow``,
    live until ``stop``. Returns how many were printed."""
    js = nc.jetstream()
    config = api.ConsumerConfig()
    if flt.since_ns is not None:
        policy = api.DeliverPolicy.BY_START_TIME
        config.opt_start_time = timefmt.rfc3339(flt.since_ns)
    else:
        policy = api.DeliverPolicy.ALL
    stop = stop or asyncio.Event()
    caught_up = asyncio.Event()
    printed = 0
    write, flush = out.write, out.flush

    # A callback, not next_msg(): at thousands of alerts a second, a wait per message is most
    # of the cost. The ordered consumer re-creates itself after a gap, from the last sequence.
    async def on_msg(msg) -> None:
        nonlocal printed
        try:
            alert = json.loads(msg.data)
        except ValueError:
            alert = None
        if isinstance(alert, dict) and flt.matches(alert):
            write((alerts.to_json(alert) if as_json else line(alert, color)) + "\n")
            printed += 1
            if on_alert is not None:
                on_alert(alert)
        if msg.metadata.num_pending == 0:
            flush()
            caught_up.set()

    try:
        sub = await js.subscribe(flt.subject(), stream=subjects.STREAM, ordered_consumer=True,
                                 deliver_policy=policy, config=config, cb=on_msg)  # fmt: skip
    except nats.js.errors.NotFoundError:
        raise FleetError(f"no stream {subjects.STREAM} on the server: run "
                         "`roguewatch fleet setup`") from None  # fmt: skip
    try:
        if await _nothing_to_deliver(sub):
            caught_up.set()
        if follow:
            await stop.wait()
        else:
            # The history: until the last message that was there is printed (or the server
            # stops answering: then what came is what there is).
            last = -1
            while not caught_up.is_set() and not stop.is_set():
                await asyncio.sleep(0.2)
                if printed == last and not await _alive(sub):
                    break
                last = printed
    finally:
        flush()
        try:
            await sub.unsubscribe()
        except Exception:
            pass
    return printed


async def _alive(sub) -> bool:
    try:
        await asyncio.wait_for(sub.consumer_info(), 5)
        return True
    except Exception:
        return False


async def _nothing_to_deliver(sub) -> bool:
    """Whether a new consumer has no message for us at all. (Its ``num_pending`` alone does
    not say: the server pushes messages before we ask, and counts only those not yet sent.)"""
    info = await sub.consumer_info()
    return info.num_pending + info.delivered.consumer_seq == 0


# ---------------------------------------------------------------------------------------------
# hosts
# ---------------------------------------------------------------------------------------------


async def heartbeats(nc) -> list[dict]:
    """The last heartbeat of every host that ever sent one."""
    js = nc.jetstream()
    try:
        sub = await js.subscribe(f"{subjects.PREFIX}.heartbeat.>", stream=subjects.HEARTBEATS,
                                 ordered_consumer=True,
                                 deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)  # fmt: skip
    except nats.js.errors.NotFoundError:
        raise FleetError(f"no stream {subjects.HEARTBEATS} on the server: run "
                         "`roguewatch fleet setup`") from None  # fmt: skip
    out = []
    try:
        pending = 0 if await _nothing_to_deliver(sub) else 1
        while pending > 0:
            try:
                msg = await sub.next_msg(timeout=5.0)
            except nats.errors.TimeoutError:
                break
            pending = msg.metadata.num_pending
            try:
                hb = json.loads(msg.data)
            except ValueError:
                continue
            if isinstance(hb, dict):
                hb["_received"] = msg.metadata.timestamp.timestamp()
                out.append(hb)
    finally:
        await sub.unsubscribe()
    return sorted(out, key=lambda h: str(h.get("host")))


def is_stale(hb: dict, now: float | None = None) -> bool:
    interval = float(hb.get("interval_s") or 10.0)
    return (now or time.time()) - float(hb.get("ts") or 0) > STALE_AFTER_BEATS * interval


def hosts_table(beats: list[dict], now: float | None = None) -> list[str]:
    now = now or time.time()
    rows = [
        f"{'HOST':<20} {'SEEN':>7} {'VERSION':<8} {'POLICY':<16} {'RULES':<16} "
        f"{'SESS':>4} {'ALERTS 1h (c/h/m/l/i)':<22} {'LOSSES':>6} {'SPOOL':>9}  STATE"
    ]
    for hb in beats:
        age = now - float(hb.get("ts") or 0)
        last = hb.get("alerts_last_hour") or {}
        by_sev = "/".join(str(last.get(s, 0)) for s in reversed(alerts.SEVERITIES))
        losses = sum(int(v) for v in (hb.get("losses") or {}).values() if isinstance(v, int))
        spool = (hb.get("spool") or {}).get("bytes", 0)
        refused = [k for k, e in (hb.get("fleet_entries") or {}).items()
                   if e.get("state") == "refused"]  # fmt: skip
        state = "STALE" if is_stale(hb, now) else "ok"
        if refused:
            state += f" refused:{','.join(refused)}"
        rows.append(
            f"{printable(hb.get('host', '?')):<20} {_age(age):>7} "
            f"{printable(hb.get('version', '?')):<8} "
            f"{printable(hb.get('policy_hash') or '-'):<16} "
            f"{printable(hb.get('rules_hash') or '-'):<16} {hb.get('sessions', 0):>4} "
            f"{by_sev:<22} {losses:>6} {_size(spool):>9}  {state}"
        )
    return rows


def _age(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.0f}h"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.0f}GiB"


# ---------------------------------------------------------------------------------------------
# policies and rule files
# ---------------------------------------------------------------------------------------------


def validate(kind: str, name: str, data: bytes) -> str:
    """ "" when the file would load on a host; the error (file:line:col) otherwise. Rules are
    checked with the packaged packs (a host adds its local rules; it checks again)."""
    subjects.bucket_key(kind, name)  # ValueError for a bad name
    d = tempfile.mkdtemp(prefix="roguewatch-push-")
    path = os.path.join(d, f"{name}.yaml")
    try:
        with open(path, "wb") as f:
            f.write(data)
        try:
            if kind == "policy":
                policy_mod.load_adoptions(d)
            else:
                ruleset.load_rules([d])
        except (policy_mod.PolicyError, ruleset.RuleError) as exc:
            return str(exc).replace(path, f"{name}.yaml")
        return ""
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def push(nc, kind: str, name: str, data: bytes, bucket: str = subjects.DEFAULT_BUCKET,
               ) -> tuple[int, str]:  # fmt: skip
    """Validate, then store; (revision, hash). FleetError when it would not load."""
    error = validate(kind, name, data)
    if error:
        raise FleetError(f"refused, not stored: {error}")
    kv = await _bucket(nc.jetstream(), bucket, create=True)
    revision = await kv.put(subjects.bucket_key(kind, name), data)
    return revision, content_hash(kind, name, data)


async def entries(nc, bucket: str = subjects.DEFAULT_BUCKET) -> list[dict]:
    """Every policy and rule file in the bucket, with its revision and hash."""
    kv = await _bucket(nc.jetstream(), bucket)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    out = []
    for key in sorted(keys):
        try:
            kind, name = subjects.split_key(key)
        except ValueError:
            continue
        e = await kv.get(key)
        data = e.value or b""
        try:
            h = content_hash(kind, name, data)
        except policy_mod.PolicyError:
            h = "invalid"
        out.append({"key": key, "kind": kind, "name": name, "revision": e.revision,
                    "bytes": len(data), "hash": h})  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# remote actions
# ---------------------------------------------------------------------------------------------


async def remote_action(
    nc, seed: bytes, host: str, session: str, action: str = "kill", grace: float = 5.0,
) -> dict:  # fmt: skip
    """Ask ``host`` to kill (freeze, thaw) ``session``; its answer."""
    data = remote.sign(seed, action, host, session, grace=grace)
    try:
        msg = await nc.request(subjects.control(host), data, timeout=grace + 20)
    except nats.errors.NoRespondersError:
        raise FleetError(f"host {host!r} is not connected (no one answers on its control "
                         "subject)") from None  # fmt: skip
    except nats.errors.TimeoutError:
        raise FleetError(f"host {host!r} did not answer in time") from None
    try:
        return json.loads(msg.data)
    except ValueError:
        raise FleetError(f"host {host!r} gave a malformed answer") from None
