"""The code reads in one direction: data flows down the stages, nothing imports a stage above its
own, no module imports itself back, and each file stays small enough to read in one sitting."""
import ast
from pathlib import Path

from conftest import ROOT

# the stages, in the order a run goes through them; a module may import its own stage and those before
STAGES = [("base", ["common", "config", "dist"]), ("ingest", ["ingest", "downsample"]),
          ("network", ["model", "train"]), ("predictor", ["predictor"]), ("reporting", ["reporting"]),
          ("predict", ["predict"]), ("main", ["main"])]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60


def modules() -> dict[str, Path]:
    """Every module of the tool: dotted name -> file."""
    found = {}
    for path in ROOT.glob("*.py"):
        found[path.stem] = path
    for package in ("ingest", "predictor", "reporting"):
        for path in (ROOT / package).glob("*.py"):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def stage(name: str) -> int:
    return next(i for i, (_, tops) in enumerate(STAGES) if name.split(".")[0] in tops)


def imports(path: Path, known: set[str]) -> set[str]:
    """The project's modules a file imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module:   # a submodule, or a name of the module
            out.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                       for a in node.names)
    out &= known
    return out


def test_no_module_imports_a_stage_above_its_own_and_there_is_no_import_cycle():
    found = modules()
    graph = {name: imports(path, set(found)) - {name} for name, path in found.items()}
    upward = [f"{a} -> {b}" for a, deps in graph.items() for b in deps if stage(b) > stage(a)]
    assert not upward
    assert not graph["train"] & {m for m in found if m.startswith(("predictor", "predict"))}
    done, path = set(), []

    def visit(name):   # depth first: a module met again on the current path closes a cycle
        assert name not in path, " -> ".join(path[path.index(name):] + [name])
        if name in done:
            return
        path.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        path.pop()
        done.add(name)
    for name in sorted(graph):
        visit(name)


def test_every_module_and_function_is_short_enough_to_read_in_one_sitting():
    files = [*modules().values(), *(ROOT / "benchmarks").glob("*.py")]
    long_modules = [f"{p.relative_to(ROOT)} ({n})" for p in files
                    if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    long_functions = [f"{p.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1})"
                      for p in files for node in ast.walk(ast.parse(p.read_text()))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long_modules and not long_functions
