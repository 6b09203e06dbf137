"""The attack corpus's snapshot and restore (bench/attacks/snapshot.py): whatever a scenario
did to a snapshotted tree (new files and directories, edits that keep size and mtime, deletes,
mode and owner changes, a file turned into a symlink, a timestomp, an immutable file), the
restore puts back exactly what was there, and says what it put back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "attacks"))

import snapshot


def tree(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            body = (os.readlink(p) if os.path.islink(p)
                    else Path(p).read_bytes() if os.path.isfile(p) else b"")  # fmt: skip
            out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, body)
    return out


def test_restore_puts_every_kind_of_change_back(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "cron.d").mkdir(parents=True)
    (etc / "cron.d" / "job").write_text("* * * * * root true\n")
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/bash\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    (etc / "keep").write_text("same size\n")
    os.utime(etc / "keep", ns=(10**18, 10**18))
    shallow = tmp_path / "site"
    (shallow / "deep").mkdir(parents=True)
    (shallow / "deep" / "ignored").write_text("below a shallow tree\n")
    before = tree(etc)
    snap = snapshot.Snapshot(
        tmp_path / "store", [], trees=[(str(etc), True), (str(shallow), False)]
    )
    snap.take()

    (etc / "cron.d" / "evil").write_text("@reboot root sh\n")
    (etc / "new.d").mkdir()
    (etc / "new.d" / "x").write_text("x")
    with open(etc / "passwd", "a") as f:
        f.write("evil:x:0:0::/:/bin/sh\n")
    (etc / "hosts").unlink()
    os.chmod(etc / "cron.d" / "job", 0o777)
    os.chown(etc / "cron.d" / "job", 65534, 65534)
    st = os.stat(etc / "keep")
    (etc / "keep").write_text("SAME SIZE\n")  # same size, mtime put back: only ctime tells
    os.utime(etc / "keep", ns=(st.st_atime_ns, st.st_mtime_ns))
    (etc / "passwd").rename(etc / "passwd.bak")
    (etc / "passwd").symlink_to("/tmp/elsewhere")
    os.utime(etc / "cron.d", ns=(0, 0))  # a timestomped directory
    subprocess.run(["chattr", "+i", str(etc / "cron.d" / "evil")], check=False)
    (shallow / "zz.pth").write_text("import os\n")

    done = snap.restore()
    assert tree(etc) == before
    assert not (shallow / "zz.pth").exists()
    assert (shallow / "deep" / "ignored").exists()
    assert f"+{etc}/cron.d/evil" in done and f"-{etc}/hosts" in done
    assert f"~{etc}/keep" in done and f"~{etc}/passwd" in done
    assert not [x for x in done if x.startswith("!left")]
    assert snap.restore() == []  # nothing left to put back
    snap.close()
