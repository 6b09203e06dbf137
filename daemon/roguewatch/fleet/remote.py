"""Remote actions: a session killed, frozen or thawed from the fleet side, on a host that
allows it, asked by an identity the host names.

Owns the request (``{"request": {...}, "sig": base64}``, the request canonical JSON signed
with the asker's user NKey), its checks on the host, and carrying it out. A request is obeyed
only if every check passes: remote actions are on in the host's config; the identity (a
public user NKey, ``U...``) is one of ``fleet.remote_identities``; the signature is that
identity's; the request names this host; it is fresh (``MAX_AGE_S``) and its nonce was not
seen before (no replay). The identity is proven by the signature, not by the server: a
server, or an account, that lets someone publish on a host's control subject still cannot
make it act. Every request, obeyed or refused, becomes an alert on the host (the caller
records it), with who asked.

The kill is :func:`roguewatch.respond.sessionkill.kill_session`, the one `roguewatch kill` runs.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from roguewatch.core.cache import BoundedDict
from roguewatch.policy.fleetconfig import NKEY_USER, FleetConfig

ACTIONS = ("kill", "freeze", "thaw")
MAX_AGE_S = 60.0


class RemoteError(Exception):
    pass


def _canonical(request: dict) -> bytes:
    return json.dumps(request, sort_keys=True, separators=(",", ":")).encode()


def _verify_key(public: str):  # -> nacl.signing.VerifyKey
    import nacl.signing
    import nkeys

    if not NKEY_USER.match(public):
        raise RemoteError(f"not a public user NKey: {public!r}")
    raw = base64.b32decode(public + "=" * (-len(public) % 8))
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if nkeys.crc16(bytearray(body)) != crc or body[0] != nkeys.PREFIX_BYTE_USER:
        raise RemoteError(f"not a valid public user NKey: {public!r}")
    return nacl.signing.VerifyKey(bytes(body[1:]))


def sign(seed: bytes, action: str, host: str, session: str, **extra: object) -> bytes:
    """A signed request, from the asker's user NKey seed."""
    import nkeys

    if action not in ACTIONS:
        raise RemoteError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
    kp = nkeys.from_seed(bytearray(seed))
    request = {
        "action": action, "host": host, "session": session, "ts": time.time(),
        "nonce": binascii.hexlify(os.urandom(12)).decode(),
        "identity": kp.public_key.decode(), **extra,
    }  # fmt: skip
    sig = kp.sign(_canonical(request))
    return json.dumps({"request": request, "sig": base64.b64encode(sig).decode()}).encode()


@dataclass
class Verdict:
    ok: bool
    why: str
    request: dict


class Gate:
    """The host's checks of a request (:meth:`check`), in the order that says the most."""

    def __init__(self, fc: FleetConfig, host: str, clock: Callable[[], float] = time.time) -> None:
        self.fc = fc
        self.host = host
        self.clock = clock
        self._nonces: BoundedDict[str, float] = BoundedDict(100_000)

    def check(self, data: bytes) -> Verdict:
        try:
            msg = json.loads(data)
            request, sig = msg["request"], base64.b64decode(msg["sig"], validate=True)
            if not isinstance(request, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError, binascii.Error):
            return Verdict(False, "malformed request", {})
        who = str(request.get("identity", ""))
        if not self.fc.remote_actions:
            return Verdict(False, "remote actions are off on this host", request)
        if who not in self.fc.remote_identities:
            return Verdict(False, f"identity {who[:12]}... is not allowed here", request)
        try:
            _verify_key(who).verify(_canonical(request), sig)
        except Exception:  # nacl's BadSignatureError, a short signature, a bad key
            return Verdict(False, "the signature is not that identity's", request)
        if request.get("host") != self.host:
            return Verdict(False, f"the request is for host {request.get('host')!r}", request)
        if request.get("action") not in ACTIONS:
            return Verdict(False, f"unknown action {request.get('action')!r}", request)
        ts = request.get("ts")
        if not isinstance(ts, int | float) or abs(self.clock() - ts) > MAX_AGE_S:
            return Verdict(False, "the request is stale (or the clocks disagree)", request)
        nonce = str(request.get("nonce", ""))
        if not nonce or nonce in self._nonces:
            return Verdict(False, "the request was replayed", request)
        self._nonces.put(nonce, ts)
        return Verdict(True, "", request)


def carry_out(control_endpoint: str, request: dict) -> dict:
    """Kill, freeze or thaw the session; {"ok", "outcome", "ended", "survivors"}."""
    from roguewatch.respond.sessionkill import find_session, freeze_session, kill_session
    from roguewatch.stream.control import ControlClient, ControlError

    try:
        client = ControlClient(control_endpoint, timeout_ms=5000)
    except ControlError as exc:
        return {"ok": False, "outcome": f"not done: {exc}"}
    try:
        sessions = [(client, s) for s in client.request("sessions")["sessions"]]
        found = find_session(sessions, str(request.get("session", "")))
        if found is None:
            return {"ok": False, "outcome": f"no live session {request.get('session')!r}"}
        _, s = found
        action = request["action"]
        if action == "kill":
            grace = min(max(float(request.get("grace", 5.0)), 0.0), 30.0)
            ended, survivors = kill_session(client, s, grace)
            return {"ok": survivors == 0, "session": s["session"], "ended": ended,
                    "survivors": survivors,
                    "outcome": f"{ended} processes ended, {survivors} survivors"}  # fmt: skip
        outcome = freeze_session(s, frozen=action == "freeze")
        return {"ok": not outcome.startswith("not"), "session": s["session"], "outcome": outcome}
    except (ControlError, OSError) as exc:
        return {"ok": False, "outcome": f"not done: {exc}"}
    finally:
        client.close()
