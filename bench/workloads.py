"""The workloads the benchmarks share: loadgen (bench/loadgen.c) and realistic work.

The realistic workloads (a git session, a parallel C build, a pytest run) are generated in a
work directory by ``prepare_workloads`` and run by ``run_workload`` (timed) or through
``command`` (the command line, for a runner of its own: bench/peers.py gates each one so it
can be put in a session before it starts). bench/run.py measures roguewatch against itself
on them, bench/peers.py roguewatch beside auditd and bpftrace.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
LOADGEN = OUT / "loadgen"


def build_loadgen() -> None:
    OUT.mkdir(exist_ok=True)
    src = BENCH / "loadgen.c"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(LOADGEN), str(src)], check=True, cwd=ROOT
    )


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's waited-for children so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


C_FILE = """\
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
struct item_{i} {{ int id; double weight; char name[32]; struct item_{i} *next; }};
static int cmp_{i}(const void *a, const void *b) {{
    const struct item_{i} *x = a, *y = b;
    return (x->weight > y->weight) - (x->weight < y->weight);
}}
double work_{i}(int n) {{
    struct item_{i} *v = calloc(n, sizeof(*v));
    double s = 0;
    for (int k = 0; k < n; k++) {{
        v[k].id = k; v[k].weight = (k * 7919 % 1000) / 3.0;
        snprintf(v[k].name, sizeof(v[k].name), "item-%d-%d", {i}, k);
    }}
    qsort(v, n, sizeof(*v), cmp_{i});
    for (int k = 0; k < n; k++) s += v[k].weight * (double)strlen(v[k].name);
    free(v);
    return s;
}}
"""

PY_TEST = """\
import json
import re

import pytest


@pytest.mark.parametrize("n", range(20))
def test_roundtrip_{i}(n, tmp_path):
    data = {{"n": n, "items": [str(k) * 3 for k in range(n * 10)]}}
    p = tmp_path / "d.json"
    p.write_text(json.dumps(data))
    assert json.loads(p.read_text()) == data


@pytest.mark.parametrize("word", ["alpha", "beta", "gamma", "delta"])
def test_regex_{i}(word):
    assert re.fullmatch(r"[a-z]+", word * {i_plus})


def test_sum_{i}():
    assert sum(range(10_000)) == 49_995_000
"""

GIT_SCRIPT = r"""
set -e
cd "$1"
git init -q repo
cd repo
for i in $(seq 1 300); do
    d=dir$((i % 10)); mkdir -p $d
    printf 'file %d\nline two\nline three %d\n' $i $((i * 7)) > $d/f$i.txt
done
git add -A
git commit -qm "three hundred files"
for i in $(seq 1 300 3); do echo change >> dir$((i % 10))/f$i.txt; done
git commit -qam "a change"
git checkout -qb topic
for i in $(seq 1 50); do echo topic >> dir$((i % 10))/f$i.txt; done
git commit -qam "topic"
git checkout -q -
for k in 1 2 3 4 5; do
    git status --short > /dev/null
    git log --oneline --stat > /dev/null
    git diff HEAD~1 --stat > /dev/null
done
git gc -q
"""


# bench/peers.py's git: a repository grown by 20 commits of 200 new files each.
GIT_COMMITS_SCRIPT = r"""
set -e
cd "$1"
git init -q repo
cd repo
for c in $(seq 1 20); do
    mkdir d$c
    for i in $(seq 1 200); do
        printf 'commit %d, file %d\nline two\nline three %d\n' $c $i $((c * i)) > d$c/f$i.txt
    done
    git add -A
    git commit -qm "commit $c: 200 files"
done
git log --oneline > /dev/null
"""


def prepare_workloads(work: Path, pytest_files: int = 15) -> dict:
    """The workloads' sources in `work`; pytest_files modules of 25 tests each."""
    cdir = work / "cbuild"
    cdir.mkdir(parents=True)
    for i in range(50):
        (cdir / f"m{i}.c").write_text(C_FILE.format(i=i))
    objs = " ".join(f"m{i}.o" for i in range(50))
    (cdir / "main.c").write_text(
        "double work_0(int);\nint main(void) { return work_0(100) < 0; }\n"
    )
    (cdir / "Makefile").write_text(
        f"CFLAGS = -O2 -Wall\nprog: main.o {objs}\n\t$(CC) -o $@ $^\n"
        "%.o: %.c\n\t$(CC) $(CFLAGS) -c -o $@ $<\nclean:\n\trm -f *.o prog\n"
    )
    pdir = work / "pytests"
    pdir.mkdir()
    for i in range(pytest_files):
        (pdir / f"test_gen_{i}.py").write_text(PY_TEST.format(i=i, i_plus=i + 1))
    (work / "git.sh").write_text(GIT_SCRIPT)
    (work / "git-commits.sh").write_text(GIT_COMMITS_SCRIPT)
    env = dict(os.environ)
    env.update(
        HOME=str(work),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="bench",
        GIT_AUTHOR_EMAIL="bench@example.invalid",
        GIT_COMMITTER_NAME="bench",
        GIT_COMMITTER_EMAIL="bench@example.invalid",
    )
    return {"cdir": cdir, "pdir": pdir, "env": env}


def command(name: str, work: Path, w: dict) -> tuple[list[str], Path]:
    """The command line of one run of a realistic workload and its directory, made ready to
    run (the previous run's output removed)."""
    if name in ("git", "git-commits"):
        gdir = work / "gitrun"
        shutil.rmtree(gdir, ignore_errors=True)
        gdir.mkdir()
        return ["bash", str(work / f"{name}.sh"), str(gdir)], work
    if name == "c-build":
        subprocess.run(["make", "-s", "clean"], cwd=w["cdir"], check=True, env=w["env"])
        return ["make", "-s", "-j2"], w["cdir"]
    if name == "pytest":
        cmd = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(w["pdir"])]
        return [*cmd, "-o", "addopts=", str(w["pdir"])], w["pdir"]
    raise ValueError(f"no workload {name!r}")


def run_workload(name: str, work: Path, w: dict, wrap: list[str] | None = None) -> float:
    """One timed run (wall seconds); its CPU time goes to LAST_CPU[name]."""
    cmd, cwd = command(name, work, w)
    cmd = [*(wrap or []), *cmd]
    c0 = children_cpu()
    t0 = time.monotonic()
    p = subprocess.run(
        cmd, cwd=cwd, env=w["env"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    t = time.monotonic() - t0
    LAST_CPU[name] = children_cpu() - c0
    if p.returncode != 0:
        raise RuntimeError(f"workload {name} failed: {p.stderr.decode()[-1000:]}")
    return t


# The CPU time (user + system, the workload and all its children) of each workload's last
# run: the probes' cost is CPU spent in the workload's own syscalls, and CPU time does not
# move when other work on the machine delays the workload, as wall time does.
LAST_CPU: dict[str, float] = {}


REAL = ("git", "c-build", "pytest")
