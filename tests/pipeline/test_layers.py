"""The pipeline's layers: pico <- pipeline <- flows, one way; skills plugs into pipeline through the `callable` hook.

(pico's own purity is tests/pico/test_architecture.py.)"""

import ast
from pathlib import Path

PICO = Path(__file__).resolve().parents[2] / "pico"

ROOT = PICO.parent
LAYERS = {"pico": {"pico"}, "skills": {"pico", "skills"}, "pipeline": {"pico", "pipeline"},
          "flows": {"pico", "pipeline", "flows"}}
UPWARD_ALLOWED: set[tuple[str, str]] = set()  # none: `pico lineage` is a `pico.commands` entry point


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def first_party_imports(path: Path) -> set[str]:
    """Every first-party module ``path`` imports, at any depth (imports inside functions count too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{mod}.{a.name}" if _exists(f"{mod}.{a.name}") else mod for a in node.names]
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] in LAYERS}
    return found


def _exists(module: str) -> bool:
    p = ROOT.joinpath(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for top in LAYERS:
        for path in sorted((ROOT / top).rglob("*.py")):
            graph[_module_name(path)] = first_party_imports(path)
    return graph


def test_dependencies_point_one_way():
    wrong = []
    for module, imports in _graph().items():
        allowed = LAYERS[module.split(".")[0]]
        wrong += [f"{module} -> {t}" for t in sorted(imports)
                  if t.split(".")[0] not in allowed and (module, t) not in UPWARD_ALLOWED]
    assert not wrong, "imports against the layering pico <- pipeline <- flows (skills -> pico only):\n" + "\n".join(wrong)


def test_pipeline_and_suite_modules_have_no_import_cycles():
    graph = {m: {t for t in ts if t.split(".")[0] in ("pipeline", "flows", "skills") and t != m}
             for m, ts in _graph().items() if m.split(".")[0] in ("pipeline", "flows", "skills")}
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done

    def visit(m, stack):
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t, stack + [t])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m, [m])):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_architecture_check_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: an import hidden in a function and a relative one are both found."""
    src = ROOT / "pipeline" / "build.py"
    found = first_party_imports(src)
    assert {"pipeline.evaluation", "pipeline.dvcio", "pipeline.settings"} <= found
