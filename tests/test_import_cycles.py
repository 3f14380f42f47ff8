"""No import cycles among unipetl's own modules, counting imports inside functions too.

Every module under src/unipetl is parsed with `ast`; each import statement anywhere in it (module level,
inside functions, under `if TYPE_CHECKING:`) is an edge. A function-level import does not fail at import time,
but a cycle through one is still two modules that need each other: the layering this test keeps is that of
every dependency, not only of those that run at import. Resolution:

- `import unipetl.a.b` and `from unipetl.a import b`, `from . import b`, `from .a import b`, `from ..a import b`:
  relative names are resolved against the importing module's package;
- `from P import name` where P.name is a module is an import of that module; it also imports P, and importing a
  package is importing its `__init__` (and so is importing anything below it, `from .a.b import c` imports a);
- the importer's own enclosing packages are left out (Python has imported them before the importer runs), but a
  module that imports itself is reported;
- `importlib.import_module` calls (the package's lazy exports) are not seen.

A cycle is a strongly connected component of more than one module, or a module importing itself.
"""

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "unipetl"


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Module name -> file, for every .py file of ``package`` under ``src`` (a package is its __init__)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _enclosing(name: str) -> list[str]:
    """The packages that contain module ``name``: a.b.c -> [a, a.b]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, path: Path, modules: dict[str, Path], package: str) -> dict[str, list[int]]:
    """The package's modules that ``name`` imports, each with the line numbers of its import statements."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]  # the package relative imports start from
    found: dict[str, list[int]] = {}

    def add(target: str, line: int, explicit: bool) -> None:
        # ``target``: a dotted name; the longest module prefix is what it imports, and every package above it.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if not target:
            return
        for imported in [*_enclosing(target), target]:
            if imported in _enclosing(name):
                continue  # the importer's own packages: already imported before it runs
            if imported == name and not (explicit and imported == target and not is_package):
                continue  # a package's `from . import x` names itself only as the anchor
            found.setdefault(imported, []).append(line)

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package:
                    add(alias.name, node.lineno, explicit=True)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here_parts = here.split(".")
                if node.level - 1 >= len(here_parts):
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                anchor = ".".join(here_parts[: len(here_parts) - (node.level - 1)])
                stem = f"{anchor}.{node.module}" if node.module else anchor
            else:
                stem = node.module or ""
            if stem.split(".")[0] != package:
                continue
            add(stem, node.lineno, explicit=node.module is not None)
            for alias in node.names:
                if f"{stem}.{alias.name}" in modules:  # `from P import submodule`
                    add(f"{stem}.{alias.name}", node.lineno, explicit=True)
    return found


def import_graph(src: Path, package: str) -> tuple[dict[str, dict[str, list[int]]], dict[str, Path]]:
    modules = module_files(src, package)
    return {name: imports_of(name, path, modules, package) for name, path in modules.items()}, modules


def strongly_connected(graph: dict[str, dict]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; every component, each sorted."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def import_cycles(graph: dict[str, dict]) -> list[list[str]]:
    """Components of more than one module, and modules that import themselves."""
    return sorted(c for c in strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]])


def describe(cycles: list[list[str]], graph: dict, modules: dict[str, Path], src: Path) -> str:
    lines = []
    for cycle in cycles:
        lines.append(f"cycle: {', '.join(cycle)}")
        members = set(cycle)
        for importer in cycle:
            for imported, where in sorted(graph[importer].items()):
                if imported in members:
                    location = f"{modules[importer].relative_to(src)}:{','.join(map(str, sorted(set(where))))}"
                    lines.append(f"    {importer} -> {imported}  ({location})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the test
def test_unipetl_has_no_import_cycles():
    graph, modules = import_graph(SRC, PACKAGE)
    assert len(modules) > 10 and any(graph.values()), "found no modules or no imports: is SRC right?"
    cycles = import_cycles(graph)
    assert not cycles, f"{len(cycles)} import cycle(s) among {PACKAGE}'s modules:\n" + describe(cycles, graph, modules, SRC)


# ------------------------------------------------------------------------------- the detector on itself
def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def cycles_in(tmp_path, files):
    graph, _ = import_graph(write_package(tmp_path, files), "pkg")
    return import_cycles(graph)


def test_the_detector_finds_a_cycle_through_a_function_level_import(tmp_path):
    files = {"pkg/__init__.py": "", "pkg/a.py": "def f():\n    from . import b\n", "pkg/b.py": "from .a import f\n"}
    assert cycles_in(tmp_path, files) == [["pkg.a", "pkg.b"]]


def test_the_detector_resolves_every_import_form(tmp_path):
    files = {
        "pkg/__init__.py": "from .a import x\n",  # a package importing its own submodule is no cycle
        "pkg/a.py": "import os\nfrom .sub import leaf\nx = 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": "def g():\n    import pkg.c\n",  # absolute, inside a function
        "pkg/c.py": "from .sub.deep import y\n",
        "pkg/sub/deep.py": "from .. import a\ny = 2\n",  # `from .. import a`: the submodule a
    }
    assert cycles_in(tmp_path, files) == [["pkg.a", "pkg.c", "pkg.sub.deep", "pkg.sub.leaf"]]
    graph, _ = import_graph(tmp_path, "pkg")
    assert set(graph["pkg.c"]) == {"pkg.sub", "pkg.sub.deep"}  # importing below a package imports the package
    assert set(graph["pkg"]) == {"pkg.a"}


def test_the_detector_reports_a_self_import_and_passes_a_clean_package(tmp_path):
    assert cycles_in(tmp_path / "one", {"pkg/__init__.py": "", "pkg/a.py": "from .a import x\nx = 1\n"}) == [["pkg.a"]]
    clean = {"pkg/__init__.py": "from . import a, b\n", "pkg/a.py": "from . import b\nfrom pkg import b as c\n",
             "pkg/b.py": "import json\n", "pkg/sub/__init__.py": "from .. import a\n"}
    assert cycles_in(tmp_path / "two", clean) == []


if __name__ == "__main__":  # python tests/test_import_cycles.py [SRC PACKAGE]
    src, package = (Path(sys.argv[1]), sys.argv[2]) if len(sys.argv) > 2 else (SRC, PACKAGE)
    graph, modules = import_graph(src, package)
    found = import_cycles(graph)
    print(describe(found, graph, modules, src))
    print(f"{len(found)} import cycles among {len(modules)} modules of {package}")
    sys.exit(1 if found else 0)
