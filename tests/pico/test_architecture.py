"""pico/ is a pure library: importing all of it pulls in no orchestration, tracking or versioning package."""

import ast
import subprocess
import sys
from pathlib import Path

FORBIDDEN = {"prefect", "prefect_dask", "mlflow", "dvc", "dask", "distributed", "lm_eval"}
PICO = Path(__file__).resolve().parents[2] / "pico"


def test_pico_sources_import_no_orchestration():
    for path in PICO.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_importing_pico_loads_no_orchestration():
    code = ("import sys, pico, pico.cli, pico.merge, pico.methods; "
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
