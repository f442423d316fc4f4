"""Evaluate the SmolLM2 suite's base (optionally with a PEFT adapter) through lm-eval, settings from params.

    from skills.smollm2.evaluate import evaluate
    evaluate("build/smollm2/base", "build/smollm2/adapters/math")     # -> {"math": 0.93, "code": 0.41, ...}

``lm_eval.simple_evaluate(model="hf", model_args="pretrained=BASE,peft=ADAPTER,dtype=...", device=...,
apply_chat_template=..., num_fewshot=..., batch_size=...)`` with the suite's YAML tasks; every one of those settings
comes from params.yaml ``smollm2.eval`` (or the ``settings`` argument), so the same path serves an 8B model on a GPU.

The nightly pipeline calls it through :mod:`skills.smollm2.scorer` (``pipeline.eval.suite: callable``,
``callable: skills.smollm2.scorer:suite``).
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULTS = {"device": "cpu", "dtype": "float32", "batch_size": 64, "apply_chat_template": True, "num_fewshot": 0,
            "max_gen_toks": 40, "threads": None, "model_args": ""}


def evaluate(base_dir, adapter_dir=None, skills=None, split: str = "test", limit: int | None = None, *,
             data_dir, tasks_dir, settings: dict | None = None, return_details: bool = False):
    """Accuracy (extracted answer == reference) per skill via lm-eval, on ``threads`` torch threads (null: every
    core), the caller's count restored afterwards."""
    import torch

    from skills.lmeval import SPLIT_SUFFIX

    cfg = {**DEFAULTS, **(settings or {})}
    unknown = set(cfg) - set(DEFAULTS) - {"split"}
    if unknown:
        raise ValueError(f"smollm2.eval: unknown settings {sorted(unknown)} (known: {sorted(DEFAULTS)})")
    if split not in SPLIT_SUFFIX:
        raise ValueError(f"split must be one of {sorted(SPLIT_SUFFIX)}, not {split!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(cfg["threads"] or os.cpu_count() or 1))  # null: every core (one evaluation at a time)
    try:
        return _evaluate(base_dir, adapter_dir, skills, split, limit, data_dir, tasks_dir, cfg, return_details)
    finally:
        torch.set_num_threads(before)


def _evaluate(base_dir, adapter_dir, skills, split, limit, data_dir, tasks_dir, cfg, return_details):
    from skills.evaluate import quiet
    from skills.lmeval import find_skills, task_manager
    from skills.smollm2.lmeval import task_name, write_tasks

    quiet()
    import lm_eval

    from skills.config import resolve

    data_dir = resolve(data_dir)
    skills, all_skills = find_skills(data_dir, skills)
    include = write_tasks(data_dir, tasks_dir, all_skills, int(cfg["max_gen_toks"]))
    base = str(resolve(base_dir).resolve())
    model_args = f"pretrained={base},dtype={cfg['dtype']}"
    if adapter_dir is not None:
        model_args += f",peft={resolve(adapter_dir).resolve()}"
    if cfg["model_args"]:
        model_args += "," + cfg["model_args"]
    names = {task_name(s, split): s for s in skills}
    res = lm_eval.simple_evaluate(
        model="hf", model_args=model_args, tasks=list(names), num_fewshot=int(cfg["num_fewshot"]),
        batch_size=int(cfg["batch_size"]), device=cfg["device"], limit=limit,
        apply_chat_template=bool(cfg["apply_chat_template"]), task_manager=task_manager(include),
        bootstrap_iters=0, log_samples=return_details, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
        fewshot_random_seed=0)
    acc = {s: float(res["results"][t]["exact_match,extract"]) for t, s in names.items()}
    return (acc, res) if return_details else acc


def main(argv: list[str] | None = None) -> None:
    from skills.smollm2.config import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", nargs="?", default=None)
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--split", default="test", choices=["test", "validation"])
    ap.add_argument("--skills", default=None, help="comma-separated subset")
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args(argv)
    p = load_params(a.params)
    t0 = time.time()
    acc = evaluate(a.base or p["paths"]["base"], a.adapter, a.skills.split(",") if a.skills else None, a.split,
                   a.limit, data_dir=p["paths"]["data"], tasks_dir=p["paths"]["tasks"],
                   settings={k: v for k, v in p["eval"].items() if k != "split"})
    print(json.dumps({"accuracy": acc, "average": sum(acc.values()) / len(acc),
                      "seconds": round(time.time() - t0, 1), "adapter": a.adapter, "split": a.split}, indent=1))


if __name__ == "__main__":
    main()
