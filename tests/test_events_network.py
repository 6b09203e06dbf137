"""Network events (connect, sendto, sendmsg, socket, bind, listen) from real sockets.

Traffic stays on the loopback: 127.0.0.0/8 and ::1. Listeners the tests need are opened by
this (untracked) test process, so only the session's side of the traffic is on the stream.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import pytest

from tests.conftest import Stream

pytestmark = pytest.mark.kernel

MSG_FASTOPEN = 0x20000000
TCP_FASTOPEN = 23
ECONNREFUSED = 111
DNS_NAME = "exfil-abc123.example.com"


def dns_query(name: str, qid: int = 0x1234) -> bytes:
    """A real DNS query packet: header (RD set, one question) + QNAME + QTYPE A + QCLASS IN."""
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return header + qname + struct.pack("!HH", 1, 1)


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s
    s.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (TCP) at the moment."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- connect --------------------------------------------------------------------------------


def test_tcp_connect_to_a_loopback_listener(stream: Stream, tcp_listener: socket.socket) -> None:
    port = tcp_listener.getsockname()[1]
    s = stream.python(
        f"""
        import socket
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.connect(("127.0.0.1", {port}))
        print(c.fileno())
        c.close()
        """
    )
    ev = s.one("connect", port=port)
    assert ev["pid"] == s.pid
    assert (ev["family"], ev["addr"], ev["port"], ev["proto"], ev["ret"]) == (
        "inet",
        "127.0.0.1",
        port,
        "tcp",
        0,
    )
    assert ev["fd"] >= 3
    assert ev["session"] == s.id


def test_connect_to_a_closed_port_reports_econnrefused(stream: Stream) -> None:
    port = free_port("127.0.0.9")
    s = stream.python(
        f"""
        import socket
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            c.connect(("127.0.0.9", {port}))
        except ConnectionRefusedError:
            pass
        """
    )
    ev = s.one("connect", addr="127.0.0.9", port=port)
    assert (ev["family"], ev["proto"], ev["ret"]) == ("inet", "tcp", -ECONNREFUSED)


def test_ipv6_tcp_connect_to_the_loopback(stream: Stream) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as ls:
        ls.bind(("::1", 0))
        ls.listen(4)
        port = ls.getsockname()[1]
        s = stream.python(
            f"""
            import socket
            c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            c.connect(("::1", {port}))
            c.close()
            """
        )
    ev = s.one("connect", port=port)
    assert (ev["family"], ev["addr"], ev["proto"], ev["ret"]) == ("inet6", "::1", "tcp", 0)


def test_connect_from_an_untracked_process_produces_no_event(
    stream: Stream, tcp_listener: socket.socket
) -> None:
    port = tcp_listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"hello")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.sendto(b"x", ("127.0.0.5", port))
    seen = stream.collect(lambda evs: False, timeout=1.0)
    assert [e for e in seen if e.get("pid") == os.getpid()] == []


# -- sendto / sendmsg -----------------------------------------------------------------------


def test_unconnected_udp_sendto_names_its_destination(stream: Stream) -> None:
    port = free_port()
    s = stream.python(
        f"""
        import socket
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"x" * 37, ("127.0.0.5", {port}))
        """
    )
    ev = s.one("sendto", port=port)
    assert (ev["family"], ev["addr"], ev["proto"]) == ("inet", "127.0.0.5", "udp")
    assert (ev["len"], ev["ret"], ev["msg_flags"]) == (37, 37, 0)
    assert "dns_query" not in ev and "dns_name" not in ev


def test_sendmsg_with_a_destination_is_a_sendmsg_event(stream: Stream) -> None:
    port = free_port()
    s = stream.python(
        f"""
        import socket
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendmsg([b"ab", b"cde"], [], 0, ("127.0.0.5", {port}))
        """
    )
    ev = s.one("sendmsg", port=port)
    assert (ev["family"], ev["addr"], ev["proto"]) == ("inet", "127.0.0.5", "udp")
    assert (ev["vlen"], ev["ret"]) == (1, 5)
    assert s.of_type("sendto") == []


def test_send_on_a_connected_tcp_socket_is_filtered_in_the_kernel(
    stream: Stream, tcp_listener: socket.socket
) -> None:
    port = tcp_listener.getsockname()[1]
    s = stream.python(
        f"""
        import socket
        c = socket.create_connection(("127.0.0.1", {port}))
        c.send(b"hello")
        c.sendall(b"world" * 100)
        c.sendmsg([b"again"])
        c.close()
        """
    )
    assert s.one("connect", port=port)["ret"] == 0
    assert s.of_type("sendto") == []
    assert s.of_type("sendmsg") == []


# -- DNS ------------------------------------------------------------------------------------


def test_dns_query_sent_to_port_53_carries_the_query_name(stream: Stream) -> None:
    query = dns_query(DNS_NAME)
    s = stream.python(
        f"""
        import socket
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto({query!r}, ("127.0.0.53", 53))
        """
    )
    ev = s.one("sendto", port=53)
    assert (ev["family"], ev["addr"], ev["proto"]) == ("inet", "127.0.0.53", "udp")
    assert ev["len"] == len(query) == ev["ret"]
    assert ev["dns_name"] == DNS_NAME
    assert ev["dns_query"] == query


def test_send_on_a_udp_socket_connected_to_port_53_is_a_dns_sendto(stream: Stream) -> None:
    query = dns_query(DNS_NAME, qid=0x4242)
    s = stream.python(
        f"""
        import socket
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(("127.0.0.53", 53))
        u.send({query!r})
        """
    )
    con = s.one("connect", port=53)
    assert (con["addr"], con["proto"], con["ret"]) == ("127.0.0.53", "udp", 0)
    ev = s.one("sendto", fd=con["fd"])
    assert ev["dns_name"] == DNS_NAME
    assert ev["dns_query"] == query
    assert (ev["len"], ev["ret"], ev["proto"]) == (len(query), len(query), "udp")


def test_dns_over_tcp_to_port_53_is_decoded_past_the_length_prefix(stream: Stream) -> None:
    query = dns_query(DNS_NAME, qid=0x5353)
    framed = struct.pack("!H", len(query)) + query
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
        ls.bind(("127.0.0.77", 53))
        ls.listen(4)
        s = stream.python(
            f"""
            import socket
            c = socket.create_connection(("127.0.0.77", 53))
            c.send({framed!r})
            c.close()
            """
        )
    con = s.one("connect", port=53)
    assert (con["addr"], con["proto"], con["ret"]) == ("127.0.0.77", "tcp", 0)
    ev = s.one("sendto", fd=con["fd"])
    assert ev["proto"] == "tcp"
    assert ev["dns_query"] == framed
    assert ev["dns_name"] == DNS_NAME


def test_dns_query_from_a_child_on_an_inherited_dns_socket(stream: Stream) -> None:
    s = stream.python(
        f"""
        import os, socket
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(("127.0.0.53", 53))
        pid = os.fork()
        if pid == 0:
            u.send({dns_query(DNS_NAME)!r})
            os._exit(0)
        os.waitpid(pid, 0)
        """
    )
    child = s.one("fork", pid=s.pid)["child_pid"]
    assert s.one("sendto", pid=child)["dns_name"] == DNS_NAME


def test_an_inherited_fd_number_reconnected_elsewhere_is_not_taken_for_dns(
    stream: Stream,
) -> None:
    # The child's fd once was the parent's DNS socket; connected elsewhere, its sends must not
    # be read as DNS queries (the ancestor's entry is hidden by a tombstone).
    s = stream.python(
        f"""
        import os, socket
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(("127.0.0.53", 53))
        pid = os.fork()
        if pid == 0:
            fd = u.fileno()
            u.close()
            v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            assert v.fileno() == fd
            v.connect(("127.0.0.54", 5353))
            v.send({dns_query(DNS_NAME)!r})
            os._exit(0)
        os.waitpid(pid, 0)
        """
    )
    child = s.one("fork", pid=s.pid)["child_pid"]
    assert s.one("connect", pid=child)["port"] == 5353
    assert not s.of_type("sendto", pid=child)


def test_sendmmsg_to_port_53_is_a_sendmsg_event_with_the_query(stream: Stream) -> None:
    query = dns_query(DNS_NAME, qid=0x0707)
    s = stream.python(
        f"""
        import ctypes, socket
        class iovec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
        class msghdr(ctypes.Structure):
            _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                        ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                        ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                        ("flags", ctypes.c_int)]
        class mmsghdr(ctypes.Structure):
            _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sa = ctypes.create_string_buffer(
            socket.AF_INET.to_bytes(2, "little") + (53).to_bytes(2, "big")
            + socket.inet_aton("127.0.0.53") + bytes(8), 16)
        data = ctypes.create_string_buffer({query!r}, {len(query)})
        iov = iovec(ctypes.addressof(data), {len(query)})
        msgs = (mmsghdr * 2)()
        for m in msgs:
            m.hdr.name = ctypes.addressof(sa)
            m.hdr.namelen = 16
            m.hdr.iov = ctypes.addressof(iov)
            m.hdr.iovlen = 1
        libc = ctypes.CDLL(None, use_errno=True)
        n = libc.sendmmsg(u.fileno(), msgs, 2, 0)
        assert n == 2, (n, ctypes.get_errno())
        """
    )
    assert s.status == 0
    ev = s.one("sendmsg", port=53)
    assert (ev["family"], ev["addr"], ev["proto"]) == ("inet", "127.0.0.53", "udp")
    assert (ev["vlen"], ev["ret"]) == (2, 2)
    assert ev["dns_name"] == DNS_NAME
    assert ev["dns_query"] == query


def test_send_on_a_connected_dns_socket_names_its_destination(stream: Stream) -> None:
    s = stream.python(
        f"""
        import socket
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(("127.0.0.53", 53))
        u.send({dns_query(DNS_NAME)!r})
        """
    )
    ev = s.one("sendto", dns_name=DNS_NAME)
    assert (ev["family"], ev["addr"], ev["port"]) == ("inet", "127.0.0.53", 53)


def test_a_closed_dns_socket_does_not_mark_the_next_socket_on_its_fd(
    stream: Stream, tcp_listener: socket.socket
) -> None:
    port = tcp_listener.getsockname()[1]
    s = stream.python(
        f"""
        import socket
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(("127.0.0.53", 53))
        fd = u.fileno()
        u.close()
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        assert c.fileno() == fd
        c.connect(("127.0.0.1", {port}))
        c.send(b"GET /secret HTTP/1.0\\r\\n\\r\\n")
        c.close()
        """
    )
    assert s.status == 0
    assert s.one("connect", port=port)["proto"] == "tcp"
    # A send on a connected TCP socket to a port other than 53: filtered, like any other.
    assert s.of_type("sendto") == []


# -- TCP Fast Open --------------------------------------------------------------------------


def test_tcp_fast_open_sendto_is_reported_with_its_flag(stream: Stream) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
        ls.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN, 5)
        ls.bind(("127.0.0.1", 0))
        ls.listen(4)
        port = ls.getsockname()[1]
        s = stream.python(
            f"""
            import socket
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                c.sendto(b"fastopen!", {MSG_FASTOPEN}, ("127.0.0.1", {port}))
            except OSError:
                pass  # TFO may be off: the attempt is what matters
            """
        )
    ev = s.one("sendto", port=port)
    assert (ev["family"], ev["addr"], ev["proto"]) == ("inet", "127.0.0.1", "tcp")
    assert ev["msg_flags"] & MSG_FASTOPEN
    assert ev["len"] == 9


# -- socket, bind, listen -------------------------------------------------------------------


def test_raw_icmp_socket_creation(stream: Stream) -> None:
    s = stream.python(
        """
        import socket
        r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        print(r.fileno())
        """
    )
    ev = s.one("socket", family="inet")
    assert ev["sock_type"] & 0xF == socket.SOCK_RAW
    assert (ev["protocol"], ev["proto"]) == (socket.IPPROTO_ICMP, "raw")
    assert ev["ret"] >= 3


def test_raw_socket_type_is_the_sock_type_without_flags(stream: Stream) -> None:
    s = stream.python(
        """
        import socket
        r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        """
    )
    assert s.one("socket", family="inet")["sock_type"] == socket.SOCK_RAW


def test_packet_socket_creation(stream: Stream) -> None:
    s = stream.python(
        """
        import socket
        p = socket.socket(17, socket.SOCK_RAW, socket.htons(3))
        """
    )
    ev = s.one("socket", family="packet")
    assert ev["sock_type"] & 0xF == socket.SOCK_RAW
    assert ev["protocol"] == socket.htons(3)
    assert ev["proto"] == "raw"
    assert ev["ret"] >= 3


def test_netlink_socket_creation(stream: Stream) -> None:
    s = stream.python(
        """
        import socket
        n = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
        """
    )
    ev = s.one("socket", family="netlink")
    assert ev["sock_type"] & 0xF == socket.SOCK_DGRAM
    assert ev["protocol"] == 0
    assert ev["ret"] >= 3


def test_plain_tcp_and_udp_sockets_emit_no_socket_event(stream: Stream) -> None:
    s = stream.python(
        """
        import socket
        a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        """
    )
    assert s.status == 0
    assert s.of_type("socket") == []


def test_bind_and_listen(stream: Stream) -> None:
    s = stream.python(
        """
        import socket
        l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        l.bind(("127.0.0.1", 0))
        l.listen(7)
        """
    )
    b = s.one("bind")
    assert (b["family"], b["addr"], b["port"], b["proto"], b["ret"]) == (
        "inet",
        "127.0.0.1",
        0,
        "tcp",
        0,
    )
    ls = s.one("listen")
    assert (ls["fd"], ls["backlog"], ls["proto"], ls["ret"]) == (b["fd"], 7, "tcp", 0)


def test_listen_carries_the_address_of_the_bind_it_follows(stream: Stream) -> None:
    port = free_port()
    s = stream.python(
        f"""
        import socket
        l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        l.bind(("127.0.0.1", {port}))
        l.listen(7)
        """
    )
    ls = s.one("listen")
    assert (ls.get("family"), ls.get("addr"), ls.get("port")) == ("inet", "127.0.0.1", port)
