"""The fleet's names on the NATS server: subjects, streams, the policy bucket and its keys,
message ids and headers. One place, so the hosts, the fleet client, the documented
permissions (docs/fleet.md) and the tests agree.

    roguewatch.alert.<host>.<category>     alerts (the monitor's own: category `monitor`)
    roguewatch.session.<host>.<start|end>  session summaries
    roguewatch.heartbeat.<host>            heartbeats (a stream that keeps the last per host)
    roguewatch.control.<host>              remote actions (request/reply, in no stream)

It must not connect anywhere.
"""

from __future__ import annotations

import json
import re

PREFIX = "roguewatch"
STREAM = "ROGUEWATCH"  # alerts and sessions
HEARTBEATS = "ROGUEWATCH_HEARTBEATS"  # the last heartbeat of every host
DEFAULT_BUCKET = "ROGUEWATCH_POLICY"
# How long the server remembers a message id to drop a re-sent copy. A host re-sends only what
# it had not seen acknowledged, right after it reconnects, or after a restart: an hour covers a
# forwarder that restarts with back-off and a host that reboots.
DUPLICATE_WINDOW_S = 3600.0

H_MSG_ID = "Nats-Msg-Id"
H_HOST = "Roguewatch-Host"
H_SEVERITY = "Roguewatch-Severity"
H_KIND = "Roguewatch-Kind"

_BAD = re.compile(r"[^A-Za-z0-9_-]")
KEY_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
KINDS = ("policy", "rules")  # what the bucket holds, as `<kind>.<name>`


def token(text: str) -> str:
    """``text`` as one subject token (anything else made '_')."""
    return _BAD.sub("_", text)[:64] or "_"


def alert(host: str, category: str) -> str:
    return f"{PREFIX}.alert.{host}.{token(category)}"


def session(host: str, kind: str) -> str:
    return f"{PREFIX}.session.{host}.{token(kind)}"


def heartbeat(host: str) -> str:
    return f"{PREFIX}.heartbeat.{host}"


def control(host: str) -> str:
    return f"{PREFIX}.control.{host}"


def inbox_prefix(host: str) -> str:
    """Replies to a host's own requests come here (its permissions allow only its own)."""
    return f"_INBOX_{host}"


def parse(subject: str) -> tuple[str, str, str]:
    """(kind, host, category) of a stream subject; ValueError for a foreign one."""
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != PREFIX:
        raise ValueError(f"not a roguewatch subject: {subject!r}")
    return parts[1], parts[2], parts[3] if len(parts) > 3 else ""


def bucket_key(kind: str, name: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"expected one of {', '.join(KINDS)}, got {kind!r}")
    if not KEY_NAME.match(name):
        raise ValueError(f"a name is letters, digits, '-' or '_' (at most 64), got {name!r}")
    return f"{kind}.{name}"


def split_key(key: str) -> tuple[str, str]:
    """(kind, name) of a bucket key; ValueError for one that is not ours."""
    kind, _, name = key.partition(".")
    if kind not in KINDS or not KEY_NAME.match(name):
        raise ValueError(f"not a policy or rules key: {key!r}")
    return kind, name


def stream_config(replicas: int = 1) -> dict:
    """The alert and session stream (`roguewatch fleet setup` makes it)."""
    return {
        "name": STREAM,
        "subjects": [f"{PREFIX}.alert.>", f"{PREFIX}.session.>"],
        "duplicate_window": DUPLICATE_WINDOW_S,
        "num_replicas": replicas,
    }


def heartbeat_stream_config(replicas: int = 1) -> dict:
    return {
        "name": HEARTBEATS,
        "subjects": [f"{PREFIX}.heartbeat.>"],
        "max_msgs_per_subject": 1,
        "num_replicas": replicas,
    }


def host_permissions(host: str, bucket: str = DEFAULT_BUCKET) -> dict:
    """The NATS permissions of one host's user: it publishes only under its own host token,
    reads the policy bucket, and receives only its own replies and remote-action requests.
    docs/fleet.md shows them in a server configuration; the tests run a server with them."""
    kv = f"KV_{bucket}"
    return {
        "publish": {"allow": [
            f"{PREFIX}.alert.{host}.>", f"{PREFIX}.session.{host}.>", heartbeat(host),
            # watching the bucket: an ordered consumer of its stream, with flow control
            f"$JS.API.STREAM.INFO.{kv}", f"$JS.API.CONSUMER.CREATE.{kv}",
            f"$JS.API.CONSUMER.CREATE.{kv}.>", f"$JS.API.CONSUMER.INFO.{kv}.>",
            f"$JS.API.CONSUMER.DELETE.{kv}.>",
            f"$JS.FC.{kv}.>",
        ]},
        "subscribe": {"allow": [f"{inbox_prefix(host)}.>", control(host)]},
        # answering a remote-action request (to the asker's reply subject, once)
        "allow_responses": True,
    }  # fmt: skip


def server_conf_users(users: list[tuple[str, dict | None]]) -> str:
    """An ``authorization`` block of a nats-server configuration: ``(nkey, permissions)``
    pairs (None: everything, for an administrator)."""
    lines = ["authorization {", "  users = ["]
    for nkey, perms in users:
        if perms is None:
            lines.append(f'    {{ nkey: "{nkey}" }}')
        else:
            lines.append(f'    {{ nkey: "{nkey}", permissions: {json.dumps(perms)} }}')
    lines += ["  ]", "}"]
    return "\n".join(lines)
