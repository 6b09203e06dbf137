"""Host names in egress allowlists: resolved at attach, re-resolved on their TTL.

The refresher's schedule is tested with a fake clock and a fake resolver (the network is the
edge of the world here); the kernel side with the real thing: a name in /etc/hosts that moves
from one loopback address to another while a session's cgroup holds the allowlist, and real
connects from that cgroup that are allowed, then refused, by the kernel.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from roguewatch.policy.hostnames import MIN_TTL_S, HostRefresher
from roguewatch.runtime import launcher

from tests.conftest import require_root

# -- the schedule ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refresher(answers: dict[str, list[str] | None], ttls: dict[str, float | None]):
    clock = Clock()
    changed: list[int] = []
    r = HostRefresher(
        changed.append,
        default_ttl=30.0,
        resolve=lambda h: answers.get(h),
        ttl_of=lambda h: ttls.get(h),
        clock=clock,
    )
    r._start = lambda: None  # driven by hand: no thread
    return r, clock, changed


def test_a_name_is_re_resolved_when_its_ttl_runs_out_and_its_cgroups_are_told() -> None:
    answers = {"api.example": ["192.0.2.1"], "other.example": ["192.0.2.9"]}
    r, clock, changed = refresher(answers, {"api.example": 120.0})
    r.track(7, ["api.example"])
    r.track(8, ["other.example"])
    assert r.addresses("api.example") == ["192.0.2.1"]
    assert r.refresh_due() == []  # the first look asks for the TTL; nothing changed
    answers["api.example"] = ["192.0.2.2"]
    clock.now += 119
    assert r.refresh_due() == [] and r.addresses("api.example") == ["192.0.2.1"]
    clock.now += 2
    assert r.refresh_due() == [7] and changed == [7]
    assert r.addresses("api.example") == ["192.0.2.2"]


def test_without_a_dns_ttl_the_default_applies_and_tiny_ttls_are_clamped() -> None:
    answers = {"hosts-file.name": ["10.0.0.1"], "zero.ttl": ["10.0.0.2"]}
    r, clock, _ = refresher(answers, {"zero.ttl": 0.0})
    r.track(1, ["hosts-file.name", "zero.ttl"])
    r.refresh_due()
    assert r._due["hosts-file.name"] == clock.now + 30.0  # default_ttl
    assert r._due["zero.ttl"] == clock.now + MIN_TTL_S


def test_a_name_that_stops_resolving_keeps_its_last_addresses() -> None:
    answers: dict[str, list[str] | None] = {"flaky.example": ["198.51.100.7"]}
    r, clock, changed = refresher(answers, {})
    r.track(3, ["flaky.example"])
    answers["flaky.example"] = None  # DNS outage: neither cut off nor opened
    clock.now += 31
    assert r.refresh_due() == [] and not changed
    assert r.addresses("flaky.example") == ["198.51.100.7"]


def test_an_untracked_cgroup_is_forgotten_and_no_longer_told() -> None:
    answers = {"a.example": ["192.0.2.1"]}
    r, clock, changed = refresher(answers, {})
    r.track(5, ["a.example"])
    r.untrack(5)
    answers["a.example"] = ["192.0.2.3"]
    clock.now += 31
    assert r.refresh_due() == [] and not changed


# -- the kernel ---------------------------------------------------------------------------------

HOST = f"rw-refresh-{secrets.token_hex(3)}.test"
PY = "/usr/bin/python3"
CONNECT = (
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.settimeout(2)\n"
    "try:\n"
    "    s.connect((sys.argv[1], int(sys.argv[2])))\n"
    "except PermissionError:\n"
    "    sys.exit(13)\n"
    "except OSError as e:\n"
    "    print(e, file=sys.stderr); sys.exit(1)\n"
)


@contextlib.contextmanager
def hosts_entry() -> Iterator[Callable[[str], None]]:
    """An /etc/hosts line for HOST that the test can move; removed at the end."""
    path = "/etc/hosts"
    with open(path) as f:
        original = f.read()

    def point_to(addr: str) -> None:
        with open(path + ".rwtest", "w") as f:
            f.write(original.rstrip("\n") + f"\n{addr} {HOST}  # roguewatch test\n")
        os.replace(path + ".rwtest", path)

    try:
        yield point_to
    finally:
        with open(path + ".rwtest", "w") as f:
            f.write(original)
        os.replace(path + ".rwtest", path)


def connect_from(watcher: launcher.Watcher, addr: str, port: int) -> int:
    """Exit status of a connect made by a new process of session 0x5EED (the kernel judges a
    socket by its process's session): 0 accepted, 13 EPERM."""

    def register(pid: int) -> int:
        return int(watcher.control.request("register", pid=pid, session=0x5EED)["session"])

    pid, _ = launcher.spawn_in_session([PY, "-S", "-c", CONNECT, addr, str(port)], register)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def listeners() -> Iterator[int]:
    """Listeners on 127.0.0.77 and 127.0.0.78, on one port."""
    a = socket.create_server(("127.0.0.77", 0))
    port = a.getsockname()[1]
    b = socket.create_server(("127.0.0.78", port))
    yield port
    a.close()
    b.close()


def test_a_moved_host_name_is_followed_in_the_kernel(listeners: int) -> None:
    require_root()
    port = listeners
    watcher = launcher.start_private_collector(["--no-watch", "--egress-refresh", "1"])
    try:
        with hosts_entry() as point_to:
            point_to("127.0.0.77")
            reply = watcher.control.request(
                "attach_egress", session=0x5EED, allow=[f"{HOST}:{port}"]
            )
            assert reply["ok"], reply
            assert connect_from(watcher, "127.0.0.77", port) == 0
            assert connect_from(watcher, "127.0.0.78", port) == 13  # refused in the kernel

            point_to("127.0.0.78")
            deadline = time.monotonic() + 20
            while connect_from(watcher, "127.0.0.78", port) != 0:
                assert time.monotonic() < deadline, "the new address was never allowed"
                time.sleep(0.2)
            assert connect_from(watcher, "127.0.0.77", port) == 13  # the old one is not any more
            stats = watcher.control.request("stats")
            assert stats["egress_hosts"]["changes"] >= 1
    finally:
        with contextlib.suppress(Exception):
            watcher.control.request("release", session=0x5EED)
        watcher.close()


# -- the evaluator agrees with the kernel ---------------------------------------------------


def test_the_evaluator_allows_what_a_host_entry_resolves_to_and_follows_it() -> None:
    # Before, a HOST:PORT entry matched nothing in conditions: a connect the kernel allowed
    # was alerted as unauthorized egress, and the rule's kill_process ended the agent.
    from roguewatch.detect import ruleset
    from roguewatch.detect.evaluator import Evaluator
    from roguewatch.detect.proctable import ProcessTable

    from tests.test_evaluator import S, ev, session_tree

    answers = {"api.example": ["192.0.2.1"]}
    out: list[dict] = []
    e = Evaluator(ruleset.load_rules(), ProcessTable(), out.append)
    e.hosts, clock, _ = refresher(answers, {})
    e.handle({"type": "session", "kind": "start", "ts": 1, "session": S, "pid": 100,
              "flags": [], "policy": {"egress_allow": ["api.example:443/tcp"]}})  # fmt: skip
    session_tree(e)

    def connect(addr: str) -> list[str]:
        out.clear()
        e.handle(ev("connect", 101, exec_id="101-3", pexec_id="100-1", ppid=100,
                    exe="/usr/bin/curl", comm="curl", fd=3, family="inet", addr=addr,
                    port=443, proto="tcp", ret=0))  # fmt: skip
        e.flush_fs(everything=True)
        return [a["rule"] for a in out if a["category"] == "egress"]

    assert connect("192.0.2.1") == []
    assert connect("192.0.2.99") == ["egress_unauthorized_destination"]
    answers["api.example"] = ["192.0.2.2"]  # the name moved
    clock.now += 31
    e.hosts.refresh_due()
    e.tick()
    assert connect("192.0.2.2") == []
    assert connect("192.0.2.1") == ["egress_unauthorized_destination"]


def test_a_name_that_does_not_resolve_is_named_in_a_warning(caplog) -> None:
    r, _, _ = refresher({"nowhere.invalid": None}, {})
    with caplog.at_level("WARNING", logger="roguewatch.policy.hostnames"):
        assert r.addresses("nowhere.invalid") == []
    assert "nowhere.invalid does not resolve" in caplog.text
