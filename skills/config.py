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


def resolve(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (REPO_ROOT / p)
