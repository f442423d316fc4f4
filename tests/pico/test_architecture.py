"""Dependencies point one way: pico (the library) <- pipeline (steps) <- flows; pico imports no orchestration
package, nothing of the pipeline, the suite or the benchmarks; no cycle between first-party packages."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"prefect", "prefect_dask", "mlflow", "dvc", "dask", "distributed", "lm_eval"}
FIRST_PARTY = ("pico", "pipeline", "flows", "skills", "bench")


def imports(package: str):
    """(file, line, top-level module) of every absolute import in a package, function-level ones included."""
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                yield path.relative_to(ROOT), node.lineno, name.split(".")[0]


def test_pico_sources_import_no_orchestration():
    bad = [f"{path}:{line} imports {name}" for path, line, name in imports("pico") if name in FORBIDDEN]
    assert bad == []


def test_importing_pico_loads_no_orchestration():
    code = ("import sys, pico, pico.cli, pico.merge, pico.methods, pico.tara; "
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_pico_imports_nothing_of_the_pipeline_suite_or_benchmarks():
    bad = [f"{path}:{line} imports {name}" for path, line, name in imports("pico")
           if name in FIRST_PARTY and name != "pico"]
    assert bad == []  # `pico lineage` comes from the pipeline's entry point (pyproject.toml), not an import


def test_pipeline_imports_nothing_of_the_flows():
    assert [f"{path}:{line}" for path, line, name in imports("pipeline") if name == "flows"] == []


def test_no_import_cycle_between_first_party_packages():
    graph = {p: {name for _, _, name in imports(p) if name in FIRST_PARTY and name != p} for p in FIRST_PARTY}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        assert node not in path, "import cycle: " + " -> ".join(path[path.index(node):] + [node])
        if node not in done:
            for nxt in sorted(graph[node]):
                visit(nxt, path + [node])
            done.add(node)

    for package in FIRST_PARTY:
        visit(package, [])
    assert "pico" in graph["pipeline"] and "pipeline" in graph["flows"]  # the direction the walk above checks
