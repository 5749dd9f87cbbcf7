"""The rooms of the library and who may enter them: no import cycle (function-level imports included), the
few-shot core below the stages, no stage package importing the train or evaluate stages, library code that logs
instead of printing, and a docs page that names every room."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("pipeline", "flows")


def _modules() -> dict[str, Path]:
    out = {}
    for room in ROOMS:
        for path in (REPO / room).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of a pipeline/flows module by module `name`."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target in MODULES:
                out.append((target, node.lineno, id(node) in nested))
    return out


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w, _, _ in GRAPH[v]:
            if w == v:
                continue
            if w not in index:
                visit(w)
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
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in MODULES:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_not_even_through_function_level_imports():
    assert _cycles() == []


def test_function_level_imports_say_why():
    """An import inside a function is kept only for start-up time, and says so (on its line or above its group)."""
    unexplained = []
    for name, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").split("\n")
        for target, lineno, nested in GRAPH[name]:
            if not nested:
                continue
            i = lineno - 1
            while i > 0 and re.match(r"^\s*(from|import) ", lines[i - 1]):
                i -= 1
            if "start-up" not in lines[lineno - 1] and "start-up" not in lines[i - 1]:
                unexplained.append(f"{path.relative_to(REPO)}:{lineno} imports {target}")
    assert unexplained == []


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def _importers_of(room: str) -> set[str]:
    return {name for name, imports in GRAPH.items() for target, _, _ in imports if _room(target) == room and _room(name) != room}


def test_the_few_shot_core_sits_below_every_stage():
    stages = {"pipeline.train", "pipeline.evaluate", "pipeline.prefix", "pipeline.predict", "pipeline.pretrain", "pipeline.registry",
              "pipeline.cli", "flows"}
    bad = [(name, target) for name, imports in GRAPH.items() if _room(name) == "pipeline.fewshot"
           for target, _, _ in imports if _room(target) in stages or target.startswith("flows")]
    assert bad == []


def test_the_train_and_evaluate_stages_are_entered_only_from_above():
    """Nothing in the library imports the train or evaluate stage packages (the registry names them as strings); only
    entry points (flows) may; and neither stage imports the other."""
    for room in ("pipeline.train", "pipeline.evaluate"):
        importers = {name for name in _importers_of(room) if not name.startswith("flows")}
        assert importers == set(), f"{room} is imported by {sorted(importers)}"


def test_library_code_logs_instead_of_printing():
    """No print() in library modules: only the command-line modules (and a module's own `main` / `_main` command line) print."""
    allowed = {"pipeline.cli", "pipeline.cli_common", "pipeline.predict.cli"}
    printing = []
    for name, path in MODULES.items():
        if name in allowed or not name.startswith("pipeline"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        mains = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name in ("main", "_main") for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print" and id(node) not in mains:
                printing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert printing == []


def test_importing_fsar_prints_nothing_and_configures_no_logging():
    code = (
        "import importlib, logging, pkgutil, pipeline, flows\n"
        "for m in pkgutil.walk_packages(pipeline.__path__, 'pipeline.'):\n"
        "    if 'vllm' not in m.name and not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "assert not logging.getLogger().handlers, logging.getLogger().handlers  # the library configures nothing\n"
        "import flows.fsar, flows.demo, pipeline.cli  # (Prefect sets up its own logging when imported)\n"
        "log = logging.getLogger('fsar')\n"
        "assert [type(h).__name__ for h in log.handlers] == ['NullHandler'], log.handlers\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == "" and run.stderr == ""


def test_the_architecture_page_names_every_room():
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    rooms = sorted({p.parent.relative_to(REPO).as_posix() for p in (REPO / "pipeline").glob("*/__init__.py")})
    missing = [room for room in rooms if f"{room.removeprefix('pipeline/')}/" not in page]
    assert missing == []
    for module in ("contract.py", "registry.py", "logs.py"):
        assert module in page
