"""A miniature configuration of the suite (same code, few items, few steps) for tests and smoke runs.

    from skills.tiny import build_tiny_suite
    paths = build_tiny_suite("/tmp/suite")   # {"data": ..., "base": ..., "adapters": {"add": ..., ...}}

Builds in seconds on a CPU; the models are far too small and short-trained to be accurate, only to be real.
"""
from __future__ import annotations

import copy
from pathlib import Path

TINY = {
    "data": {
        "seed": 7, "skills": ["add", "rev", "sort", "code", "pct", "fact"], "n_train": 60, "n_validation": 12,
        "n_test": 12, "fact_table_size": 10, "hard_frac": 0.65, "p_correct_easy": 0.85, "p_correct_hard": 0.3,
        "copy_frac": 0.1, "n_pretrain": 600,
    },
    "base": {
        "seed": 0, "threads": 1, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "max_position_embeddings": 64, "steps": 30, "batch_size": 16, "lr": 1e-2,
        "warmup": 5, "weight_decay": 0.0, "prompt_loss_weight": 0.1,
    },
    "adapters": {
        "common": {
            "seed": 0, "threads": 1, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"],
            "lora_dropout": 0.0, "batch_size": 16, "replay_frac": 0.5, "lr": 5e-3, "warmup": 2, "weight_decay": 0.0,
            "steps": 6,
        },
        "runs": {
            "add": {"skills": ["add"], "r": 4, "lora_alpha": 8},
            "rev": {"skills": ["rev"], "r": 8, "lora_alpha": 8, "use_rslora": True},
            "multitask": {"skills": ["add", "rev"], "r": 8, "lora_alpha": 8, "steps": 8},
        },
    },
}


def tiny_params(**overrides) -> dict:
    p = copy.deepcopy(TINY)
    for section, values in overrides.items():
        p[section].update(values)
    return p


def build_tiny_suite(root: str | Path, params: dict | None = None, adapters: list[str] | None = None) -> dict:
    """data -> base -> adapters under root (root/data, root/base, root/adapters/<name>); returns the paths."""
    from skills.adapters import train_adapter
    from skills.base import train_base
    from skills.data import write_suite_data

    p = params or tiny_params()
    root = Path(root)
    write_suite_data(p["data"], root / "data")
    train_base(p["base"], root / "data", root / "base", log_every=10**9)
    out = {"data": str(root / "data"), "base": str(root / "base"), "adapters": {}}
    for name, run in p["adapters"]["runs"].items():
        if adapters is not None and name not in adapters:
            continue
        train_adapter(root / "base", root / "data", run, p["adapters"]["common"], root / "adapters" / name)
        out["adapters"][name] = str(root / "adapters" / name)
    return out
