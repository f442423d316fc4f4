"""The suite's knobs: params.yaml top-level ``smollm2:`` (paths made absolute, relative to the repository root)."""
from __future__ import annotations

import copy
from pathlib import Path

from skills.config import load_params as _load_all
from skills.config import resolve


def load_params(path: str | Path = "params.yaml") -> dict:
    all_params = _load_all(path)
    if "smollm2" not in all_params:
        raise KeyError(f"{path}: no top-level 'smollm2:' section")
    p = copy.deepcopy(all_params["smollm2"])
    p["paths"] = {k: str(resolve(v)) for k, v in p["paths"].items()}
    return p
