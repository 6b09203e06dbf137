"""The condition language: every operator, precedence, macros, lists, errors, no eval."""

from __future__ import annotations

import builtins

import pytest
from roguewatch.detect import condition as C
from roguewatch.detect import fields as F
from roguewatch.policy.policy import StaticPolicy

CTX = F.StaticProcessView(
    policy=StaticPolicy(egress_allow=("10.0.0.0/8:443/tcp",), protect=("/srv/eval",)),
    default_ancestors=[
        {"pid": 10, "comm": "bash", "exe": "/usr/bin/bash", "cmdline": "bash -c x"},
        {"pid": 1, "comm": "systemd", "exe": "/usr/lib/systemd/systemd", "cmdline": "init"},
    ],
    processes={50: 7, 60: 8},
    venvs=("/home/u/p/.venv",),
)

OPEN = {
    "type": "open",
    "pid": 42,
    "session": 7,
    "uid": 1000,
    "comm": "python3",
    "exe": "/usr/bin/python3",
    "path": "/etc/cron.d/job",
    "open_flags": 0o1101,
    "ret": 0,
    "flags": [],
}
CONNECT = {
    "type": "connect",
    "pid": 42,
    "session": 7,
    "family": "inet",
    "addr": "10.1.2.3",
    "port": 443,
    "proto": "tcp",
}
EXEC = {
    "type": "exec",
    "pid": 42,
    "comm": "git",
    "exe": "/usr/bin/git",
    "filename": "/usr/bin/git",
    "argv": ["git", "config", "--global", "core.hooksPath", "/x"],
    "cmdline": "git config --global core.hooksPath /x",
}


def m(cond: str, event: dict, macros=None, lists=None) -> bool:
    return C.compile_condition(cond, macros, lists).match(event, CTX)


@pytest.mark.parametrize(
    ("cond", "event", "want"),
    [
        ("evt.type = open", OPEN, True),
        ("evt.type == open", OPEN, True),
        ("evt.type != open", OPEN, False),
        ("evt.type != open", CONNECT, True),
        ("proc.pid < 43", OPEN, True),
        ("proc.pid <= 42", OPEN, True),
        ("proc.pid > 42", OPEN, False),
        ("proc.pid >= 42", OPEN, True),
        ("proc.pid = 0x2a", OPEN, True),
        ("proc.name in (bash, python3)", OPEN, True),
        ("proc.name in (bash, sh)", OPEN, False),
        ("proc.name in ()", OPEN, False),
        ("fd.name startswith /etc/", OPEN, True),
        ("fd.name startswith (/usr, /etc/cron)", OPEN, True),
        ("fd.name endswith .d/job", OPEN, True),
        ("fd.name endswith (.sh, .py)", OPEN, False),
        ("fd.name contains cron", OPEN, True),
        ("fd.name icontains CRON", OPEN, True),
        ("fd.name contains CRON", OPEN, False),
        ("fd.name glob /etc/cron.*/*", OPEN, True),
        ("fd.name glob '/etc/cron.?/j[aeiou]b'", OPEN, True),
        ("fd.filename glob *.pth", OPEN, False),
        ("fd.name glob /etc/*", OPEN, True),
        ("fd.name pmatch (/etc/cron.d)", OPEN, True),
        ("fd.name pmatch (/etc/cron)", OPEN, False),  # a prefix of components, not characters
        ("fd.name pmatch /etc/cron.d/job", OPEN, True),
        ("fd.name pmatch (/)", OPEN, True),
        ("fd.sip cidr 10.0.0.0/8", CONNECT, True),
        ("fd.sip cidr (192.168.0.0/16, ::1/128)", CONNECT, False),
        ('fd.name regex "^/etc/cron\\.[a-z]+/"', OPEN, True),
        ("fd.name regex (^/usr, job$)", OPEN, True),
        ("fd.name regex ^/usr", OPEN, False),
        ("fd.name exists", OPEN, True),
        ("fd.name exists", CONNECT, False),
        ("fd.sip exists", CONNECT, True),
        ("policy.egress_allowed = true", CONNECT, True),
        ("policy.egress_allowed", CONNECT, True),  # a bare bool field means "= true"
        ("not fd.in_venv", OPEN, True),
        ("fd.open_flags contains O_TRUNC", OPEN, True),
        ("fd.open_flags contains O_APPEND", OPEN, False),
        ("proc.argv contains --global", EXEC, True),
        ("proc.argv in (--system, config)", EXEC, True),
        ("proc.argv startswith core.", EXEC, True),
        ("proc.aname = systemd", OPEN, True),
        ("proc.aname[1] = bash", OPEN, True),
        ("proc.aname[0] = python3", OPEN, True),
        ("proc.aname[2] = systemd", OPEN, True),
        ("proc.aname[3] exists", OPEN, False),
        ("proc.pname = bash and proc.apid[2] = 1", OPEN, True),
        ("proc.args contains hooksPath", EXEC, True),
        ("fd.homepath = ~/.bashrc", {**OPEN, "path": "/home/u/.bashrc"}, True),
        ("fd.homepath = ~/.bashrc", {**OPEN, "path": "/home/u/p/.bashrc"}, False),
        ("fd.name = /etc/cron.d/job", {**OPEN, "path": "/etc//cron.d/../cron.d/job"}, True),
        ("fd.protected = true", {**OPEN, "path": "/srv/eval/stop.sh"}, True),
        ("fd.in_venv", {**OPEN, "path": "/home/u/p/.venv/lib/x.pth"}, True),
        ("evt.target_in_session = true", {"type": "kill", "session": 7, "target": 50}, True),
        ("evt.target_in_session = false", {"type": "kill", "session": 7, "target": 60}, True),
        ("evt.target_in_session exists", {"type": "kill", "session": 7, "target": 70}, False),
        ('proc.name = "python3"', OPEN, True),
        ("user.uid = 1000", OPEN, True),
        ("evt.arg.target = 50", {"type": "kill", "target": 50}, True),
        ("evt.arg.target = /mnt", {"type": "mount", "target": "/mnt"}, True),
        ("dns.max_label_len > 10", {"type": "sendto", "dns_name": "a.bcdefghijklmn.com"}, True),
        ("dns.label_entropy > 3", {"type": "sendto", "dns_name": "www.example.com"}, False),
    ],
)
def test_operators(cond: str, event: dict, want: bool) -> None:
    assert m(cond, event) is want


def test_missing_field_makes_every_comparison_false() -> None:
    for cond in ("fd.name = x", "fd.name != x", "fd.name startswith /", "fd.sip cidr 0.0.0.0/0"):
        assert m(cond, CONNECT if cond.startswith("fd.name") else OPEN) is False
    assert m("not fd.name = x", CONNECT) is True


def test_precedence_not_and_or() -> None:
    # not > and > or: "a or b and not c" == "a or (b and (not c))"
    assert m("evt.type = open or evt.type = exec and not proc.name = python3", OPEN)
    assert not m("(evt.type = open or evt.type = exec) and not proc.name = python3", OPEN)
    assert m("not evt.type = exec and proc.name = python3", OPEN)
    assert not m("not (evt.type = open and proc.name = python3)", OPEN)
    assert m("not not evt.type = open", OPEN)


def test_keywords_are_words_only_when_whole() -> None:
    lists = {"andlist": ["python3"]}
    assert m(
        "proc.name in (andlist) and notamacro_free",
        OPEN,
        {"notamacro_free": "fd.name exists"},
        lists,
    )


def test_macros_expand_and_nest() -> None:
    macros = {"is_open": "evt.type = open", "cron_open": "is_open and fd.name pmatch (/etc/cron.d)"}
    c = C.compile_condition("cron_open and not proc.name = git", macros)
    assert c.match(OPEN, CTX)
    assert c.macros == {"is_open", "cron_open"}
    assert "cron_open" in C.to_text(c.tree)
    assert "evt.type = open" in C.to_text(c.tree, expand_macros=True)


def test_macro_recursion_is_detected() -> None:
    with pytest.raises(C.ConditionError, match="refers to itself") as e:
        C.compile_condition("a", {"a": "b or evt.type = open", "b": "a"})
    assert e.value.macro == "b"


def test_unknown_macro_has_position_and_suggestion() -> None:
    with pytest.raises(C.ConditionError) as e:
        C.compile_condition("evt.type = open and\n  is_opn", {"is_open": "evt.type = open"})
    assert (e.value.line, e.value.column) == (2, 3)
    assert "unknown macro 'is_opn'" in str(e.value) and "is_open" in str(e.value)


def test_lists_expand_inside_parentheses_only() -> None:
    lists = {"shells": ["bash", "sh"], "more": ["python3"]}
    assert m("proc.name in (shells, more)", OPEN, lists=lists)
    assert not m("proc.name in (shells)", OPEN, lists=lists)
    assert not m("proc.name = more", OPEN, lists=lists)  # no parentheses: a literal
    assert not m('proc.name in ("more")', OPEN, lists=lists)  # quoted: a literal
    assert m("fd.name pmatch (dirs)", OPEN, lists={"dirs": ["/etc/cron.d"]})
    assert m("fd.sip cidr (nets)", CONNECT, lists={"nets": ["10.0.0.0/8"]})
    assert m("proc.pid in (pids)", OPEN, lists={"pids": ["41", "42"]})


@pytest.mark.parametrize(
    ("cond", "line", "col", "words"),
    [
        ("fd.name = ", 1, 10, "found the end of the condition"),
        ("fd.nam = x", 1, 1, "unknown field 'fd.nam' (did you mean 'fd.name'?)"),
        ("evt.type = open and\n   fd.nme = x", 2, 4, "unknown field"),
        ("evt.type = conect", 1, 1, "unknown event type 'conect' (did you mean 'connect'?)"),
        ("(evt.type = open", 1, 17, "expected ')'"),
        ("evt.type = open and and", 1, 21, "found 'and'"),
        ("proc.pid < abc", 1, 12, "expected an integer"),
        ("proc.name < 3", 1, 11, "needs a numeric field"),
        ("proc.pid startswith 3", 1, 10, "needs a string field"),
        ("proc.name in bash", 1, 11, "expected '('"),
        ("fd.name", 1, 1, "expected an operator after field 'fd.name'"),
        ('fd.name = "abc', 1, 11, "closing"),
        ("fd.name = a=b", 1, 12, "quote values"),
        ("fd.name regex '('", 1, 15, "RE2"),
        ("fd.name regex '(a)\\1'", 1, 15, "RE2"),  # backreferences are not RE2
        ("fd.sip cidr 10.0.0.300/8", 1, 13, "expected a CIDR"),
        ("", 1, 1, "empty condition"),
        ("fd.in_venv = maybe", 1, 14, "expected true or false"),
    ],
)
def test_errors_have_line_column_and_expectation(cond: str, line: int, col: int, words: str):
    with pytest.raises(C.ConditionError) as e:
        C.compile_condition(cond)
    assert (e.value.line, e.value.column) == (line, col), str(e.value)
    assert words in str(e.value)
    assert str(e.value).startswith(f"{line}:{col}: ")


def test_required_event_types() -> None:
    def types(cond: str, macros=None) -> set[str] | None:
        t = C.required_event_types(C.compile_condition(cond, macros, {"w": ["open", "rename"]}))
        return None if t is None else set(t)

    assert types("evt.type = open and fd.name exists") == {"open"}
    assert types("evt.type in (w) and fd.name exists") == {"open", "rename"}
    assert types("evt.type in (open, exec) and evt.type in (exec, kill)") == {"exec"}
    assert types("evt.type = open or evt.type = exec") == {"open", "exec"}
    assert types("evt.type = open or fd.name exists") is None
    assert types("not evt.type = open") is None
    assert types("fd.name exists") is None
    assert types("writes", {"writes": "evt.type in (w)"}) == {"open", "rename"}


def test_fields_used() -> None:
    c = C.compile_condition("m and proc.aname[2] = x", {"m": "fd.name exists or not user.uid = 0"})
    assert C.fields_used(c) == {"fd.name", "user.uid", "proc.aname[2]"}
    assert C.fields_used(c.tree) == {"fd.name", "user.uid", "proc.aname[2]"}


def test_to_text_round_trips() -> None:
    src = 'evt.type in (open, rename) and not (fd.name = "a b" or proc.pid > 3) and fd.in_venv'
    c = C.compile_condition(src)
    again = C.compile_condition(C.to_text(c.tree))
    for ev in (OPEN, {**OPEN, "path": "a b"}, {**OPEN, "pid": 1}):
        assert c.match(ev, CTX) == again.match(ev, CTX)


def test_values_are_data_never_code(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*a, **k):
        raise AssertionError("eval/exec/compile called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    hostile = "__import__('os').system('touch /tmp/pwned')"
    c = C.compile_condition(
        f'proc.name = "{hostile}" or fd.name regex ".*" and not x', {"x": "fd.name = y"}
    )
    assert c.match(OPEN, CTX)
    assert not C.compile_condition(f'proc.name = "{hostile}"').match(OPEN, CTX)
    with pytest.raises(C.ConditionError):
        C.compile_condition(hostile)


def test_comparison_from_data() -> None:
    node = C.comparison("proc.name", "=", ["git", "python3"])
    assert node.op == "in" and C.compile_condition(node).match(OPEN, CTX)
    node = C.comparison("fd.name", "pmatch", "dirs")
    assert C.compile_condition(node, lists={"dirs": ["/etc"]}).match(OPEN, CTX)
    with pytest.raises(C.ConditionError):
        C.comparison("no.such", "=", "x")
    with pytest.raises(C.ConditionError):
        C.comparison("proc.pid", "<", ["1", "2"])


def test_specialize_decides_event_type_tests() -> None:
    c = C.compile_condition(
        "(evt.type = exec and proc.name = iptables) or (evt.type in (open, unlink) and m)",
        {"m": "fd.name pmatch (/etc/nftables.conf)"},
    )
    assert c.event_types == {"exec", "open", "unlink"}
    assert C.to_text(C.specialize(c.tree, "exec")) == "proc.name = iptables"
    assert C.to_text(C.specialize(c.tree, "open")) == "fd.name pmatch (/etc/nftables.conf)"
    assert C.specialize(c.tree, "kill") is False and c.for_event_type("kill") is None
    assert C.specialize(C.compile_condition("evt.type = open").tree, "open") is True
    assert C.specialize(C.compile_condition("not evt.type != open").tree, "open") is True
    m = c.for_event_type("open")
    assert m is not None and m({"path": "/etc/nftables.conf"}, CTX)
