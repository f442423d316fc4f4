"""The repository's static checks, configured in pyproject.toml: ruff (pyflakes with unused imports, isort) over the
whole tree, and mypy's basic type check of the pipeline and the flows."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_finds_nothing():
    proc = _run("ruff", "check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_finds_nothing():
    proc = _run("mypy", "--cache-dir", str(ROOT / "build" / "mypy-cache"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
