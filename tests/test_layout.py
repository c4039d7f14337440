"""The package's house rules, checked on the source tree: no import cycle (imports inside
functions count), no module over 700 lines, no private name imported across modules, every
module named in the README's "Layout", builders keyword-only after ``num_classes``."""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zf_unet"
MAX_LINES = 700
#: Modules whose private names other modules may import (the compatibility shims).
SHIMS = {"zf_unet._keras_compat"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module (of this package) that ``name`` (a module or ``module.attr``) lives in."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """``(target module, imported name or None, line)`` for every import statement of
    ``module`` that names this package, wherever it is (functions included)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("zf_unet") and _owner(alias.name):
                    found.append((_owner(alias.name), None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("zf_unet"):
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in MODULES:  # `from package import module`
                    found.append((full, None, node.lineno))
                elif _owner(source):
                    found.append((_owner(source), alias.name, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in _imports(m) if t != m} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_scanner_sees_cycles_and_function_level_imports():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    # an import inside a function is an edge too: the CLI imports modules lazily
    assert "zf_unet.training" in _graph()["zf_unet.cli"]


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_no_module_over_700_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_private_name_imported_across_modules():
    found = [f"{m}:{line} imports {name} from {target}"
             for m in MODULES for target, name, line in _imports(m)
             if name and name.startswith("_") and not name.startswith("__")
             and target != m and target not in SHIMS]
    assert found == []


def _layout_section() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Layout\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def test_readme_layout_names_every_module():
    layout = _layout_section()
    named = {n for n in re.findall(r"`([\w/]+\.py)`", layout) if not n.startswith("tests/")}
    folders = set(re.findall(r"`(\w+)/`", layout))
    missing = []
    for path in MODULES.values():
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py":
            if path.parent != PACKAGE and path.parent.name not in folders:
                missing.append(rel)
        elif rel not in named and path.name not in named:
            missing.append(rel)
    assert missing == []
    # and the Layout names no module that does not exist
    files = {p.relative_to(PACKAGE).as_posix() for p in MODULES.values()} \
        | {p.name for p in MODULES.values()}
    assert sorted(n for n in named if n not in files) == []


@pytest.mark.parametrize("name", ["build_unet", "build_unet_plus_plus"])
def test_builders_are_keyword_only_after_num_classes(name):
    import zf_unet

    params = list(inspect.signature(getattr(zf_unet, name)).parameters.values())
    names = [p.name for p in params]
    assert "num_classes" in names
    after = params[names.index("num_classes") + 1:]
    assert after, name
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in after), \
        [(p.name, p.kind.name) for p in after if p.kind not in (p.KEYWORD_ONLY,)]


def test_builders_share_one_parameter_order():
    import zf_unet

    a = [p for p in inspect.signature(zf_unet.build_unet).parameters
         if p not in ("args", "kwargs")]
    b = [p for p in inspect.signature(zf_unet.build_unet_plus_plus).parameters
         if p not in ("args", "kwargs")]
    shared_a = [p for p in a if p in b]
    shared_b = [p for p in b if p in a]
    assert shared_a == shared_b
