"""No import loops in rpo/: every module is parsed (imports inside functions included) and the graph of
rpo -> rpo imports must have no cycle.

An edge goes to the module an import names: `import rpo.a.b` and `from rpo.a import b` (b a module) to
rpo.a.b, `from rpo.a import name` (name not a module) to rpo.a, relative forms resolved against the
importing module's package. Importing a submodule also runs its parents' __init__, but that is not
counted as an edge: a package's __init__ re-exporting its submodules is not a loop.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "rpo"

# Cycles known and scheduled for removal, each as the set of its modules. Nothing else may be added here.
KNOWN_CYCLES: list[set[str]] = []


def module_names(root: Path) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under `root` (a package named root.name)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `name` (at `path`) imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(name, path).split(".")
                anchor = package[:len(package) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return {module for module in found if module in modules and module != name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    names = module_names(root)
    return {name: imports_of(name, path, set(names)) for name, path in names.items()}


def loops(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module: each module of one reaches every other."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's algorithm (the graph has ~60 nodes: recursion is fine)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) per loop, to print."""
    return [_cycle_in(component, graph) for component in loops(graph)]


def _cycle_in(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first inside the component)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def test_no_import_cycles_in_rpo():
    graph = import_graph()
    found = [loop for loop in loops(graph) if loop not in KNOWN_CYCLES]  # a known pair grown larger fails too
    assert not found, "import cycles in rpo/ (imports inside functions count):\n" + "\n".join(
        " -> ".join(_cycle_in(loop, graph)) + f"   (loop of {len(loop)}: {', '.join(sorted(loop))})" for loop in found)


def test_known_cycles_still_exist():
    """An entry of KNOWN_CYCLES whose cycle is gone must go too, so the allow-list only ever shrinks."""
    present = loops(import_graph())
    stale = [sorted(known) for known in KNOWN_CYCLES if known not in present]
    assert not stale, f"no longer a cycle: delete {stale} from KNOWN_CYCLES in tests/test_imports.py"


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize("importer", [
    "from pkg.sub import b\n",                        # a module named in a from-import
    "from .sub import b\n",                           # relative, one level
    "def f():\n    import pkg.sub.b\n",              # inside a function
    "def f():\n    from pkg.sub.b import THING\n",   # a name of the module
])
def test_detector_finds_each_import_form(tmp_path, importer):
    root = _package(tmp_path, {"__init__.py": "", "a.py": importer, "sub/__init__.py": "",
                               "sub/b.py": "from ..a import x\n"})
    assert cycles(import_graph(root)) == [["pkg.a", "pkg.sub.b", "pkg.a"]]


def test_detector_ignores_a_package_reexporting_its_modules(tmp_path):
    root = _package(tmp_path, {"__init__.py": "from pkg.a import x\nfrom . import b\n", "a.py": "x = 1\n",
                               "b.py": "from pkg.a import x\n"})
    assert import_graph(root) == {"pkg": {"pkg.a", "pkg.b"}, "pkg.a": set(), "pkg.b": {"pkg.a"}}
    assert cycles(import_graph(root)) == []
    # A module importing a name its package's __init__ defines does depend on the __init__.
    root = _package(tmp_path / "2", {"__init__.py": "from pkg.a import x\n", "a.py": "from pkg import y\n"})
    assert cycles(import_graph(root)) == [["pkg", "pkg.a", "pkg"]]


def test_no_module_of_rpo_is_over_400_lines():
    """The style rule (files under about 400 lines), held for rpo/ as issue 24 requires."""
    long = {str(path.relative_to(ROOT)): n for path in ROOT.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, f"split these modules: {long}"
