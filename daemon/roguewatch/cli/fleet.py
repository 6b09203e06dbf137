"""`roguewatch fleet ...`: the fleet side, for anyone with credentials for the NATS server.

    fleet setup                      make the streams and the policy bucket (an admin, once)
    fleet tail [--host H] [--category C] [--severity S] [--since T] [--json] [--follow]
    fleet hosts [--json]             every host's last heartbeat; stale ones flagged
    fleet policy push NAME FILE [--rules] / fleet policy list [--json]
    fleet kill HOST SESSION [--freeze | --thaw] [--grace S]

Connection options on every sub-command, with the nats CLI's environment variables as
defaults: --server ($NATS_URL), --creds ($NATS_CREDS), --nkey ($NATS_NKEY), --tls-ca
($NATS_CA), --tls-cert ($NATS_CERT), --tls-key ($NATS_KEY). The work is
``roguewatch.fleet.client``'s; this module parses options and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from roguewatch.cli.common import die
from roguewatch.outputs.alerts import SEVERITIES


def _connection(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    g = p.add_argument_group("connection")
    g.add_argument(
        "--server",
        action="append",
        metavar="URL",
        help="NATS server, repeatable (default $NATS_URL or nats://127.0.0.1:4222)",
    )
    g.add_argument(
        "--creds",
        default=env("NATS_CREDS", ""),
        metavar="FILE",
        help="creds file (JWT + NKey seed)",
    )
    g.add_argument("--nkey", default=env("NATS_NKEY", ""), metavar="FILE", help="NKey seed file")
    g.add_argument("--tls-ca", default=env("NATS_CA", ""), metavar="FILE")
    g.add_argument("--tls-cert", default=env("NATS_CERT", ""), metavar="FILE")
    g.add_argument("--tls-key", default=env("NATS_KEY", ""), metavar="FILE")  # fmt: skip


def add_arguments(sub: argparse._SubParsersAction) -> None:
    fleet = sub.add_parser("fleet", help="alerts, hosts, policies and kills across a fleet")
    fs = fleet.add_subparsers(dest="fleet_cmd", metavar="COMMAND")
    p = fs.add_parser("setup", help="make the streams and the policy bucket on the server")
    p.add_argument("--replicas", type=int, default=1, help="stream replicas (3 in a cluster)")
    _connection(p)
    p.set_defaults(fn=cmd_setup)
    p = fs.add_parser("tail", help="alerts of every host: history, then live")
    p.add_argument("--host", metavar="H")
    p.add_argument("--category", metavar="C")
    p.add_argument("--severity", metavar="S", choices=SEVERITIES,
                   help="this severity and above")  # fmt: skip
    p.add_argument("--since", metavar="T", help="RFC 3339 time or a duration back (10m, 2h)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--follow", "-f", action="store_true")
    _connection(p)
    p.set_defaults(fn=cmd_tail)
    p = fs.add_parser("hosts", help="every host's last heartbeat; stale hosts flagged")
    p.add_argument("--json", action="store_true")
    _connection(p)
    p.set_defaults(fn=cmd_hosts)
    p = fs.add_parser("policy", help="fleet policies and rule files")
    ps = p.add_subparsers(dest="policy_cmd", metavar="COMMAND")
    q = ps.add_parser("push", help="validate a policies.d (or rule) file, then store it")
    q.add_argument("name")
    q.add_argument("file")
    q.add_argument("--rules", action="store_true", help="FILE is a rule file, not a policy")
    _connection(q)
    q.set_defaults(fn=cmd_push)
    q = ps.add_parser("list", help="what the bucket holds, and which hosts run it")
    q.add_argument("--json", action="store_true")
    _connection(q)
    q.set_defaults(fn=cmd_list)
    p = fs.add_parser("kill", help="kill (or freeze) a session on a host that allows it")
    p.add_argument("host")
    p.add_argument("session")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--freeze", action="store_true")
    how.add_argument("--thaw", action="store_true")
    p.add_argument("--grace", type=float, default=5.0, metavar="SECONDS")
    _connection(p)
    p.set_defaults(fn=cmd_kill)
    fleet.set_defaults(fn=lambda args: (fleet.print_help(), 2)[1])


def _creds(args: argparse.Namespace):
    from roguewatch.fleet.connect import Credentials

    servers = args.server or os.environ.get("NATS_URL", "nats://127.0.0.1:4222").split(",")
    return Credentials(
        servers=servers, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
        nkey_seed_file=args.nkey, creds_file=args.creds, name="roguewatch-fleet",
    )  # fmt: skip


def _run(args: argparse.Namespace, work, follow: bool = False) -> int:
    """Connect, run ``work(nc)`` (a coroutine function returning the exit status), close."""
    from roguewatch.fleet.client import FleetError, open_connection
    from roguewatch.fleet.connect import CredentialError

    async def main() -> int:
        creds = _creds(args)
        creds.check(root_only=False)  # a person's own files: only that they exist
        nc = await open_connection(creds, follow=follow)
        try:
            return await work(nc)
        finally:
            try:
                await asyncio.wait_for(nc.close(), 2)
            except Exception:
                pass

    try:
        return asyncio.run(main())
    except (FleetError, CredentialError, ValueError) as exc:
        return die(f"fleet: {exc}")
    except KeyboardInterrupt:
        return 130


def cmd_setup(args: argparse.Namespace) -> int:
    from roguewatch.fleet import client

    async def work(nc) -> int:
        for line in await client.setup(nc, replicas=args.replicas):
            print(line)
        return 0

    return _run(args, work)


def cmd_tail(args: argparse.Namespace) -> int:
    from roguewatch.core.timefmt import parse_since
    from roguewatch.fleet import client
    from roguewatch.outputs.alerts import severity_rank

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        return die(f"fleet tail: --since: {exc}")
    flt = client.TailFilter(
        host=args.host, category=args.category,
        min_rank=severity_rank(args.severity) if args.severity else None, since_ns=since,
    )  # fmt: skip

    async def work(nc) -> int:
        await client.tail(nc, flt, sys.stdout, as_json=args.json, follow=args.follow,
                          color=sys.stdout.isatty())  # fmt: skip
        return 0

    return _run(args, work, follow=args.follow)


def cmd_hosts(args: argparse.Namespace) -> int:
    from roguewatch.fleet import client

    async def work(nc) -> int:
        beats = await client.heartbeats(nc)
        if args.json:
            for hb in beats:
                print(json.dumps({**hb, "stale": client.is_stale(hb)}))
        else:
            for line in client.hosts_table(beats):
                print(line)
        return 1 if any(client.is_stale(hb) for hb in beats) else 0

    return _run(args, work)


def cmd_push(args: argparse.Namespace) -> int:
    from roguewatch.fleet import client

    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as exc:
        return die(f"fleet policy push: {args.file}: {exc.strerror}")
    kind = "rules" if args.rules else "policy"

    async def work(nc) -> int:
        revision, digest = await client.push(nc, kind, args.name, data)
        print(f"{kind} {args.name}: stored as revision {revision}, hash {digest}")
        return 0

    return _run(args, work)


def cmd_list(args: argparse.Namespace) -> int:
    from roguewatch.fleet import client

    async def work(nc) -> int:
        items = await client.entries(nc)
        try:
            beats = await client.heartbeats(nc)
        except client.FleetError:  # no heartbeat stream yet: no host to tell of
            beats = []
        for e in items:
            running = [hb["host"] for hb in beats
                       if (hb.get("fleet_entries") or {}).get(e["key"], {}).get("hash") == e["hash"]
                       and hb["fleet_entries"][e["key"]].get("state") == "applied"]  # fmt: skip
            refused = [hb["host"] for hb in beats
                       if (hb.get("fleet_entries") or {}).get(e["key"], {}).get("state")
                       == "refused"]  # fmt: skip
            e.update(hosts_running=running, hosts_refused=refused)
        if args.json:
            for e in items:
                print(json.dumps(e))
            return 0
        print(f"{'KIND':<7} {'NAME':<24} {'REV':>4} {'HASH':<16} {'HOSTS':>5} REFUSED BY")
        for e in items:
            refused = ",".join(e["hosts_refused"]) or "-"
            print(f"{e['kind']:<7} {e['name']:<24} {e['revision']:>4} {e['hash']:<16} "
                  f"{len(e['hosts_running']):>5} {refused}")  # fmt: skip
        return 0

    return _run(args, work)


def cmd_kill(args: argparse.Namespace) -> int:
    from roguewatch.fleet import client

    action = "freeze" if args.freeze else "thaw" if args.thaw else "kill"
    creds = _creds(args)
    try:
        seed = creds.seed()
    except OSError as exc:
        return die(f"fleet kill: {exc}")
    if seed is None:
        return die("fleet kill signs its request with your user NKey: give --nkey SEEDFILE or "
                   "--creds FILE (hosts obey only the identities their config names)")  # fmt: skip

    async def work(nc) -> int:
        answer = await client.remote_action(nc, seed, args.host, args.session, action,
                                            args.grace)  # fmt: skip
        print(f"{args.host}: {action} {args.session}: {answer.get('outcome', '?')}")
        return 0 if answer.get("ok") else 1

    return _run(args, work)
