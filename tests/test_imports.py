"""The import graph of ``src/satchel`` (issue 8.5): no cycles, no face, no lazy satchel imports.

Every ``import`` in every module is read with :mod:`ast`, module level and inside functions
alike, relative imports resolved, ``from pkg import name`` resolved to the submodule when ``name``
is one. Importing ``a.b.c`` also runs the ``__init__`` of ``a.b`` (unless the importer lives
inside it, where it is already running), so those count as edges too. ``if TYPE_CHECKING:``
imports count as well: a cycle that only typing closes is still a knot in the design.

Three rules:

1. no cycle among satchel modules (a lazy import only hides one);
2. no module imports the package face ``satchel`` (``satchel/__init__``), except the command
   line, which design.md §3 puts above the face (``_cli -> satchel``);
3. a function-level import names an optional third-party package (torch, h5py, ...) or a
   satchel module that imports one at its top (the torch adapter), never another satchel
   module or the standard library.

The checker is tested on a tiny built package first, so a pass means the graph is clean, not
that the walker saw nothing.
"""

from __future__ import annotations

import ast
import itertools
import textwrap
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "satchel"
# Packages satchel imports only when the user asks for them (pyproject's extras, plus the
# frameworks whose objects a user may hand over).
OPTIONAL = frozenset(
    {
        "torch",
        "h5py",
        "zstandard",
        "matplotlib",
        "safetensors",
        "jax",
        "tensorflow",
        "keras",
        "fsspec",
    }
)
# design.md §3: the commands sit above the face and call the public API.
FACE_ALLOWED = ("satchel._cli", "satchel.__main__")


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a dotted module name (a satchel module, or the top name of another package)
    line: int
    lazy: bool  # inside a function body


def modules(src: Path, root: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every ``.py`` file of ``root``."""
    out = {}
    for path in sorted((src / root).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts.pop()
        out[".".join(parts)] = (path, is_pkg)
    return out


def imports_of(name: str, path: Path, is_pkg: bool, known: set[str], root: str) -> list[Import]:
    """Every import in one module, resolved to module names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if is_pkg else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(name, alias.name, child.lineno, inner))
            elif isinstance(child, ast.ImportFrom):
                if child.module == "__future__":
                    continue
                if child.level:
                    parts = package.split(".")
                    base_parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join(base_parts + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    target = sub if sub in known else base
                    found.append(Import(name, target, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return [
        i
        if i.target == root or i.target.startswith(f"{root}.")
        else Import(i.importer, i.target.split(".")[0], i.line, i.lazy)
        for i in found
    ]


def graph(src: Path, root: str) -> tuple[dict[str, set[str]], list[Import]]:
    """Edges between satchel modules (implicit package ``__init__`` runs included)."""
    mods = modules(src, root)
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    every: list[Import] = []
    for name, (path, is_pkg) in mods.items():
        for imp in imports_of(name, path, is_pkg, known, root):
            every.append(imp)
            if imp.target not in known:
                continue
            edges[name].add(imp.target)
            own = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 2)}
            parts = imp.target.split(".")
            for k in range(2, len(parts)):  # a.b.c runs a.b's __init__ first (not a's: the face)
                pkg = ".".join(parts[:k])
                if pkg not in own and pkg in known:
                    edges[name].add(pkg)
    return edges, every


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                comps.append(comp)

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return [_walk_cycle(sorted(c), edges) for c in comps]


def _walk_cycle(comp: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path start -> ... -> start inside one component (breadth-first)."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & members):
                if w == start:
                    chain = [v]
                    while chain[-1] != start:
                        chain.append(prev[chain[-1]])
                    return [*reversed(chain), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def _show(cycle: list[str], every: list[Import]) -> str:
    lines = {(i.importer, i.target): i for i in every}
    hops = []
    for a, b in itertools.pairwise(cycle):
        imp = lines.get((a, b))
        how = f" (line {imp.line}{', lazy' if imp.lazy else ''})" if imp else " (runs its __init__)"
        hops.append(f"{a} -> {b}{how}")
    return "\n    ".join(hops)


# -- the checker, on a package built to break every rule ---------------------------------------
def _fake(tmp_path: Path) -> Path:
    files = {
        "pkg/__init__.py": "from .a import f\n",
        "pkg/a.py": "from . import b\ndef f():\n    from .c import g\n    import torch\n",
        "pkg/b.py": "import os\n",
        "pkg/c.py": "from pkg import a\nfrom . import b\n",
        "pkg/sub/__init__.py": "from . import x\n",
        "pkg/sub/x.py": "from .. import b\n",
        "pkg/d.py": "from .sub import x\n",
        "pkg/e.py": "from . import VERSION\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    return tmp_path


def test_checker_finds_lazy_cycles_face_imports_and_package_inits(tmp_path: Path) -> None:
    src = _fake(tmp_path)
    edges, every = graph(src, "pkg")
    assert edges["pkg.a"] == {"pkg.b", "pkg.c"}
    assert edges["pkg.c"] == {"pkg.a", "pkg.b"}
    assert edges["pkg.d"] == {"pkg.sub", "pkg.sub.x"}  # importing sub.x runs sub/__init__
    assert edges["pkg.sub.x"] == {"pkg.b"}  # its own package's __init__ is already running
    assert edges["pkg.e"] == {"pkg"}  # VERSION is not a module: the face
    found = cycles(edges)
    assert found == [["pkg.a", "pkg.c", "pkg.a"]], found
    lazy = [(i.importer, i.target) for i in every if i.lazy]
    assert lazy == [("pkg.a", "pkg.c"), ("pkg.a", "torch")]


# -- the rules, on src/satchel -------------------------------------------------------------------
EDGES, EVERY = graph(SRC, ROOT)


def test_every_module_was_read() -> None:
    assert len(EDGES) > 50 and "satchel.formats.torch" in EDGES


def test_no_import_cycles() -> None:
    found = cycles(EDGES)
    assert not found, f"{len(found)} import cycle(s):\n  " + "\n  ".join(
        _show(c, EVERY) for c in found
    )


def test_no_module_imports_the_package_face() -> None:
    bad = [
        f"{i.importer} line {i.line}"
        for i in EVERY
        if i.target == ROOT and i.importer != ROOT and not i.importer.startswith(FACE_ALLOWED)
    ]
    assert not bad, "import the module that defines it, not the face `satchel`:\n  " + "\n  ".join(
        bad
    )


def test_function_level_imports_are_optional_packages_only() -> None:
    # A satchel module that imports an optional package at its top (the torch adapter) is that
    # package's edge: importing it lazily is importing the package lazily.
    rim = {i.importer for i in EVERY if not i.lazy and i.target in OPTIONAL}
    bad = [
        f"{i.importer} line {i.line}: {i.target}"
        for i in EVERY
        if i.lazy and i.target not in OPTIONAL and i.target not in rim
    ]
    assert not bad, (
        "lazy imports may only load optional third-party packages; import these at the top "
        "(a lazy import of a satchel module hides a cycle):\n  " + "\n  ".join(sorted(bad))
    )


def test_readers_never_import_detection_and_codecs_never_import_readers() -> None:
    """The arrows inside ``formats``: detect -> registry -> readers -> _codecs."""
    top = {"satchel.formats.detect", "satchel.formats.registry"}
    bad = []
    for m, targets in EDGES.items():
        if m.startswith("satchel.formats._codecs."):
            bad += [f"{m} -> {t}" for t in targets if t.startswith("satchel.formats.")
                    and not t.startswith("satchel.formats._codecs")]  # fmt: skip
        elif m.startswith("satchel.formats.") and m not in top:
            bad += [f"{m} -> {t}" for t in sorted(targets & top)]
    assert not bad, "\n".join(bad)
