"""Evaluate a base model (optionally with a PEFT adapter) on the skills benchmark through lm-eval.

    from skills.evaluate import evaluate
    evaluate("build/suite/base", "build/suite/adapters/add")          # -> {"add": 0.99, "rev": 0.12, ...}

This goes through ``lm_eval.simple_evaluate(model="hf", model_args="pretrained=DIR,tokenizer=DIR,peft=ADAPTER")``
with the suite's YAML tasks loaded by ``TaskManager(include_path=...)``, exactly as a user evaluates an adapter.
The hub and datasets are forced offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1).

Command line: ``python -m skills.evaluate BASE [--adapter DIR] [--split test|validation] [--skills add,rev]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_DATA = "build/suite/data"


def quiet() -> None:
    for name in ("lm-eval", "lm_eval", "datasets", "transformers", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.utils.logging.set_verbosity_error()
    except Exception:  # pragma: no cover - optional
        pass


def evaluate(base_dir: str | Path, adapter_dir: str | Path | None = None, skills: list[str] | None = None,
             split: str = "test", limit: int | None = None, *, data_dir: str | Path = DEFAULT_DATA,
             tasks_dir: str | Path | None = None, batch_size: int = 256, max_gen_toks: int = 10,
             threads: int | None = 2, return_details: bool = False):
    """Exact-match accuracy per skill, ``{skill: accuracy}``, via ``lm_eval.simple_evaluate``.

    base_dir     a model directory holding model + tokenizer (the suite's base, or any hub-layout model)
    adapter_dir  a PEFT adapter directory (a team adapter or a merge output) or None for the bare base
    skills       subset of skills (default: every skill with data under data_dir)
    split        "test" (the benchmark) or "validation" (for choosing hyper-parameters such as a TA lambda)
    limit        evaluate only the first `limit` items of each skill
    With return_details=True returns (accuracies, raw lm-eval results dict)."""
    import torch

    from skills.config import resolve
    from skills.lmeval import (
        SPLIT_SUFFIX,
        find_skills,
        task_manager,
        task_name,
        write_tasks,
    )

    if split not in SPLIT_SUFFIX:
        raise ValueError(f"split must be one of {sorted(SPLIT_SUFFIX)}, not {split!r}")
    if threads:
        torch.set_num_threads(int(threads))
    quiet()
    import lm_eval

    data_dir = resolve(data_dir)
    skills, all_skills = find_skills(data_dir, skills)
    include = write_tasks(data_dir, tasks_dir, all_skills, max_gen_toks)
    base = str(resolve(base_dir).resolve())
    model_args = f"pretrained={base},tokenizer={base},dtype=float32"
    if adapter_dir is not None:
        model_args += f",peft={resolve(adapter_dir).resolve()}"
    names = {task_name(s, split): s for s in skills}
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=list(names),
        num_fewshot=0,
        batch_size=batch_size,
        device="cpu",
        limit=limit,
        task_manager=task_manager(include),
        bootstrap_iters=0,
        log_samples=return_details,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    acc = {}
    for t, s in names.items():
        m = res["results"][t]
        acc[s] = float(m.get("exact_match,none", m.get("exact_match")))
    return (acc, res) if return_details else acc


def average(acc: dict[str, float]) -> float:
    return sum(acc.values()) / max(1, len(acc))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--split", default="test", choices=["test", "validation"])
    ap.add_argument("--skills", default=None, help="comma-separated subset")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)
    t0 = time.time()
    acc = evaluate(a.base, a.adapter, a.skills.split(",") if a.skills else None, a.split, a.limit,
                   data_dir=a.data, batch_size=a.batch_size)
    out = {"accuracy": acc, "average": average(acc), "seconds": round(time.time() - t0, 1),
           "base": a.base, "adapter": a.adapter, "split": a.split}
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
