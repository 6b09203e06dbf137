"""A real NATS server with JetStream for the fleet tests: ``nats-server`` (Debian's package)
on a free loopback port, its store in the test's temporary directory, its configuration
(permissions, TLS) given by the test. Stopping and starting it again keeps the store."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import require


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    def __init__(self, tmp: Path, extra: str = "", scheme: str = "nats") -> None:
        require(shutil.which("nats-server"), "nats-server is not installed (apt: nats-server)")
        self.dir = tmp / f"nats-{id(self):x}"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.extra = extra
        self.scheme = scheme
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        conf = self.dir / "server.conf"
        conf.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f'jetstream {{ store_dir: "{self.dir / "js"}", max_memory_store: 64MB, '
            f"max_file_store: 2GB }}\n{self.extra}\n"
        )
        self.log = open(self.dir / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(["nats-server", "-c", str(conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.dir / "server.log").read_text()[-2000:]
            if b"Server is ready" in (self.dir / "server.log").read_bytes():
                return self
            time.sleep(0.05)
        raise AssertionError("nats-server did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.proc = None
        # "Server is ready" must come from the next start, not this one.
        log = self.dir / "server.log"
        log.rename(self.dir / f"server.{time.monotonic_ns()}.log")
