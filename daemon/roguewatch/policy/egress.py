"""Egress allowlist entries: their syntax, what they allow, and the networks they stand for.

Owns the spec of a policy's ``egress.allow`` entries (``CIDR``, ``CIDR:PORT``, ``CIDR:LO-HI``,
``[v6]:PORT``, ``HOST:PORT``, each with an optional ``/tcp`` or ``/udp``), whether an address
and port are allowed by a list of them, and the networks a list stands for once its host
names are resolved (what the kernel's egress maps are written from).

Used by the rule fields (``detect.fields``), the policy loader and the probe loader alike:
it knows nothing of either.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16384)
def parse_ip(addr: str) -> IPAddress | None:
    """An address as an ip object (IPv4-mapped IPv6 as IPv4), or None if it is not an IP."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class EgressRule:
    """One parsed allowlist entry; ``host`` entries match nothing until resolved to networks."""

    network: IPNetwork | None
    port_lo: int = 0
    port_hi: int = 65535
    proto: str = ""
    host: str = ""

    def allows(self, ip: IPAddress, port: int, proto: str) -> bool:
        if self.network is None or ip.version != self.network.version or ip not in self.network:
            return False
        if not self.port_lo <= port <= self.port_hi:
            return False
        return not self.proto or not proto or self.proto == proto


def parse_egress_spec(spec: str) -> EgressRule:
    """``CIDR``, ``CIDR:PORT``, ``CIDR:LO-HI``, ``[v6]:PORT``, ``HOST:PORT``, then ``/tcp|/udp``.

    Raises ValueError with what was expected.
    """
    s = spec.strip()
    proto = ""
    for p in ("/tcp", "/udp"):
        if s.lower().endswith(p):
            proto, s = p[1:], s[: -len(p)]
    host_part, port_part = s, ""
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"egress spec {spec!r}: expected ']' after an IPv6 address")
        host_part, rest = s[1:end], s[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"egress spec {spec!r}: expected ':PORT' after ']'")
            port_part = rest[1:]
    else:
        try:
            ipaddress.ip_network(s, strict=False)
        except ValueError:
            if ":" in s:
                host_part, port_part = s.rsplit(":", 1)
    lo, hi = 0, 65535
    if port_part:
        try:
            if "-" in port_part:
                a, b = port_part.split("-", 1)
                lo, hi = int(a), int(b)
            else:
                lo = hi = int(port_part)
        except ValueError:
            raise ValueError(f"egress spec {spec!r}: expected PORT or PORT-PORT") from None
        if not (0 <= lo <= hi <= 65535):
            raise ValueError(f"egress spec {spec!r}: expected ports within 0-65535")
    try:
        net = ipaddress.ip_network(host_part, strict=False)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host_part):
            raise ValueError(
                f"egress spec {spec!r}: expected a CIDR, an IP address or a host name"
            ) from None
        return EgressRule(None, lo, hi, proto, host_part.lower())
    return EgressRule(net, lo, hi, proto)


def egress_hosts(specs: Iterable[str]) -> list[str]:
    """The host names of an allowlist (its HOST:PORT entries)."""
    return sorted({r.host for r in map(parse_egress_spec, specs) if r.network is None})


def expand_hosts(specs: tuple[str, ...], addresses: Callable[[str], list[str]]) -> tuple[str, ...]:
    """The allowlist with each HOST:PORT entry followed by one entry per current address of
    the host (same ports and protocol), so conditions allow what the kernel's egress maps
    allow. A host entry itself matches nothing (``EgressRule.allows``)."""
    out: list[str] = []
    for spec in specs:
        out.append(spec)
        r = parse_egress_spec(spec)
        if r.network is not None:
            continue
        proto = f"/{r.proto}" if r.proto else ""
        for addr in addresses(r.host):
            host = f"[{addr}]" if ":" in addr else addr
            out.append(f"{host}:{r.port_lo}-{r.port_hi}{proto}")
    return tuple(out)


@lru_cache(maxsize=256)
def compile_egress_allow(specs: tuple[str, ...]) -> tuple[EgressRule, ...]:
    return tuple(parse_egress_spec(s) for s in specs)


@lru_cache(maxsize=16384)
def allowed(specs: tuple[str, ...], addr: str, port: int, proto: str) -> bool | None:
    ip = parse_ip(addr)
    if ip is None:
        return None
    return any(r.allows(ip, port, proto) for r in compile_egress_allow(specs))


PROTO_NUMBERS = {"tcp": 6, "udp": 17}


def networks(
    allow: Iterable[str], resolve: Callable[[str], list[str]]
) -> list[tuple[IPNetwork, int, int, int]]:
    """``(network, port_lo, port_hi, protocol number or 0)`` for every entry; a host name
    stands for the networks of its current addresses (``resolve(host)``), none when it does
    not resolve now."""
    out: list[tuple[IPNetwork, int, int, int]] = []
    for spec in allow:
        r = parse_egress_spec(spec)
        proto = PROTO_NUMBERS.get(r.proto, 0)
        if r.network is not None:
            out.append((r.network, r.port_lo, r.port_hi, proto))
            continue
        for addr in resolve(r.host):
            out.append((ipaddress.ip_network(addr), r.port_lo, r.port_hi, proto))
    return out
