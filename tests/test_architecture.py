"""The tree reads as the data flow: each stage imports only the stages before it.

docs/architecture.md draws the flow; this pins it. A sensor that imported the rule compiler,
or the probe loader the field table, would fail here with the import that does it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "roguewatch"

# Lowest first. A module may import its own stage and the stages listed before it.
ORDER = ("core", "host", "policy", "probes", "sensors", "stream", "detect", "respond",
         "outputs", "fleet", "runtime", "cli")  # fmt: skip
RANK = {stage: i for i, stage in enumerate(ORDER)}
RANK["rulepacks"] = RANK["detect"]  # the rule packs are data the detection stage reads


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every roguewatch import in a file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "roguewatch":
                out += [(node.lineno, f"roguewatch.{a.name}") for a in node.names]
            elif node.module.startswith("roguewatch."):
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("roguewatch.")]
    return out


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_stage_imports_only_the_stages_before_it() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) < 2:
            continue  # roguewatch/__init__.py: the version only
        own = rel.parts[0]
        assert own in RANK, f"{rel}: stage {own!r} is not in ORDER: place it in the flow"
        for line, module in _imports(path):
            target = _stage(module)
            if target is None or target == "__version__":
                continue
            assert target in RANK, f"{rel}:{line}: imports {module}: unknown stage {target!r}"
            if RANK[target] > RANK[own]:
                wrong.append(f"{rel}:{line}: {own} imports {module} ({target} comes later)")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def test_the_probe_layouts_import_only_the_core() -> None:
    """probes/layout.py mirrors the C; it is read by sensors and stream, never the reverse."""
    layout = PACKAGE.parent.parent / "probes" / "layout.py"
    assert all(_stage(m) == "core" for _, m in _imports(layout)), _imports(layout)


def test_every_attribute_read_of_a_roguewatch_module_exists() -> None:
    """``module.name`` where ``module`` was imported from roguewatch: a rename that missed a
    caller (or a merge that brought one back) fails here, not on the path that reads it."""
    import importlib

    root = PACKAGE.parent.parent
    files = [
        *PACKAGE.rglob("*.py"),
        *(root / "tests").rglob("*.py"),
        *(root / "bench").rglob("*.py"),
    ]
    missing = []
    for path in files:
        tree = ast.parse(path.read_text())
        modules = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("roguewatch"):
                for a in node.names:
                    try:
                        modules[a.asname or a.name] = importlib.import_module(
                            f"{node.module}.{a.name}"
                        )
                    except ImportError:
                        continue  # a name, not a module
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in modules
                    and not hasattr(modules[node.value.id], node.attr)):  # fmt: skip
                missing.append(f"{path.relative_to(root)}:{node.lineno}: "
                               f"{node.value.id}.{node.attr}")  # fmt: skip
    assert not missing, "\n".join(missing)
