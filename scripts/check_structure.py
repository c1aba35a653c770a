"""Check the package's structure: import cycles, function-level imports, long files.

    python scripts/check_structure.py [--src src/mutualat] [--max-lines 400] [--json]

Reads the source with :mod:`ast` (imports nothing from the package) and reports

- **cycles**: strongly connected components of the module graph of the package, counting
  every import of a project module wherever it is written (a function-level import still
  makes the importing module depend on the imported one; it only hides the cycle from the
  interpreter). Imports under ``if TYPE_CHECKING:`` are left out: they never run.
- **deferred**: imports of project modules written inside a function, which hide a
  dependency from a reader of the module's head. Optional third-party packages are meant to
  be imported there, so only the package's own modules are reported.
- **long**: files longer than ``--max-lines`` lines.

Exits 1 if any of the three is found, else 0. ``--json`` prints
``{"cycles": [[file, ...], ...], "chains": ["a -> b -> a", ...], "deferred": {file:
[[line, module], ...]}, "long": {file: lines}}`` with paths relative to the repository,
for tests/test_structure.py (which keeps the list of deferred imports that are allowed, each
with its reason).

Module graph: ``from a.b import c`` depends on ``a.b.c`` when that is a module of the
package, else on ``a.b``; importing ``a.b.c`` does not count as an import of the package
``a.b`` itself (the interpreter runs ``a/b/__init__.py`` first, but a package's
``__init__`` that re-exports its submodules would otherwise put every submodule in a cycle
with it).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_files(src: Path) -> dict[str, Path]:
    """``{"mutualat.attacks.pgd": path, "mutualat.attacks": .../__init__.py, ...}``."""
    modules = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement that can run, with whether it is inside a function."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit(other, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, in_function))
            inner = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, False)
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             modules: dict[str, Path]) -> set[str]:
    """The project modules one import statement depends on."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        names = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                 for alias in node.names]
    targets = set()
    for name in names:
        while name and name not in modules:  # `import a.b.c` of a module; an attribute's owner
            name = name.rpartition(".")[0]
        if not name:
            continue
        targets.add(name)
        # Importing a.b.c runs a/b/__init__.py first: a dependency on the package a.b for
        # a module outside it (inside it, the package's own __init__ imports its parts).
        parent = name.rpartition(".")[0]
        while parent and parent in modules:
            if module != parent and not module.startswith(parent + "."):
                targets.add(parent)
            parent = parent.rpartition(".")[0]
    return targets


def import_graph(
        modules: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, list[tuple[int, str]]]]:
    """The module graph, and every function-level import of a project module: its line and
    the module it imports (one entry per module, packages run on the way left out)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    deferred: dict[str, list[tuple[int, str]]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, in_function in _imports(tree):
            targets = _targets(node, module, path.name == "__init__.py", modules) - {module}
            graph[module] |= targets
            if in_function and targets:
                named = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
                deferred.setdefault(module, []).extend((node.lineno, t) for t in sorted(named))
    return graph, deferred


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def shortest_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One shortest import chain ``[a, b, ..., a]`` through the first module of a cycle,
    the readable part of a large component."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    chain = [node]
                    while chain[-1] != start:
                        chain.append(previous[chain[-1]])
                    return [start, *reversed(chain[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return component


def long_files(src: Path, max_lines: int) -> dict[str, int]:
    counts = {path: len(path.read_text().splitlines()) for path in sorted(src.rglob("*.py"))}
    return {_rel(p): n for p, n in counts.items() if n > max_lines}


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def check(src: Path, max_lines: int) -> dict[str, object]:
    modules = module_files(src)
    graph, deferred = import_graph(modules)
    components = cycles(graph)
    return {
        "cycles": [[_rel(modules[m]) for m in component] for component in components],
        "chains": [" -> ".join(shortest_cycle(graph, component)) for component in components],
        "deferred": {_rel(modules[m]): [[line, target] for line, target in found]
                     for m, found in sorted(deferred.items())},
        "long": long_files(src, max_lines),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=REPO / "src" / "mutualat",
                        help="the package folder (default: src/mutualat)")
    parser.add_argument("--max-lines", type=int, default=400)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    report = check(args.src, args.max_lines)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"import cycles: {len(report['cycles'])}")
        for component, chain in zip(report["cycles"], report["chains"]):
            print(f"  {len(component)} files: {', '.join(component)}")
            print(f"    for example {chain}")
        print(f"function-level imports of project modules: {len(report['deferred'])} files")
        for path, found in report["deferred"].items():
            print(f"  {path}: " + ", ".join(f"{target} (line {line})" for line, target in found))
        print(f"files over {args.max_lines} lines: {len(report['long'])}")
        for path, n in report["long"].items():
            print(f"  {path}: {n}")
    return 1 if report["cycles"] or report["deferred"] or report["long"] else 0


if __name__ == "__main__":
    sys.exit(main())
