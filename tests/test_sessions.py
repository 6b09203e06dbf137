"""The launcher's side of its components: their stderr never fills up and blocks them."""

from __future__ import annotations

import subprocess
import sys

from roguewatch.runtime import components


def test_a_component_that_logs_a_lot_after_start_is_never_blocked(capfd) -> None:
    # 1 MiB of log lines through a pipe of 64 KiB: without a reader the writer would block
    # for good (a private collector or evaluator that an agent made log would stop).
    code = (
        "import sys\n"
        "for i in range(16384): sys.stderr.write('x' * 63 + '\\n')\n"
        "sys.stderr.flush(); print('done', flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    components.forward_stderr(proc, "component")
    assert proc.wait(timeout=30) == 0  # it could exit: its stderr was drained
    assert proc.stdout is not None and proc.stdout.read() == b"done\n"
    assert "roguewatch component: " + "x" * 63 in capfd.readouterr().err
