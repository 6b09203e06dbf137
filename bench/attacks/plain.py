"""The unwatched launcher of ``--baseline``: what `roguewatch run` does for an agent minus
the watching. It runs CMD (as ``--user`` when given), forwards SIGINT/SIGTERM to it as run
does, waits for it and exits with its status. Processes the agent leaves behind stay (that
is what the baseline measures).

plain.py [--user NAME] -- CMD [ARG...]
"""

from __future__ import annotations

import os
import pwd
import signal
import sys


def main() -> int:
    args = sys.argv[1:]
    user = None
    if args[:1] == ["--user"]:
        user, args = pwd.getpwnam(args[1]), args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    pid = os.fork()
    if pid == 0:
        if user is not None:
            os.initgroups(user.pw_name, user.pw_gid)
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            os.environ.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        try:
            os.execvp(args[0], args)
        finally:
            os._exit(127)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _f: os.kill(pid, s))
    while True:
        try:
            _, st = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st)


if __name__ == "__main__":
    sys.exit(main())
