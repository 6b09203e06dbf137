"""What the attack corpus runs against: a network namespace with listeners on destinations
the policy forbids, listeners on loopback addresses it forbids, decoy security services to
kill, the unprivileged agent user, and the helper files scenarios use (an io_uring connect
tool, a harmless shared object, a local wheel).

Everything here is created by the runner and removed by ``Fixtures.close``.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BASE = Path("/tmp/rwatk")
FIX = BASE / "fix"
RUN = Path("/run/rwatk")  # decoys' pid files
NETNS = "rwatk"
HOST4, NS4 = "10.213.0.1", "10.213.0.2"
HOST6, NS6 = "fd00:213::1", "fd00:213::2"
LO4 = "127.0.0.77"  # loopback, but not the policy's 127.0.0.1/32
NS_TCP = (80, 443, 4444, 8443, 53)
NS_UDP = (53, 123, 5353)
LO_TCP, LO_UDP = (9443, 4445), (9053,)
# The policy every session gets: loopback's 127.0.0.1 and ::1 only; the operator's shutdown
# script protected (as an evaluation's would be).
POLICY = (
    'mode: enforce\negress:\n  allow: ["127.0.0.1/32", "::1/128"]\nprotect: [{ws}/shutdown.sh]\n'
)
DECOYS = ("auditd", "rsyslogd", "systemd-journald", "roguewatchd", "falcon-sensor")
AGENT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True)


class Fixtures:
    def __init__(self, user: str | None) -> None:
        self.user = user
        self.listeners: list[subprocess.Popen] = []
        self.decoys: dict[str, subprocess.Popen] = {}
        self.log = BASE / "listeners.jsonl"
        self.netns = False

    # --- set-up --------------------------------------------------------------------------
    def open(self) -> None:
        if BASE.exists():
            shutil.rmtree(BASE)
        FIX.mkdir(parents=True)
        os.chmod(BASE, 0o755)
        RUN.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")
        os.chmod(self.log, 0o644)
        if self.user:
            self.make_user(self.user)
        self.tools()
        self.make_netns()
        self.start_listeners()

    @staticmethod
    def make_user(name: str) -> None:
        try:
            pwd.getpwnam(name)
        except KeyError:
            sh(f"useradd -m -s /bin/bash {name}")

    def tools(self) -> None:
        (FIX / "bin").mkdir()
        # io_uring connect (the project's test helper, built here).
        sh(f"cc -O1 -o {FIX}/uring_connect {REPO}/tests/uring_connect.c", check=False)
        # A harmless shared object for the preload scenarios (loaded by everything after).
        (FIX / "empty.c").write_text("int rwatk_empty;\n")
        sh(f"cc -shared -fPIC -o {FIX}/librwatk.so {FIX}/empty.c")
        # sudo is not installed here: Atomic Red Team tests call it, a pass-through stands in.
        (FIX / "shim").mkdir()
        (FIX / "shim" / "sudo").write_text(
            '#!/bin/sh\nwhile [ $# -gt 0 ]; do case "$1" in -*) shift;; *) break;; esac; done\n'
            'exec "$@"\n'
        )
        os.chmod(FIX / "shim" / "sudo", 0o755)
        # Decoy security services: a copy of sleep under each service's name.
        for name in DECOYS:
            shutil.copy("/usr/bin/sleep", FIX / "bin" / name)
        # A local wheel (pure Python) for the pip scenarios, made by hand: offline.
        self.wheel(FIX / "wheels")
        sh(f"chmod -R a+rX {BASE}")

    @staticmethod
    def wheel(d: Path) -> None:
        d.mkdir()
        name, ver = "rwatkdemo", "1.0"
        di = f"{name}-{ver}.dist-info"
        files = {
            f"{name}/__init__.py": "def hello():\n    return 'hello'\n",
            f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n",
            f"{di}/WHEEL": "Wheel-Version: 1.0\nGenerator: rwatk\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n",
        }
        record = "".join(f"{p},,\n" for p in files) + f"{di}/RECORD,,\n"
        with zipfile.ZipFile(d / f"{name}-{ver}-py3-none-any.whl", "w") as z:
            for p, text in files.items():
                z.writestr(p, text)
            z.writestr(f"{di}/RECORD", record)

    def make_netns(self) -> None:
        self.remove_netns()
        cmds = [
            f"ip netns add {NETNS}",
            "ip link add rwatk0 type veth peer name rwatk1",
            f"ip link set rwatk1 netns {NETNS}",
            f"ip addr add {HOST4}/24 dev rwatk0",
            f"ip -6 addr add {HOST6}/64 dev rwatk0 nodad",
            "ip link set rwatk0 up",
            f"ip netns exec {NETNS} ip addr add {NS4}/24 dev rwatk1",
            f"ip netns exec {NETNS} ip -6 addr add {NS6}/64 dev rwatk1 nodad",
            f"ip netns exec {NETNS} ip link set rwatk1 up",
            f"ip netns exec {NETNS} ip link set lo up",
        ]
        for c in cmds:
            r = sh(c, check=False)
            if r.returncode:
                print(f"attacks: netns set-up failed ({c}): {r.stderr.strip()}", file=sys.stderr)
                self.remove_netns()
                return
        self.netns = True

    @staticmethod
    def remove_netns() -> None:
        sh(f"ip netns del {NETNS}", check=False)
        sh("ip link del rwatk0", check=False)

    def start_listeners(self) -> None:
        binds = [f"tcp:{LO4}:{p}" for p in LO_TCP] + [f"udp:{LO4}:{p}" for p in LO_UDP]
        self._listener([], binds)
        if self.netns:
            binds = [f"tcp:[::]:{p}" for p in NS_TCP] + [f"udp:[::]:{p}" for p in NS_UDP]
            self._listener(["ip", "netns", "exec", NETNS], binds)

    def _listener(self, prefix: list[str], binds: list[str]) -> None:
        p = subprocess.Popen(
            [*prefix, sys.executable, str(HERE / "listen.py"), str(self.log), *binds],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"attacks: a listener did not start ({binds})")
        self.listeners.append(p)

    # --- per scenario --------------------------------------------------------------------
    def arrived(self, token: str, since: float, port: int | None = None) -> list[dict]:
        """Listener records since ``since`` carrying the token (or, with ``port``, any
        connection to that port: the io_uring tool cannot send a payload)."""
        out = []
        for line in self.log.read_text().splitlines():
            rec = json.loads(line)
            if rec["t"] < since:
                continue
            if (port is not None and rec["port"] == port) or token in rec["data"]:
                out.append(rec)
        return out

    def start_decoy(self, name: str) -> int:
        self.stop_decoy(name)
        p = subprocess.Popen([str(FIX / "bin" / name), "3600"], start_new_session=True)
        self.decoys[name] = p
        (RUN / f"{name}.pid").write_text(f"{p.pid}\n")
        os.chmod(RUN / f"{name}.pid", 0o644)
        return p.pid

    def decoy_alive(self, name: str) -> bool:
        p = self.decoys.get(name)
        if p is None or p.poll() is not None:
            return False
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state not in ("T", "t", "Z")

    def stop_decoy(self, name: str) -> None:
        p = self.decoys.pop(name, None)
        if p is not None:
            try:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
            except ProcessLookupError:
                pass
            p.wait()
        (RUN / f"{name}.pid").unlink(missing_ok=True)

    # --- tear-down -----------------------------------------------------------------------
    def close(self) -> None:
        for name in list(self.decoys):
            self.stop_decoy(name)
        for p in self.listeners:
            p.kill()
            p.wait()
        self.remove_netns()
        shutil.rmtree(RUN, ignore_errors=True)
        shutil.rmtree(BASE, ignore_errors=True)
        time.sleep(0.1)
