"""The architecture, checked on the sources (every first-party import, at any depth, relative ones resolved):
dependencies point one way, pico (the library) <- pipeline (steps) <- flows, with skills plugged into the pipeline
through the ``callable`` hook and bench on top; pico imports no orchestration package; no import cycle between
modules; no module imports another's private name; a first-party import inside a function is listed here with why."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"prefect", "prefect_dask", "mlflow", "dvc", "dask", "distributed", "lm_eval"}  # for pico
LAYERS = {"pico": {"pico"}, "skills": {"pico", "skills"}, "pipeline": {"pico", "pipeline"},
          "flows": {"pico", "pipeline", "flows"}, "bench": {"pico", "pipeline", "flows", "skills", "bench"},
          "stack": {"stack"}}
# first-party imports inside a function of the library, the pipeline or the flows ("path:module": why); an entry
# that no longer applies fails the test. (The workloads, skills/ and bench/, import their heavy parts where they run.)
INNER_IMPORTS: dict[str, str] = {}
STRICT = ("pico", "pipeline", "flows")


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _exists(module: str) -> bool:
    p = ROOT.joinpath(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _sources():
    for top in LAYERS:
        yield from sorted((ROOT / top).rglob("*.py"))


def imports(path: Path):
    """(line, module, names, inside a function) of every first-party import of ``path``; ``from pkg import sub``
    counts as importing the submodule pkg.sub when there is one."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found = [(f"{mod}.{a.name}", []) if _exists(f"{mod}.{a.name}") else (mod, [a.name]) for a in node.names]
        else:
            continue
        for mod, names in found:
            if mod.split(".")[0] in LAYERS:
                yield node.lineno, mod, names, id(node) in inner


def graph() -> dict[str, set[str]]:
    return {_module(p): {m for _, m, _, _ in imports(p)} for p in _sources()}


def test_dependencies_point_one_way():
    wrong = [f"{m} -> {t}" for m, ts in graph().items() for t in sorted(ts)
             if t.split(".")[0] not in LAYERS[m.split(".")[0]]]
    assert not wrong, "imports against pico <- pipeline <- flows (skills -> pico only):\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    g = {m: {t for t in ts if t != m and t in graph_modules} for m, ts in graph().items()}
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done

    def visit(m, stack):
        state[m] = 1
        for t in sorted(g.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t, stack + [t])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (cycle := visit(m, [m])):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


graph_modules = {_module(p) for p in _sources()}


def test_no_private_name_crosses_a_module():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {n} from {m}" for p in _sources()
           for line, m, names, _ in imports(p) for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def test_first_party_imports_inside_functions_are_listed_with_a_reason():
    found = {f"{p.relative_to(ROOT)}:{m}" for p in _sources() for _, m, _, inner in imports(p)
             if inner and p.relative_to(ROOT).parts[0] in STRICT}
    assert found == set(INNER_IMPORTS), ("unlisted: " + ", ".join(sorted(found - set(INNER_IMPORTS)))
                                         + "; stale: " + ", ".join(sorted(set(INNER_IMPORTS) - found)))


def test_pico_sources_import_no_orchestration():
    bad = []
    for path in sorted((ROOT / "pico").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                    if n.split(".")[0] in FORBIDDEN]
    assert bad == []


def test_importing_pico_loads_no_orchestration():
    code = ("import sys, pico, pico.cli, pico.merge, pico.methods, pico.tara; "
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_the_checker_sees_function_level_relative_and_submodule_imports(tmp_path):
    """The checker itself: the pipeline's build step imports the DVC and evaluation modules (a `from . import x` is
    the submodule), and a relative import inside a function is found and flagged as inner."""
    found = {m for _, m, _, _ in imports(ROOT / "pipeline" / "build.py")}
    assert {"pipeline.evaluation", "pipeline.dvcio", "pipeline.settings"} <= found
    probe = ROOT / "pipeline" / "_probe_for_test.py"
    probe.write_text("def f():\n    from .gate import judge, _check\n")
    try:
        assert list(imports(probe)) == [(2, "pipeline.gate", ["judge"], True), (2, "pipeline.gate", ["_check"], True)]
    finally:
        probe.unlink()
