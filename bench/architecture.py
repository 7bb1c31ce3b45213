"""Architecture figures from the source alone (ast; nothing is imported): modules per floor, imports
that go up a floor, import circles, and functions over 60 lines.

    python bench/architecture.py [--names] [ROOT]   # the figures; exit status 1 on any violation

The floors follow DESIGN.md's data flow, lowest first; a module may import its own floor and the
floors below it, never one above:

  base      utilities every job shares, with no knowledge of models, data or suites: errors,
            values, paths, run-directory writes, precision and FLOP arithmetic, memory, shapes,
            the W&B and provenance records, intervals (effective lengths' too), and the results
            store with its out-of-memory record (``oom``), since the store is the single owner of
            disk writes that backends, suites and the trainer all append to.
  models    finding, converting and loading a model (harness.models): tokenizers come from here.
  data      corpus readers, the embedded corpus, mixtures, packing (harness.data). Below the
            suites and the trainer, which read it; above models, because the embedded corpus and
            packing count tokens with a model's tokenizer (``models.resolve``).
  backends  the one protocol a suite calls to run a model (hf, vLLM, a served model).
  tasks     suites (harness.tasks): cells, prompts, scores; the registry in tasks/__init__.py.
  run       the jobs: the suite runner, ``evaluate`` (suites x backend -> store), its lm-eval
            rows, and the trainer (harness.trainer: shards + model -> checkpoints). Evaluation
            and training sit side by side; neither imports the other.
  reports   figures and documents, drawn from results stores (and the suites' summaries) only.
  entry     what a user calls: the CLI, the Python API (and ``harness/__init__``, which hands
            ``harness.run`` to it), ``harness ablate`` (train, evaluate, report in one plan).

Every import counts: module-level ones and those inside a function (deferred to keep a command
light) alike. Imports under ``if TYPE_CHECKING:`` run only for a type checker: they count for
floors, but, never executed, they cannot form an import circle, so circles are found among the
others. The suite registry's ``"module:Class"`` strings (imported by name, on use) point within
the tasks floor and are not imports here.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The source directories and the package each one is (pyproject.toml's package-dir).
PACKAGE_DIRS = {"harness": "harness", "tasks": "harness.tasks", "trainer": "harness.trainer",
                "reports": "harness.reports"}
FLOORS = ("base", "models", "data", "backends", "tasks", "run", "reports", "entry")
# Whole packages on one floor (a module is placed by the longest prefix that names it) ...
PACKAGE_FLOORS = {"harness.models": "models", "harness.data": "data", "harness.backends": "backends",
                  "harness.tasks": "tasks", "harness.trainer": "run", "harness.reports": "reports"}
# ... and the modules directly in harness/, one by one: a new one must be placed here.
MODULE_FLOORS = {
    "base": ("errors", "values", "paths", "rundir", "pypi", "precision", "flops", "profiling", "memory",
             "shapes", "flex_cpu", "distributed", "tracking", "provenance", "uncertainty", "store", "oom",
             "estimate", "config", "power", "effective_length"),
    "run": ("runner", "evaluate", "lm_eval_format", "probe"),
    "entry": ("cli", "api", "ablate", "__main__"),
}
LONG_FUNCTION = 60   # lines, from its def to its last line (decorators not counted)


@dataclass(frozen=True)
class Import:
    source: str     # the importing module
    target: str     # the imported module (a package's __init__ where the name is not a submodule)
    line: int
    where: str      # "module" | "function" | "typing"


@dataclass
class Report:
    root: Path
    modules: dict[str, Path]
    floor_of: dict[str, str]
    imports: list[Import]
    unplaced: list[str] = field(default_factory=list)
    upward: list[Import] = field(default_factory=list)
    circles: list[list[str]] = field(default_factory=list)
    functions: int = 0
    long_functions: list[tuple[str, str, int]] = field(default_factory=list)   # (file:line, name, lines)

    @property
    def violations(self) -> int:
        return len(self.unplaced) + len(self.upward) + len(self.circles) + len(self.long_functions)


def discover(root: Path) -> dict[str, Path]:
    """Every module of the package, named as it is imported."""
    modules: dict[str, Path] = {}
    for directory, package in PACKAGE_DIRS.items():
        for path in sorted((root / directory).rglob("*.py")):
            parts = list(path.relative_to(root / directory).with_suffix("").parts)
            if directory == "harness" and parts[0] in PACKAGE_DIRS:   # not a source dir of its own
                continue
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def floor(module: str) -> str | None:
    if module == "harness":   # harness/__init__.py: hands harness.run and Results to the API
        return "entry"
    prefixes = [p for p in PACKAGE_FLOORS if module == p or module.startswith(p + ".")]
    if prefixes:
        return PACKAGE_FLOORS[max(prefixes, key=len)]
    name = module.removeprefix("harness.")
    return next((f for f, names in MODULE_FLOORS.items() if name in names), None)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, where: str = "module"):
    """(node, where) for every node, ``where`` saying whether it runs at import, in a function, or
    only for a type checker."""
    for child in ast.iter_child_nodes(node):
        here = where
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and where == "module":
            here = "function"
        yield child, here
        if isinstance(child, ast.If) and _is_type_checking(child):
            yield from _walk_typing(child, here)
        else:
            yield from _walk(child, here)


def _walk_typing(node: ast.If, where: str):
    for child in node.body:
        yield child, "typing"
        yield from _walk(child, "typing")
    for child in node.orelse:
        yield child, where
        yield from _walk(child, where)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` loads: itself, else its nearest package that is one of ours."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in modules else None


def imports_of(module: str, path: Path, tree: ast.AST, modules: dict[str, Path]) -> list[Import]:
    out: list[Import] = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node, where in _walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from the package, up level - 1
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import name`: the submodule when there is one, else the package itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            resolved = _resolve(target, modules) if target.split(".")[0] == "harness" else None
            if resolved and resolved != module:
                out.append(Import(module, resolved, node.lineno, where))
    return out


def circles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over executed imports."""
    graph: dict[str, set[str]] = defaultdict(set)
    for i in imports:
        if i.where != "typing":
            graph[i.source].add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def analyse(root: Path = ROOT) -> Report:
    modules = discover(root)
    report = Report(root, modules, {}, [])
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        report.imports += imports_of(module, path, tree, modules)
        place = floor(module)
        if place is None:
            report.unplaced.append(module)
        else:
            report.floor_of[module] = place
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                report.functions += 1
                lines = node.end_lineno - node.lineno + 1
                if lines > LONG_FUNCTION:
                    report.long_functions.append((f"{path.relative_to(root)}:{node.lineno}", node.name, lines))
    rank = {f: i for i, f in enumerate(FLOORS)}
    report.upward = [i for i in report.imports if i.source in report.floor_of and i.target in report.floor_of
                     and rank[report.floor_of[i.target]] > rank[report.floor_of[i.source]]]
    report.circles = circles(report.imports)
    return report


def render(report: Report, names: bool = False) -> str:
    lines = ["modules per floor (lowest first; a floor imports only itself and the floors below):"]
    for f in FLOORS:
        mine = sorted(m.removeprefix("harness.") for m, p in report.floor_of.items() if p == f)
        lines.append(f"  {f:<9} {len(mine):>3}" + (f"  {', '.join(mine)}" if names else ""))
    lines.append(f"  {'all':<9} {len(report.modules):>3}")
    where = {w: sum(1 for i in report.imports if i.where == w) for w in ("module", "function", "typing")}
    pairs = len({(i.source, i.target) for i in report.imports})
    lines.append(f"imports between modules: {len(report.imports)}, {pairs} distinct pairs ({where['module']} "
                 f"module-level, {where['function']} in a function, {where['typing']} for type checking only)")
    lines.append(f"modules on no floor: {len(report.unplaced)}")
    lines += [f"  {m} ({report.modules[m].relative_to(report.root)}): add it to MODULE_FLOORS"
              for m in report.unplaced]
    lines.append(f"imports that go up a floor: {len(report.upward)}")
    lines += [f"  {i.source} ({report.floor_of[i.source]}) -> {i.target} ({report.floor_of[i.target]}), "
              f"line {i.line}, {i.where}" for i in report.upward]
    lines.append(f"import circles: {len(report.circles)}")
    lines += [f"  {' <-> '.join(c)}" if len(c) == 2 else f"  {len(c)} modules: {', '.join(c)}"
              for c in report.circles]
    lines.append(f"functions over {LONG_FUNCTION} lines in harness/, tasks/, trainer/, reports/: "
                 f"{len(report.long_functions)} of {report.functions}")
    lines += [f"  {where_}: {name} ({n} lines)" for where_, name, n in report.long_functions]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    names = "--names" in argv
    paths = [a for a in argv if not a.startswith("--")]
    report = analyse(Path(paths[0]) if paths else ROOT)
    print(render(report, names))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
