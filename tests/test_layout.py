"""probes/layout.py against the C it mirrors, fact by fact, read from the C itself.

Every number and layout user space shares with the probes is declared twice: once in the C
(roguewatch.h and the *.bpf.c) and once in probes/layout.py. These tests parse the C (its
#defines, enums and structs) and compile its structs with gcc, Tetragon-alignchecker style, so
that a change to one side only fails here instead of misreading every record.
"""

from __future__ import annotations

import ast
import re
import struct
import subprocess
from pathlib import Path

import pytest
from roguewatch.probes import layout
from roguewatch.stream import events

from tests.conftest import require_root

ROOT = Path(__file__).resolve().parent.parent
PROBES = ROOT / "probes"
HEADER_FILE = PROBES / "roguewatch.h"

# C types of the probes' structs and their struct module codes. A byte array is "Ns" (or
# "NB" where Python packs it as numbers).
C_CODES = {"u64": "Q", "s64": "q", "u32": "I", "s32": "i", "u16": "H", "u8": "B", "char": "c"}
C_NUMBERS = {"TASK_COMM_LEN": 16}  # from the kernel's headers, not ours


def c_source() -> str:
    """roguewatch.h and every probe, comments removed."""
    text = HEADER_FILE.read_text() + "".join(p.read_text() for p in sorted(PROBES.glob("*.bpf.c")))
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def _eval(expr: str, names: dict[str, int]) -> int:
    """A C integer constant expression of the kinds the probes use: 1ULL << 62, 0x7eadbee,
    (2 * RW_PATH_MAX), -100, other macros by name."""
    expr = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)(?:ULL|UL|LL|U|L)?\b", r"\1", expr.strip())

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp):
            ops = {ast.LShift: lambda a, b: a << b, ast.BitOr: lambda a, b: a | b,
                   ast.Mult: lambda a, b: a * b, ast.Add: lambda a, b: a + b}  # fmt: skip
            return ops[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not a constant the test knows: {expr!r}")

    return value(ast.parse(expr, mode="eval").body)


def defines() -> dict[str, int]:
    """Every #define of the probes whose value is an integer constant."""
    out = dict(C_NUMBERS)
    for name, expr in re.findall(r"^\s*#define\s+(RW_\w+)[ \t]+([^\n]+)$", c_source(), re.M):
        try:
            out[name] = _eval(expr, out)
        except (ValueError, KeyError, SyntaxError):
            pass  # a macro that is code (RW_FILE_BULK...), not a number
    return out


def enum(name: str) -> list[tuple[str, int]]:
    """(member, value) of a C enum, in order."""
    m = re.search(rf"enum {name}\s*\{{(.*?)\}};", c_source(), re.S)
    assert m, f"enum {name} not found in the probes"
    out, nxt = [], 0
    for member in (x.strip() for x in m.group(1).split(",")):
        if not member:
            continue
        ident, _, value = (s.strip() for s in member.partition("="))
        nxt = _eval(value, defines()) if value else nxt
        out.append((ident, nxt))
        nxt += 1
    return out


def struct_fields(name: str) -> list[tuple[str, str]]:
    """(field, struct code) of a C struct, in order: `u64 a[4]` is ("a", "4Q"), a byte array
    ("addr", "28s")."""
    m = re.search(rf"struct {name}\s*\{{(.*?)\}}", c_source(), re.S)
    assert m, f"struct {name} not found in the probes"
    nums = defines()
    out = []
    for decl in (d.strip() for d in m.group(1).split(";")):
        if not decl:
            continue
        f = re.fullmatch(r"(\w+)\s+(\w+)(?:\[(\w+)\])?", decl)
        assert f, f"struct {name}: a field the test cannot read: {decl!r}"
        ctype, field, count = f.groups()
        code = C_CODES[ctype]
        if count is not None:
            n = int(count) if count.isdigit() else nums[count]
            code = f"{n}s" if code in "Bc" else f"{n}{code}"
        out.append((field, code))
    return out


def layout_names(prefix: str) -> dict[str, int]:
    """layout's integer constants named PREFIX_*, by the rest of their name."""
    return {k[len(prefix) :]: v for k, v in vars(layout).items()
            if k.startswith(prefix) and type(v) is int}  # fmt: skip


def bytes_as_s(fmt: str) -> str:
    """A struct format with its byte arrays ("8B") spelt as strings ("8s"), no byte order."""
    return re.sub(r"(\d+)B", r"\1s", fmt.lstrip("<"))


def expanded(fields: tuple[tuple[str, str], ...]) -> list[str]:
    """The names of a struct's unpacked tuple: `a` (4Q) gives a0 a1 a2 a3."""
    out = []
    for name, code in fields:
        n, kind = re.fullmatch(r"(\d*)(\w)", code).groups()
        out += [f"{name}{i}" for i in range(int(n))] if n and kind != "s" else [name]
    return out


# -- numbers ---------------------------------------------------------------------------------


def test_record_flags_are_the_c_flags() -> None:
    c = {k[len("RW_F_") :]: v for k, v in defines().items() if k.startswith("RW_F_")}
    assert c and c == layout_names("F_")


def test_session_map_flags_are_the_c_flags_and_apart_from_the_record_flags() -> None:
    c = {k[len("RW_P_") :]: v for k, v in defines().items() if k.startswith("RW_P_")}
    assert c == {"OBSERVE": layout.P_OBSERVE, "TAINTED": layout.P_TAINTED,
                 "POLICY_SHIFT": layout.P_POLICY_SHIFT,
                 "POLICY_MASK": layout.P_POLICY_MASK}  # fmt: skip
    # rw_proc.flags carries RW_F_ADOPTED too: its own bits must not collide with any RW_F_
    policy_bits = layout.P_POLICY_MASK << layout.P_POLICY_SHIFT
    for f in layout_names("F_").values():
        assert layout.P_OBSERVE & f == 0 and policy_bits & f == 0
    assert layout.P_OBSERVE & policy_bits == 0 and layout.P_TAINTED & policy_bits == 0
    assert defines()["RW_EGRESS_POLICY_BASE"] == layout.EGRESS_POLICY_BASE
    # policy owners never collide with session numbers (run's are below 2^61, adopted 2^62+)
    assert layout.EGRESS_POLICY_BASE > layout.ADOPTED_PROCFS_BASE | 0xFFFF_FFFF


def test_event_type_numbers_are_the_c_enum() -> None:
    members = enum("rw_type")
    assert members[0] == ("RW_NONE", 0)
    assert members[-1] == ("RW_TYPE_MAX", len(layout.TYPE_NAMES))
    assert [(n[3:].lower(), v) for n, v in members[1:-1]] == [
        (name, i) for i, name in enumerate(layout.TYPE_NAMES) if i
    ]


def test_counter_slots_are_the_c_enum_and_the_c_uses_them_by_name() -> None:
    members = enum("rw_counter")
    assert members == [(f"RW_COUNTER_{c.name}", c.value) for c in layout.Counter] + [
        ("RW_COUNTER_MAX", len(layout.Counter))
    ]
    src = c_source()
    assert re.search(r"BPF_ARRAY\(counters,\s*u64,\s*RW_COUNTER_MAX\)", src)
    # every `counters.lookup(&k)` looks up a k set from the enum, never from a bare number
    lookups = list(re.finditer(r"counters\.lookup\(&(\w+)\)", src))
    assert lookups
    for m in lookups:
        key = re.findall(rf"\bu32 {m.group(1)} = (\w+);", src[: m.start()])[-1]
        assert key.startswith("RW_COUNTER_"), f"counters[{key}]: index it by its enum name"


def test_the_folded_types_and_the_window_are_the_c_ones() -> None:
    """RW_FOLDABLE (the file and socket tiers, and kill) is what layout, the collector and
    docs/events.md say the kernel folds; never a vital type."""
    src = c_source()
    nums = dict(enum("rw_type"))

    joined = src.replace("\\\n", " ")  # continuation lines joined

    def bits(macro: str) -> set[int]:
        """The type numbers a mask macro sets: its `1ULL << RW_X` and the masks it names."""
        body = re.search(rf"^\s*#define {macro}\b(.*)$", joined, re.M)
        assert body, f"#define {macro} not found"
        out = {nums[n] for n in re.findall(r"1ULL << (RW_\w+)", body.group(1))}
        for other in re.findall(r"\b(RW_\w+_BULK)\b", body.group(1)):
            out |= bits(other)
        return out

    foldable = bits("RW_FOLDABLE")
    assert foldable == set(layout.FOLDABLE_TYPES)
    assert {layout.TYPE_NAMES[t] for t in foldable} == set(events.FOLDABLE)
    assert not foldable & bits("RW_VITAL")
    assert defines()["RW_FOLD_NS"] == layout.FOLD_NS
    assert enum("rw_type")[-2] == ("RW_REPEATS", layout.REPEATS)


def test_kill_calls_are_the_c_enum() -> None:
    members = enum("rw_kill_call")
    assert [(n[len("RW_KILL_CALL_") :].lower(), v) for n, v in members] == [
        (call, i) for i, call in enumerate(layout.KILL_CALLS)
    ]


def test_target_calls_are_the_c_enum() -> None:
    members = enum("rw_target_call")
    assert [(n[len("RW_TARGET_") :].lower(), v) for n, v in members] == [
        (call, i) for i, call in enumerate(layout.TARGET_CALLS)
    ]


def test_adopted_session_numbers_start_at_the_c_base() -> None:
    assert defines()["RW_SESSION_ADOPTED_BASE"] == layout.ADOPTED_BASE
    # the /proc scan numbers its sessions inside the adopted range, above the kernel's
    assert layout.ADOPTED_PROCFS_BASE & layout.ADOPTED_BASE == layout.ADOPTED_BASE
    assert layout.ADOPTED_BASE < layout.ADOPTED_PROCFS_BASE < 1 << 64


@pytest.mark.parametrize(
    ("c_name", "py_name"),
    [
        ("RW_ARGV_ARGS", "ARGV_ARGS"),
        ("RW_AT_FDCWD", "AT_FDCWD"),
        ("RW_MAX_PROCS", "MAX_PROCS"),
        ("RW_MAX_SESSIONS", "MAX_SESSIONS"),
        ("RW_EVENTS_FD", "EVENTS_FD"),
        ("RW_EGRESS_RANGES", "EGRESS_RANGES"),
        ("RW_MOUNT_UMOUNT", "MOUNT_UMOUNT"),
        ("RW_MOUNT_MOVE", "MOUNT_MOVE"),
    ],
)
def test_limits_and_numbers_are_the_c_ones(c_name: str, py_name: str) -> None:
    assert defines()[c_name] == getattr(layout, py_name)


def test_budget_tiers_are_the_c_ones() -> None:
    d = defines()
    assert d["RW_BUDGET_TIERS"] == len(layout.BUDGET_TIERS)
    for i, name in enumerate(layout.BUDGET_TIERS):
        assert d[f"RW_BUDGET_{name.upper()}"] == i


# -- layouts -----------------------------------------------------------------------------------


def test_record_header_fields_are_struct_rw_hdr_in_order() -> None:
    c = struct_fields("rw_hdr")
    assert c == [*layout.VAR_FIELDS, *layout.IDENT_FIELDS]
    assert layout.IDENT_FIELDS[0][0] == "session"  # the identity block starts at session
    assert layout.HEADER.format == "<" + "".join(code for _, code in c)


def test_header_indexes_name_the_fields_they_index() -> None:
    var, ident = expanded(layout.VAR_FIELDS), expanded(layout.IDENT_FIELDS)
    assert len(var) == len(layout.VAR.unpack(bytes(layout.VAR.size)))
    assert len(ident) == len(layout.IDENT.unpack(bytes(layout.IDENT.size)))
    v_names = {"TS": "ts", "RET": "ret", "TID": "tid", "TYPE": "type", "FLAGS": "flags",
               "A0": "a0", "A1": "a1", "A2": "a2", "A3": "a3", "ADDR": "addr", "LEN1": "len1",
               "LEN2": "len2"}  # fmt: skip
    assert {k: var[v] for k, v in layout_names("V_").items()} == v_names
    i_names = {"SESSION": "session", "START": "start_ns", "PSTART": "pstart_ns", "PID": "pid",
               "PPID": "ppid", "UID": "uid", "GID": "gid", "COMM": "comm"}  # fmt: skip
    assert {k: ident[v] for k, v in layout_names("I_").items()} == i_names


def test_session_map_value_is_struct_rw_proc() -> None:
    assert struct_fields("rw_proc") == list(layout.PROC_FIELDS)
    assert layout.PROC.format == "<" + "".join(code for _, code in layout.PROC_FIELDS)
    names = [n for n, _ in layout.PROC_FIELDS]
    p_names = {"SESSION": "session", "START": "start_ns", "PSTART": "pstart_ns",
               "PPID": "ppid", "FLAGS": "flags"}  # fmt: skip
    assert {k: names[v] for k, v in layout_names("PROC_").items()} == p_names


def test_egress_allowlist_keys_and_values_are_the_c_structs() -> None:
    for key, size in (("rw_egress_key4", layout.EGRESS_KEY4_SIZE),
                      ("rw_egress_key6", layout.EGRESS_KEY6_SIZE)):  # fmt: skip
        fields = struct_fields(key)
        head = "".join(code for _, code in fields[:2])
        assert [n for n, _ in fields[:2]] == ["prefixlen", "owner"]
        assert head == layout.EGRESS_KEY.format.lstrip("<")
        assert struct.calcsize("<" + "".join(c for _, c in fields)) == size
    allow = "".join(code for _, code in struct_fields("rw_egress_allow"))
    assert allow == bytes_as_s(layout.EGRESS_ALLOW.format)


# The structs user space reads or writes, with the Python formats that mirror them.
MIRRORED_STRUCTS = {
    "rw_hdr": lambda: (layout.HEADER.format, [*layout.VAR_FIELDS, *layout.IDENT_FIELDS]),
    "rw_proc": lambda: (layout.PROC.format, list(layout.PROC_FIELDS)),
    "rw_egress_key4": lambda: (layout.EGRESS_KEY.format + "4s", None),
    "rw_egress_key6": lambda: (layout.EGRESS_KEY.format + "16s", None),
    "rw_egress_allow": lambda: (layout.EGRESS_ALLOW.format, None),
    "rw_fold_key": lambda: (layout.FOLD_KEY.format, None),
    "rw_budget_key": lambda: (layout.BUDGET_KEY.format, None),
    "rw_budget_conf": lambda: (layout.BUDGET_CONF.format, None),
}


def test_offsets_and_sizes_of_the_compiled_structs_are_the_python_ones(tmp_path: Path) -> None:
    """gcc lays the structs out as the BPF compiler does (same alignment rules): every field's
    offset and every struct's size must be what the packed Python formats give."""
    src = c_source()
    body, printf = [], []
    for name in MIRRORED_STRUCTS:
        body.append(re.search(rf"struct {name}\s*\{{.*?\}}[^;]*;", src, re.S).group(0))
        printf.append(f'printf("{name} %zu\\n", sizeof(struct {name}));')
        for field, _ in struct_fields(name):
            printf.append(f'printf("{name}.{field} %zu\\n", offsetof(struct {name}, {field}));')
    prog = tmp_path / "layout.c"
    prog.write_text(
        "#include <stdio.h>\n#include <stdint.h>\n#include <stddef.h>\n"
        "typedef uint64_t u64; typedef int64_t s64; typedef uint32_t u32; typedef int32_t s32;\n"
        "typedef uint16_t u16; typedef uint8_t u8;\n"
        + "".join(f"#define {k} {v}\n" for k, v in defines().items() if "EGRESS" in k)
        + "#define TASK_COMM_LEN 16\n"
        + "\n".join(body)
        + "\nint main(void) {\n" + "\n".join(printf) + "\nreturn 0; }\n"
    )  # fmt: skip
    subprocess.run(["gcc", "-o", str(tmp_path / "layout"), str(prog)], check=True)
    compiled = dict(
        line.rsplit(" ", 1) for line in subprocess.check_output([str(tmp_path / "layout")],
                                                                text=True).splitlines()
    )  # fmt: skip
    for name, mirror in MIRRORED_STRUCTS.items():
        fmt, _ = mirror()
        assert int(compiled[name]) == struct.calcsize(fmt), f"sizeof(struct {name})"
        codes = struct_fields(name)
        for i, (field, _) in enumerate(codes):
            want = struct.calcsize("<" + "".join(c for _, c in codes[:i]))
            assert int(compiled[f"{name}.{field}"]) == want, f"offsetof({name}, {field})"
    assert int(compiled["rw_hdr.type"]) == layout.TYPE_OFF
    assert int(compiled["rw_hdr.session"]) == layout.IDENT_OFF
    assert int(compiled["rw_egress_key4.owner"]) == layout.EGRESS_KEY_OWNER_OFF


# -- the mirror is the only one ---------------------------------------------------------------


def test_no_module_but_layout_redeclares_a_kernel_number() -> None:
    """The numbers that once had copies outside layout.py: none may come back."""
    copies = re.compile(
        r"1 << 62|0x7EADBEE|Struct\(\"<QQQII\"\)|RW_[FP]_\w+ = |_counter\(\d\)|"
        r"f\"\{pid\}-\{start\}\""
    )
    found = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in (ROOT / "daemon").rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if copies.search(line)
    ]
    assert found == []


def test_record_headers_are_read_by_field_name_not_by_position() -> None:
    """A header tuple indexed with a bare number (h[3]) reads the wrong field the day the
    struct changes: the builders and the modules that read records index it with V_*, I_*."""
    literal = re.compile(r"(?<![\w.])[hi]\[\d+\]")
    daemon = ROOT / "daemon/roguewatch"
    sources = [PROBES / "layout.py", daemon / "stream/collector.py",
               daemon / "stream/enrich.py", daemon / "sensors/bpf.py"]  # fmt: skip
    found = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in sources
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert found == []


@pytest.mark.kernel
def test_the_compiled_probe_image_has_the_map_sizes_layout_gives() -> None:
    """The C as bcc compiled it: the session map's value, the counters, the allowlists."""
    require_root("compiling the probes creates their maps (root)")
    from roguewatch.sensors import bpf

    try:
        maps = {m.name: m for m in bpf.cached_image(bpf.BuildOptions()).maps}
    except bpf.ProbeError as exc:
        pytest.fail(f"the probes could not be compiled: {exc}")
    assert (maps["sessions"].key_size, maps["sessions"].value_size) == (4, layout.PROC.size)
    assert maps["sessions"].max_entries == layout.MAX_PROCS
    assert maps["counters"].max_entries == len(layout.Counter)
    tiers = len(layout.BUDGET_TIERS)
    for name in ("budgets", "budget_lost"):
        assert maps[name].key_size == layout.BUDGET_KEY.size
        assert maps[name].max_entries == layout.MAX_SESSIONS * tiers
    assert maps["budget_conf"].value_size == layout.BUDGET_CONF.size
    assert maps["lost"].max_entries == len(layout.TYPE_NAMES)
    assert maps["egress_denied"].value_size == layout.HEADER.size
    assert maps["egress_allow4"].key_size == layout.EGRESS_KEY4_SIZE
    assert maps["egress_allow6"].key_size == layout.EGRESS_KEY6_SIZE
    assert maps["egress_allow4"].value_size == layout.EGRESS_ALLOW.size
