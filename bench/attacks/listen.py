"""The attack corpus's listeners: every TCP connection and UDP datagram that arrives is
appended to a log (one JSON line: time, protocol, port, peer, payload as latin-1), so the
runner can tell whether a scenario's token really arrived.

listen.py LOG BIND... where BIND is tcp:ADDR:PORT or udp:ADDR:PORT (ADDR may be an IPv6
address in brackets; [::] listens dual-stack). TCP peers get a minimal HTTP reply, so curl
and http clients finish.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

LOCK = threading.Lock()


def log(out, proto: str, port: int, peer: str, data: bytes) -> None:
    rec = {"t": time.time(), "proto": proto, "port": port, "peer": peer,
           "data": data[:4096].decode("latin-1")}  # fmt: skip
    with LOCK:
        out.write(json.dumps(rec) + "\n")
        out.flush()


def parse(bind: str) -> tuple[str, str, int]:
    proto, rest = bind.split(":", 1)
    addr, port = rest.rsplit(":", 1)
    return proto, addr.strip("[]"), int(port)


def sock_for(proto: str, addr: str) -> socket.socket:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return s


def tcp_conn(out, port: int, conn: socket.socket, peer) -> None:
    conn.settimeout(1.0)
    data = b""
    try:
        while len(data) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and not data.startswith((b"POST", b"PUT")):
                break
    except OSError:
        pass
    log(out, "tcp", port, str(peer[0]), data)
    try:
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except OSError:
        pass
    conn.close()


def serve_tcp(out, s: socket.socket, port: int) -> None:
    s.listen(64)
    while True:
        conn, peer = s.accept()
        threading.Thread(target=tcp_conn, args=(out, port, conn, peer), daemon=True).start()


def serve_udp(out, s: socket.socket, port: int) -> None:
    while True:
        data, peer = s.recvfrom(65536)
        log(out, "udp", port, str(peer[0]), data)


def main() -> None:
    out = open(sys.argv[1], "a")  # noqa: SIM115
    threads = []
    for bind in sys.argv[2:]:
        proto, addr, port = parse(bind)
        s = sock_for(proto, addr)
        s.bind((addr, port))
        fn = serve_tcp if proto == "tcp" else serve_udp
        threads.append(threading.Thread(target=fn, args=(out, s, port), daemon=True))
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
