"""BPF time per call of each probe during a tracked loadgen storm (kernel bpf_stats).

Usage: bpf_cost.py [--cache-dir DIR] STORM ITERS   (STORM: open, connect, forkexec; loadgen
must have been built by run.py). Loads the probes in this process, puts the storm in a
session, and prints each program's ns per run over the storm, from the kernel's own
accounting (``kernel.bpf_stats_enabled``, on only while the storm runs). Nothing drains the
ring: keep ITERS small enough for it (20,000 write-opens fit in 8 MiB) or the shedding path
is what gets measured. Wall-clock noise of a shared host does not enter these figures.

``--budget RATE``: the sessions' budgets on (RATE records a second, burst RATE; roguewatch.h,
"Budgets per session"); off by default here, as the loader leaves them until the collector
sets them. A RATE above the storm's keeps every record within budget: the bucket's own cost.
STORM ``create`` (distinct paths, none folded) writes in a fresh directory.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import shutil
import struct
import subprocess
from pathlib import Path

from roguewatch.core import procfs
from roguewatch.sensors import bpf

LOADGEN = Path(__file__).resolve().parent / "out" / "loadgen"
STATS = "/proc/sys/kernel/bpf_stats_enabled"
RUN_TIME_OFF = 192  # struct bpf_prog_info: run_time_ns, run_cnt
# The programs each storm's calls run (the probes see the rest of the host too)
STORM_PROGS = {
    "open": ("openat", "close"),
    "create": ("openat", "write", "close"),
    "connect": ("socket", "connect", "close"),
    "forkexec": ("clone", "fork", "exec", "exit", "wait"),
}


def run_stats(fd: int) -> tuple[int, int]:
    buf = ct.create_string_buffer(512)
    attr = bpf._InfoAttr(fd, len(buf), ct.addressof(buf))
    if bpf._libc.syscall(bpf.SYS_BPF, bpf.BPF_OBJ_GET_INFO_BY_FD, ct.byref(attr),
                         ct.sizeof(attr)) != 0:  # fmt: skip
        raise OSError(ct.get_errno(), "BPF_OBJ_GET_INFO_BY_FD")
    return struct.unpack_from("<QQ", buf.raw, RUN_TIME_OFF)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("storm")
    ap.add_argument("iters", type=int)
    ap.add_argument("--cache-dir", default=bpf.CACHE_DIR)
    ap.add_argument("--budget", type=int, default=0, metavar="RATE")
    args = ap.parse_args()
    target = Path("/dev/shm/rw-bpf-cost")
    if args.storm == "create":
        shutil.rmtree(target, ignore_errors=True)
        target.unlink(missing_ok=True)
        target.mkdir()
    probes = bpf.load(bpf.BuildOptions(), cache_dir=args.cache_dir)
    if "budget_conf" in probes.map_fds:  # (an image from before budgets has none)
        probes.set_budget(args.budget, args.budget)
    try:
        gen = subprocess.Popen(
            [str(LOADGEN), "-w", "storm", args.storm, str(args.iters), str(target)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        probes.register(gen.pid, 0xB0C057, procfs.start_ns(gen.pid) or 0)
        Path(STATS).write_text("1")
        try:
            before = {a.event: run_stats(a.prog_fd) for a in probes.attached}
            gen.stdin.write(b"g")
            gen.stdin.close()
            out = json.loads(gen.stdout.read())
            gen.wait()
            after = {a.event: run_stats(a.prog_fd) for a in probes.attached}
        finally:
            Path(STATS).write_text("0")
        total = 0
        for event, (t1, c1) in sorted(after.items()):
            dt, dc = t1 - before[event][0], c1 - before[event][1]
            if dc and any(w in event for w in STORM_PROGS[args.storm]):
                print(f"  {event:<28} {dt / dc:7.0f} ns x {dc}")
                total += dt
        print(f"{args.storm}: BPF {total / args.iters:.0f} ns per iteration of "
              f"{out['elapsed_s'] / args.iters * 1e9:.0f} ns; lost {sum(probes.lost_by_type())}, "
              f"folded {probes.folded()}, over budget {probes.budget_dropped()}")  # fmt: skip
    finally:
        probes.close()
        if args.storm == "create":
            shutil.rmtree(target, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
