"""Host names in egress allowlists: resolved when a session's policy is attached, then kept
current on their DNS time-to-live.

Owns turning ``HOST:PORT`` allowlist entries into addresses over time. The addresses come
from ``getaddrinfo``, the system's own order (``/etc/hosts``, then DNS), so the kernel allows
what the agent's own lookups return. ``getaddrinfo`` does not say how long an answer holds:
the TTL comes from one DNS query for the same name (dnspython, a short timeout, in the
refresher's thread, never on a session's start-up path), or is ``default_ttl`` when DNS gives
none (a name from ``/etc/hosts``, no reachable server). TTLs are clamped to
[``MIN_TTL_S``, ``MAX_TTL_S``] so a zero TTL cannot make us spin and a day-long one still
gets checked.

A name whose addresses changed is reported through ``on_change(cgroup id)``; the collector
then rewrites that cgroup's allowlist maps (new entries first, stale ones after, so an address
that stays allowed is never refused in between). A name that stops resolving keeps its last
addresses until it resolves again: a DNS outage must not cut an agent off, nor open anything.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger("roguewatch.policy.hostnames")

MIN_TTL_S = 1.0
MAX_TTL_S = 3600.0
DNS_TIMEOUT_S = 1.0


def system_addresses(host: str) -> list[str] | None:
    """Addresses of ``host`` by the system's resolver, sorted; None when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    return sorted({str(ipaddress.ip_address(i[4][0].split("%", 1)[0])) for i in infos})


def dns_ttl(host: str) -> float | None:
    """The smallest TTL of the A and AAAA records DNS gives for ``host``, or None."""
    try:
        import dns.exception
        import dns.resolver
    except ImportError:  # pragma: no cover - a dependency, but degrade rather than fail
        return None
    try:
        resolver = dns.resolver.Resolver()
    except (dns.exception.DNSException, OSError):
        return None  # no resolv.conf
    ttls = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = resolver.resolve(host, rdtype, lifetime=DNS_TIMEOUT_S)
        except (dns.exception.DNSException, OSError):
            continue
        if answer.rrset is not None:
            ttls.append(float(answer.rrset.ttl))
    return min(ttls) if ttls else None


class HostRefresher:
    """Keeps the addresses of the allowlists' host names, re-resolving each on its TTL."""

    def __init__(
        self,
        on_change: Callable[[int], None],
        default_ttl: float = 60.0,
        resolve: Callable[[str], list[str] | None] = system_addresses,
        ttl_of: Callable[[str], float | None] = dns_ttl,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_change = on_change
        self.default_ttl = default_ttl
        self._resolve = resolve
        self._ttl_of = ttl_of
        self._clock = clock
        self._lock = threading.Lock()
        self._addrs: dict[str, list[str]] = {}  # host -> current addresses
        self._due: dict[str, float] = {}  # host -> when to resolve it again
        self._users: dict[int, set[str]] = {}  # cgroup id -> the host names it allows
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.refreshes = 0  # resolutions done by the thread (for stats)
        self.changes = 0  # of which changed a name's addresses

    # -- for the collector ------------------------------------------------------------------

    def addresses(self, host: str) -> list[str]:
        """The current addresses of ``host``, resolving it now if it is new."""
        with self._lock:
            known = self._addrs.get(host)
        if known is not None:
            return known
        resolved = self._resolve(host)
        if not resolved:
            log.warning("egress allowlist: %s does not resolve: it allows nothing until it "
                        "does (tried again on its TTL)", host)  # fmt: skip
        found = resolved or []
        with self._lock:
            self._addrs.setdefault(host, found)
            self._due.setdefault(host, self._clock())  # the thread asks DNS for the TTL now
        self._wake.set()
        return found

    def track(self, cgid: int, hosts: list[str]) -> None:
        if not hosts:
            return
        for h in hosts:
            self.addresses(h)
        with self._lock:
            self._users[cgid] = set(hosts)
        self._start()

    def untrack(self, cgid: int) -> None:
        with self._lock:
            hosts = self._users.pop(cgid, set())
            still = set().union(*self._users.values()) if self._users else set()
            for h in hosts - still:
                self._addrs.pop(h, None)
                self._due.pop(h, None)

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- the thread -------------------------------------------------------------------------

    def refresh_due(self) -> list[int]:
        """Re-resolve every name whose TTL ran out; call on_change for the cgroups that allow
        a name whose addresses changed. Returns those cgroup ids."""
        now = self._clock()
        with self._lock:
            due = [h for h, t in self._due.items() if t <= now]
        changed_hosts = set()
        for host in due:
            found = self._resolve(host)
            ttl = self._ttl(self._ttl_of(host))
            self.refreshes += 1
            with self._lock:
                if host not in self._due:
                    continue  # untracked meanwhile
                self._due[host] = self._clock() + ttl
                if found is not None and found != self._addrs.get(host):
                    log.info("egress allowlist: %s now resolves to %s", host, ", ".join(found))
                    self._addrs[host] = found
                    changed_hosts.add(host)
        if not changed_hosts:
            return []
        self.changes += len(changed_hosts)
        with self._lock:
            cgids = [c for c, hs in self._users.items() if hs & changed_hosts]
        for cgid in cgids:
            try:
                self.on_change(cgid)
            except Exception:  # the next refresh tries again; the old entries stay meanwhile
                log.exception("egress allowlist of cgroup %d: update failed", cgid)
        return cgids

    def _ttl(self, ttl: float | None) -> float:
        return min(MAX_TTL_S, max(MIN_TTL_S, self.default_ttl if ttl is None else ttl))

    def _next_wait(self) -> float:
        with self._lock:
            if not self._due:
                return MAX_TTL_S
            return max(0.0, min(self._due.values()) - self._clock())

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="egress-hosts")
            self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self._next_wait())
            self._wake.clear()
            if not self._stop:
                self.refresh_due()
