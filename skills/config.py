"""Reading the suite's knobs from params.yaml (top-level ``suite:`` key; other keys belong to other stages)."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_params(path: str | Path = "params.yaml") -> dict:
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = REPO_ROOT / p
    with open(p) as f:
        return yaml.safe_load(f) or {}


def load_suite_params(path: str | Path = "params.yaml") -> dict:
    """The ``suite:`` section with every path made absolute (relative paths are relative to the repo root)."""
    suite = copy.deepcopy(load_params(path)["suite"])
    suite["paths"] = {k: str(resolve(v)) for k, v in suite["paths"].items()}
    return suite


def portable(path: str | Path) -> str:
    """``path`` as written into saved artefacts: relative to the repo root when inside it (an absolute path would
    differ per checkout and change the bytes, hence the DVC hashes, of the same training run), else absolute."""
    p = Path(path).resolve()
    try:
        return p.relative_to(REPO_ROOT.resolve()).as_posix()
    except ValueError:
        return str(p)


def resolve(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (REPO_ROOT / p)
