"""oomless's layers point downward (DESIGN.md §4), read from the source's own imports.

Every ``import`` in ``src/oomless`` is parsed, at module level and inside functions alike (a
lazy import is still a dependency). A module may import its own layer or a lower one, never a
higher one; it may not import another module's ``_private`` name or reach for one through an
imported module (``proc._parse``); and no two modules may import each other, directly or round
a longer loop (imports under ``if TYPE_CHECKING:`` do not run and are left out of that check).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
ROOT = "oomless"

# DESIGN.md §4, lowest first.  The bottom holds the pure modules directly in the package.
ORDER = [
    ("core", {"units", "spec", "errors", "escalate", "budget", "paths", "urls", "outcomes", "settings"}),
    ("linux", {"linux"}),
    ("enforce", {"enforce"}),
    ("admission", {"admission"}),
    ("history", {"history"}),
    ("data", {"data"}),
    ("celery", {"celery"}),
    ("airflow", {"airflow"}),
    # The package's own __init__ is its public facade: it sits on top with the CLI, and with the
    # harness that starts real workers for tests, the demo and the benchmarks.
    ("cli", {"cli", "testing", ""}),
]


def layer_of(module: str) -> int:
    """The rank of ``oomless.<first>...`` in ORDER."""
    parts = module.split(".")
    assert parts[0] == ROOT, module
    first = parts[1] if len(parts) > 1 else ""
    for rank, (_, members) in enumerate(ORDER):
        if first in members:
            return rank
    raise AssertionError(f"{module} is in no layer of DESIGN.md §4: add it to ORDER in {__file__}")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the module imported (a package's __init__ where the name is not a module)
    name: str | None  # the name taken from it (``from target import name``), if any
    line: int
    runs: bool  # False under ``if TYPE_CHECKING:``

    def __str__(self) -> str:
        what = f"{self.target}.{self.name}" if self.name else self.target
        return f"{self.source}:{self.line} imports {what}"


def module_files(src: Path = SRC) -> dict[str, Path]:
    files = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, runs: bool = True) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        child_runs = runs and not (isinstance(child, ast.If) and _is_type_checking(child.test))
        yield child, child_runs
        yield from _walk(child, child_runs)


def imports_of(module: str, tree: ast.AST, modules: set[str], is_package: bool) -> Iterator[Import]:
    """Each oomless import in ``tree`` (the source of ``module``), resolved to absolute names."""
    package = module if is_package else module.rpartition(".")[0]
    for node, runs in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                    yield Import(module, alias.name, None, node.lineno, runs)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == ROOT or target.startswith(ROOT + ".")):
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in modules:
                    yield Import(module, submodule, None, node.lineno, runs)
                else:
                    yield Import(module, target, alias.name, node.lineno, runs)


def private_attributes(module: str, tree: ast.AST, modules: set[str], is_package: bool) -> Iterator[str]:
    """``name._private`` where ``name`` is an oomless module this module imported."""
    bound: dict[str, str] = {}
    for imp in imports_of(module, tree, modules, is_package):
        if imp.name is None:
            bound[imp.target.rpartition(".")[2]] = imp.target
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and _private(node.attr)
            and bound[node.value.id] != module
        ):
            yield f"{module}:{node.lineno} reads {bound[node.value.id]}.{node.attr}"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def all_imports(src: Path = SRC) -> tuple[list[Import], list[str]]:
    files = module_files(src)
    found: list[Import] = []
    attributes: list[str] = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        found.extend(imports_of(module, tree, set(files), is_package))
        attributes.extend(private_attributes(module, tree, set(files), is_package))
    return found, attributes


def upward(found: list[Import]) -> list[str]:
    return [
        f"{imp} ({ORDER[layer_of(imp.source)][0]} -> {ORDER[layer_of(imp.target)][0]})"
        for imp in found
        if layer_of(imp.target) > layer_of(imp.source)
    ]


def private_names(found: list[Import]) -> list[str]:
    """Private names taken from another module, and private modules taken from outside their package."""
    bad = []
    for imp in found:
        if imp.name is not None and _private(imp.name):
            bad.append(str(imp))
        elif imp.name is None:
            package, _, leaf = imp.target.rpartition(".")
            own_package = imp.source == package or imp.source.startswith(package + ".")
            if _private(leaf) and not own_package:
                bad.append(str(imp))
    return bad


def cycles(found: list[Import]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), over the imports that run."""
    graph: dict[str, set[str]] = {}
    for imp in found:
        if imp.runs and imp.target != imp.source:
            graph.setdefault(imp.source, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
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
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


# A package's __init__ importing its own modules (to re-export them) is not a loop with them.
def _without_reexports(found: list[Import]) -> list[Import]:
    return [
        imp
        for imp in found
        if not (
            module_files()[imp.source].name == "__init__.py" and imp.target.startswith(imp.source + ".")
        )
    ]


FOUND, ATTRIBUTES = all_imports()

def test_every_import_points_down_the_layers_of_design_4():
    assert upward(FOUND) == []


def test_no_module_imports_another_modules_private_name():
    assert private_names(FOUND) + ATTRIBUTES == []


def test_no_two_modules_import_each_other_even_round_a_loop():
    assert cycles(_without_reexports(FOUND)) == []


def test_the_checks_see_the_imports_they_judge(tmp_path):
    """The parser finds known imports, and each check fails on a planted violation."""
    edges = {(imp.source, imp.target) for imp in FOUND}
    assert ("oomless.celery.governor", "oomless.enforce.modes") in edges
    assert ("oomless.enforce.cgroup", "oomless.linux.cgroup") in edges
    assert len(FOUND) > 200

    pkg = tmp_path / ROOT
    (pkg / "linux").mkdir(parents=True)
    (pkg / "celery").mkdir()
    for path in (pkg / "__init__.py", pkg / "linux" / "__init__.py", pkg / "celery" / "__init__.py"):
        path.write_text("")
    (pkg / "linux" / "proc.py").write_text(
        "def read():\n    from ..celery.gate import Gate\n\ndef _parse(): pass\n"
    )
    (pkg / "celery" / "gate.py").write_text(
        "from ..linux.proc import _parse\nfrom ..linux import proc\nproc._parse()\nclass Gate: pass\n"
    )
    found, attributes = all_imports(tmp_path)
    assert upward(found) == ["oomless.linux.proc:2 imports oomless.celery.gate.Gate (linux -> celery)"]
    assert private_names(found) == ["oomless.celery.gate:1 imports oomless.linux.proc._parse"]
    assert attributes == ["oomless.celery.gate:3 reads oomless.linux.proc._parse"]
    assert cycles(found) == [["oomless.celery.gate", "oomless.linux.proc"]]


@pytest.mark.parametrize("module", sorted(module_files()))
def test_every_module_has_a_layer(module):
    layer_of(module)
