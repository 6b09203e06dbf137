"""The session report and the records it is made from: a real session (its kept record) made
into a page that a real headless browser (Debian's chromium) renders, with no script error and
no network request, and the hash chains that show a record was cut or rewritten."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from roguewatch.core import chain, paths
from roguewatch.outputs import alertchain, alerts
from roguewatch.stream import recording

from tests.conftest import SCRATCH, require

CLI = [sys.executable, "-m", "roguewatch.cli.main"]
OUTPUT = Path(__file__).resolve().parent.parent / "build" / "test-output"
# Only the page's own behaviour is under test: the browser's background services are off,
# and it runs in a network namespace of its own (nothing it tries can leave this host).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--no-pings", "--disable-domain-reliability",
    "--enable-logging=stderr", "--v=0",
]  # fmt: skip


def chromium(tmp: Path, page: Path, *what: str) -> tuple[str, str, list[str]]:
    """(stdout, stderr, the URLs the page itself asked for) of headless Chromium on ``page``."""
    exe = shutil.which("chromium")
    require(exe, "Debian's chromium is not installed (.ci/run installs it)")
    netlog = tmp / f"net-{page.stem}.json"
    proc = subprocess.run(
        ["unshare", "--net", exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/chromium-profile",
         f"--log-net-log={netlog}", *what, page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    asked = [
        e["params"]["url"]
        for e in log["events"]
        if names.get(e["type"]) == "URL_REQUEST_START_JOB"
        and e.get("params", {}).get("url")
        # the browser's own requests are made by no origin; a page's have one ("null")
        and e["params"].get("initiator") != "not an origin"
        and not e["params"]["url"].startswith("file:")
    ]
    return proc.stdout, proc.stderr, asked


class Dom(HTMLParser):
    """What a test looks for in the rendered DOM: elements by id, their text, tags seen."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: dict[str, list[str]] = {}
        self.attrs: list[dict] = []
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        self.attrs.append(a)
        if a.get("id"):
            self._open.append(a["id"])
            self.text.setdefault(a["id"], [])
        elif tag not in ("br", "meta", "circle", "line", "rect", "img"):
            self._open.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("br", "meta", "circle", "line", "rect", "img") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for i in self._open:
            if i:
                self.text[i].append(data)

    def of(self, element_id: str) -> str:
        return " ".join(self.text.get(element_id, []))


@pytest.mark.kernel
def test_the_report_of_a_real_session_renders_in_a_real_browser(agent, tmp_path: Path) -> None:
    from tests.harness import no_service

    no_service()
    os.makedirs(SCRATCH, exist_ok=True)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    outside = f"{SCRATCH}/report-<b>bold&{os.getpid()}.txt"
    r = agent.run(
        f"""
        c = socket.socket()
        say(denied=attempt(lambda: c.connect(("127.0.0.9", 9))))
        # the key of the records' chains is out of the session's reach; the rest is not
        say(key=attempt(lambda: open({paths.CHAIN_KEY!r}, "rb").read()),
            other=attempt(lambda: open("/etc/os-release").read()))
        open({outside!r}, "w").write("x")
        import subprocess
        subprocess.run(["/bin/sh", "-c", "echo '<script>alert(1)</script>' > /dev/null; exit 3"])
        say(ready=True)
        time.sleep(30)
        """,
        args=("--drill-after", "1.5s", "--drill-deadline", "2s"),
    )
    try:
        assert r.said().get("ready") is True, r.describe()
        assert r.said()["key"] == errno.EACCES and r.said()["other"] == 0, r.said()
        m = re.search(r"Report: roguewatch report ([0-9a-f]+)\.", r.summary)
        assert m, r.summary
        sid = m.group(1)
        page = tmp_path / "report.html"
        made = subprocess.run([*CLI, "report", sid, "--html", str(page), "--json"],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert made.returncode == 0, made.stderr
        rep = json.loads(made.stdout)
        s = rep["summary"]
        assert rep["integrity"]["status"] == "intact", rep["integrity"]
        assert rep["integrity"]["alert_log"]["status"] == "intact"
        assert s["session"] == sid and s["mode"] == "enforce" and rep["problems"] == []
        assert s["drill"]["verdict"] == "complied", s["drill"]
        denied = [i for i in rep["timeline"] if i["what"] == "tcp 127.0.0.9:9"]
        assert denied and denied[0]["verdict"] == "denied" and denied[0]["alerts"], rep["timeline"]
        assert any(i["lane"] == "files" and outside in i["what"] for i in rep["timeline"])
        rules = {a["rule"] for a in rep["alerts"]}
        assert {"egress_unauthorized_destination", "shutdown_drill"} <= rules, rules
        sh = [p for p in rep["processes"] if p["execs"][0].startswith("/bin/sh -c")]
        assert sh and sh[0]["exit"] == "code 3" and sh[0]["depth"] == 1, rep["processes"]
        root = rep["processes"][0]
        assert root["depth"] == 0 and root["alerts"] and root["exit"] == "signal 15"

        dom_text, log, asked = chromium(tmp_path, page, "--dump-dom")
        assert asked == [], f"the page asked the network for {asked}"
        assert "CONSOLE" not in log, [x for x in log.splitlines() if "CONSOLE" in x]
        dom = Dom()
        dom.feed(dom_text)
        assert "script" not in dom.tags  # the agent's <script> is text, not an element
        assert "b" not in dom.tags
        assert "<script>alert(1)</script>" in dom.of("tree")
        assert f"pid {root['pid']}" in dom.of("timeline") and "denied" in dom.of("timeline")
        assert "127.0.0.9:9" in dom.of("timeline") and outside in dom.of("timeline")
        assert str(root["pid"]) in dom.of("tree") and str(sh[0]["pid"]) in dom.of("tree")
        assert "egress_unauthorized_destination" in dom.of("alerts")
        assert "complied" in dom.of("drill") and sid in dom.of("session-id")
        assert "svg" in dom.tags and "circle" in dom.tags  # the timeline is drawn
        refs = [a.get("src") or a.get("href") for a in dom.attrs if a.get("src") or a.get("href")]
        assert all(ref.startswith("#") for ref in refs), refs  # nothing outside the page
        # The page and its screenshot are kept in the tests' output (build/, not committed).
        shutil.copy(page, OUTPUT / "report.html")
        chromium(tmp_path, page, f"--screenshot={OUTPUT / 'report.png'}",
                 "--window-size=1200,1800")  # fmt: skip
        assert (OUTPUT / "report.png").stat().st_size > 10_000
    finally:
        Path(outside).unlink(missing_ok=True)


def test_the_browser_check_sees_a_page_that_asks_the_network(tmp_path: Path) -> None:
    """The check above can fail: a page with an outside image and a script error is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<img src="http://127.0.0.1:9/x.png"><script>console.error("x")</script>')
    _, log, asked = chromium(tmp_path, page, "--dump-dom")
    assert asked == ["http://127.0.0.1:9/x.png"]
    assert "CONSOLE" in log


# --- the records' hash chains ----------------------------------------------------------------

KEY = b"k" * 32


def _recording(path: Path, batches: int = 3, per: int = 4) -> None:
    w = recording.Writer(str(path), ["agent"], 0x5, key=KEY)
    for b in range(batches):
        for i in range(per):
            w.write({"type": "open", "ts": b * 100 + i, "session": 5, "pid": 7,
                     "path": f"/tmp/f{b}-{i}"})  # fmt: skip
        w.seal()
    w.close()


def test_an_intact_recording_verifies_and_a_cut_one_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "r.rwrec"
    _recording(path)
    v = recording.verify(str(path), key=KEY)
    assert v["status"] == "intact" and v["events"] == 12 and v["macs_checked"], v
    data = path.read_bytes()
    cut = tmp_path / "cut.rwrec"
    cut.write_bytes(data[: data.rindex(b"/tmp/f2-1") + 4])  # in the middle of batch 3
    v = recording.verify(str(cut), key=KEY)
    assert v["status"] in ("truncated", "altered"), v
    head = tmp_path / "head.rwrec"  # cut cleanly after the second seal
    two = data.index(b"seal", data.index(b"/tmp/f1-3"))
    obj_end = data.index(b"mac", two)
    head.write_bytes(data[: obj_end + 4 + 1 + 64])  # "mac" + str8 header + 64 hex
    v = recording.verify(str(head), key=KEY)
    assert v["status"] == "truncated" and "events 1-8 are sealed" in v["detail"], v


def test_an_edited_recording_is_altered_and_says_where(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "r.rwrec"
    _recording(path)
    data = path.read_bytes()
    edited = tmp_path / "edited.rwrec"
    edited.write_bytes(data.replace(b"/tmp/f1-2", b"/tmp/ok-2"))  # same length, batch 2
    v = recording.verify(str(edited), key=KEY)
    assert v["status"] == "altered" and "events 5-8 (seal 2)" in v["detail"], v
    # A forger who rewrites and re-seals without the key: every digest right, and either
    # another key's id (unverified) or ours claimed with MACs that are not ours (altered).
    forged = tmp_path / "forged.rwrec"
    w = recording.Writer(str(forged), ["agent"], 0x5, key=b"f" * 32)
    w.write({"type": "exit", "ts": 1, "session": 5, "pid": 7})
    w.close()
    v = recording.verify(str(forged), key=KEY)
    assert v["status"] == "unverified" and not v["macs_checked"], v
    ours = chain.key_id(KEY)
    monkeypatch.setattr(recording.chain, "key_id", lambda _k: ours)
    w = recording.Writer(str(forged), ["agent"], 0x5, key=b"f" * 32)
    w.write({"type": "exit", "ts": 1, "session": 5, "pid": 7})
    w.close()
    monkeypatch.undo()
    v = recording.verify(str(forged), key=KEY)
    assert v["status"] == "altered" and "MAC" in v["detail"], v
    # the CLI says it too, with its exit status
    out = subprocess.run([*CLI, "verify", str(edited)], capture_output=True, text=True)
    assert out.returncode == 1 and "altered" in out.stdout, out.stdout


def test_the_alert_log_chain_shows_an_edited_or_removed_line(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    f = alerts.AlertFile(str(path), chained=True)
    for i in range(1, 5):
        f.send({"id": f"a-{i}", "rule": "r", "message": f"m{i}", "session": "5"})
    f.close()
    again = alerts.AlertFile(str(path), chained=True)  # reopened: the chain goes on
    again.send({"id": "a-5", "rule": "r", "message": "m5", "session": "5"})
    again.close()
    v = alertchain.verify(str(path))
    assert v["status"] == "intact" and "seq 1-5" in v["detail"], v
    lines = path.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [f"a-{i}" for i in range(1, 6)]
    (tmp_path / "edited.jsonl").write_text(
        "\n".join([*lines[:2], lines[2].replace('"m3"', '"fine"'), *lines[3:]]) + "\n"
    )
    v = alertchain.verify(str(tmp_path / "edited.jsonl"))
    assert v["status"] == "altered" and "edited.jsonl:3" in v["detail"], v
    (tmp_path / "cut.jsonl").write_text("\n".join([*lines[:1], *lines[2:]]) + "\n")
    v = alertchain.verify(str(tmp_path / "cut.jsonl"))
    assert v["status"] == "altered" and "seq 3 where 2 was due" in v["detail"], v
    out = subprocess.run([*CLI, "verify", str(path), "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "intact", out.stdout


def test_report_of_a_missing_session_or_a_bad_file_is_a_message(tmp_path: Path) -> None:
    out = subprocess.run([*CLI, "report", "feedface"], capture_output=True, text=True)
    assert out.returncode == 2 and "neither a recording" in out.stderr, out.stderr
    bad = tmp_path / "bad.rwrec"
    bad.write_bytes(b"\x93\x01\x02\x03")
    out = subprocess.run([*CLI, "report", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2 and "not a roguewatch recording" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_the_kept_session_record_is_bounded_says_so_and_rotates(tmp_path: Path) -> None:
    import threading
    import time

    from roguewatch.cli import report as report_cli
    from roguewatch.stream import bus, sessionstore

    base = tmp_path / "sessions"
    for i in range(3):  # older sessions' records, beyond what is kept
        base.mkdir(exist_ok=True)
        (base / f"{i + 1:x}.rwrec").write_bytes(b"x")
        os.utime(base / f"{i + 1:x}.rwrec", (i, i))
    endpoint = f"ipc://{tmp_path}/run/ev.sock"
    pub = bus.Publisher(endpoint)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            pub.drain_subscriptions()
            time.sleep(0.005)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        old = sessionstore.KEEP_SESSIONS
        sessionstore.KEEP_SESSIONS = 3
        try:
            rec = sessionstore.Recorder.start(endpoint, 0xAB, ["agent"], base=str(base),
                                              max_events=10)  # fmt: skip
        finally:
            sessionstore.KEEP_SESSIONS = old
        assert rec is not None
        assert sorted(os.listdir(base)) == ["2.rwrec", "3.rwrec", "ab.rwrec"]  # 1 was oldest
        evs = [{"type": "open", "ts": 10 + i, "session": 0xAB, "pid": 7, "flags": [],
                "path": f"/tmp/o{i}"} for i in range(30)]  # fmt: skip
        evs.append({"type": "exit", "ts": 99, "session": 0xAB, "pid": 7, "code": 0,
                    "signal": 0, "flags": []})  # fmt: skip
        evs.append({"type": "open", "ts": 5, "session": 0xCD, "pid": 8, "path": "/x"})
        pub.publish(evs)
        time.sleep(0.3)
        path = rec.stop()
    finally:
        stop.set()
        t.join()
        pub.close()
    assert sessionstore.find("0xab", str(base)) == path
    _, kept = recording.read(path)
    kept = list(kept)
    assert [e["type"] for e in kept] == ["open"] * 10 + ["exit", "monitor"], kept
    assert kept[-1]["record_left_out"] == 20
    assert recording.verify(path)["status"] == "intact"
    rep = report_cli.build(path, rules_dirs=None)
    assert rep["summary"]["losses_total"] == 20 and "20 events were lost" in rep["problems"][0]


def test_a_sessions_budget_losses_are_counted_once_and_said_at_the_top() -> None:
    """A session's own loss reports carry its over-budget totals since it started: the
    report says the last total (not their sum) among its losses, and why."""
    from roguewatch.outputs.report import ReportBuilder

    b = ReportBuilder({"session": 0x51})
    for total in (300, 900, 1500):
        b.add({"type": "monitor", "kind": "loss", "session": 0x51, "flags": ["budget"],
               "lost_budget": total, "ts": total,
               "detail": f"session 51: {total} records dropped over its budget"})  # fmt: skip
    report = b.finish([])
    summary = report["summary"]
    assert summary["losses"] == {"over_budget": 1500}
    assert summary["losses_total"] == 1500
    assert "session 51: 1500 records dropped over its budget" in summary["loss_details"]
    assert any("1500 events were lost" in p for p in report["problems"]), report["problems"]
