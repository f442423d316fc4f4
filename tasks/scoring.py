"""Scores with per-sample outcomes: the validation split (to choose a candidate) and the test split (to gate it).

Validation (``score_validation``), by suite:

* ``skills``: the suite report's fast path, the KV-cached greedy decoder of ``skills.common`` on the validation
  JSONL (its outputs equal lm-eval's, tested in tests/test_skills_report.py), in-process, no lm-eval start-up;
  ``pipeline.search.limit`` items per skill (None: all).
* ``lm-eval``: lm-eval on ``pipeline.search.tasks`` (the user's validation tasks) with ``pipeline.search.limit``.
* ``callable``: the scorer with ``split="validation"``.

Test (``score_test``): lm-eval with ``log_samples`` (the skills suite's lm-eval tasks, or the user's task list), so
each item's 0/1 outcome is kept for the paired gate; a ``callable`` scorer may return per-item outcomes
(``{task: {item: 0/1}}`` or ``{task: [0/1, ...]}``) or plain scores. Records are cached by content (base, adapter
files, benchmark fingerprint) like ``tasks.benchmark``; the scores-only record is written to the same eval cache, so
the rest of the pipeline (baselines, DVC eval stage) reads the same numbers.

An item is named ``<doc_id>:<doc_hash[:12]>`` (lm-eval) or ``<index>:<sha of prompt+answer>`` (fast path): two
models' outcomes are compared only on items that are the same by content, not merely by position.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

from . import benchmark
from .config import Settings, digest

SEARCH_DEFAULTS = {"limit": None, "tasks": [], "finalists": None}


def search_config(settings: Settings) -> dict:
    return {**SEARCH_DEFAULTS, **(settings.pipeline.get("search") or {})}


def _item_id(i, text: str) -> str:
    return f"{i}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def with_stats(outcomes: dict[str, dict] | None, scores: dict[str, float] | None = None) -> dict:
    """The record of one evaluation: scores (and, with outcomes, stderr, mean ± stderr, n per task)."""
    from .gate import summarize

    if outcomes:
        s = summarize(outcomes)
        return {**s, "outcomes": outcomes}
    scores = dict(sorted((scores or {}).items()))
    return {"scores": scores, "stderr": {}, "mean": sum(scores.values()) / max(1, len(scores)),
            "mean_stderr": None, "n": {}, "outcomes": None}


def validation_fingerprint(settings: Settings) -> dict:
    """What validation scores depend on besides the model: the scorer, its settings and the validation data."""
    cfg, s = settings.eval_config(), search_config(settings)
    fp = {"suite": cfg["suite"], "limit": s["limit"], "skills": cfg["skills"]}
    if cfg["suite"] == "skills":
        data = benchmark.suite_data_dir(settings)
        if not data.is_dir():
            raise benchmark.BenchmarkError(f"the skills suite data {data} is missing; build the suite first")
        fp["data"] = benchmark._files_digest(data.glob("*/validation.jsonl"))
        fp["scorer"] = "fast-greedy"
        fp["max_gen_toks"] = _max_gen_toks(settings)
    elif cfg["suite"] == "lm-eval":
        if not s["tasks"]:
            raise benchmark.BenchmarkError("pipeline.search.tasks is empty: name the lm-eval tasks candidates are "
                                           "chosen on (a validation split; never the test tasks)")
        fp.update(tasks=list(s["tasks"]), metric=cfg["metric"])
        if cfg["include_path"]:
            inc = settings.resolve(cfg["include_path"])
            fp["include"] = benchmark._files_digest(p for p in inc.rglob("*") if p.is_file())
    else:
        fp["callable"] = cfg["callable"]
    return fp


def _max_gen_toks(settings: Settings) -> int:
    import yaml

    suite = (yaml.safe_load(settings.params_path.read_text()) or {}).get("suite") or {}
    return int((suite.get("eval") or {}).get("max_gen_toks", 10))


def _skills(settings: Settings, split: str) -> list[str]:
    data = benchmark.suite_data_dir(settings)
    names = sorted(p.name for p in data.iterdir() if (p / f"{split}.jsonl").is_file())
    wanted = settings.eval_config()["skills"]
    return [s for s in names if not wanted or s in wanted]


_LOAD_LOCK = threading.Lock()


def fast_outcomes(base_dir, adapter_dir, data_dir: Path, skills: list[str], split: str, limit: int | None,
                  max_new: int = 10, batch_size: int = 256) -> dict[str, dict]:
    """Per-item 0/1 outcomes of the fast greedy decoder (the suite report's validation scorer)."""
    from skills.base import load_base
    from skills.common import greedy
    from skills.data import read_jsonl

    with _LOAD_LOCK:  # transformers' loading (meta-device init) is not thread-safe: one load at a time
        model = load_base(Path(base_dir))
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    out = {}
    for skill in skills:
        recs = read_jsonl(Path(data_dir) / skill / f"{split}.jsonl")[: limit or None]
        preds = greedy(model, [r["prompt"] for r in recs], max_new=max_new, batch_size=batch_size)
        out[skill] = {_item_id(i, r["prompt"] + "=" + r["answer"]): int(p.strip() == r["answer"])
                      for i, (p, r) in enumerate(zip(preds, recs))}
    return out


def _lmeval_outcomes(res: dict, names: dict[str, str], metric: str) -> dict[str, dict]:
    out = {}
    for task, label in names.items():
        samples = (res.get("samples") or {}).get(task)
        if not samples:
            raise benchmark.BenchmarkError(f"lm-eval returned no samples for task {task!r}")
        items = {}
        for s in samples:
            value = s.get(metric)
            if value is None:
                raise benchmark.BenchmarkError(f"task {task!r}: samples have no metric {metric!r}")
            items[f"{s['doc_id']}:{str(s.get('doc_hash', ''))[:12]}"] = float(value)
        out[label] = items
    return out


def _lmeval(settings: Settings, base_dir, adapter_dir, tasks: list[str], limit) -> dict:
    import lm_eval

    cfg = settings.eval_config()
    model_args = f"pretrained={base_dir},tokenizer={base_dir},dtype=float32"
    if adapter_dir is not None:
        model_args += f",peft={adapter_dir}"
    include = str(settings.resolve(cfg["include_path"])) if cfg["include_path"] else None
    return lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=list(tasks), num_fewshot=0,
                                   batch_size=int(cfg["batch_size"]), device="cpu", limit=limit,
                                   task_manager=benchmark._task_manager(include), bootstrap_iters=0,
                                   log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                   fewshot_random_seed=0)


def _callable(settings: Settings, base_dir, adapter_dir, split: str, limit):
    import importlib
    import sys

    cfg = settings.eval_config()
    if str(settings.project) not in sys.path:
        sys.path.append(str(settings.project))
    module, _, fn = cfg["callable"].partition(":")
    got = getattr(importlib.import_module(module), fn)(str(base_dir), adapter_dir and str(adapter_dir), split, limit)
    outcomes, scores = {}, {}
    for task, value in got.items():
        if isinstance(value, dict):
            outcomes[str(task)] = {str(k): float(v) for k, v in value.items()}
        elif isinstance(value, (list, tuple)):
            outcomes[str(task)] = {str(i): float(v) for i, v in enumerate(value)}
        else:
            scores[str(task)] = float(value)
    if outcomes and scores:
        raise benchmark.BenchmarkError(f"{cfg['callable']}: return per-item outcomes for every task or for none")
    return outcomes or None, scores


def score_validation(settings: Settings, base_dir, adapter_dir, threads: int | None = 1) -> dict:
    """Validation scores (with per-sample outcomes where the scorer has them) of base + adapter."""
    cfg, s = settings.eval_config(), search_config(settings)
    if cfg["suite"] == "skills":
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        data = benchmark.suite_data_dir(settings)
        return with_stats(fast_outcomes(base_dir, adapter_dir, data, _skills(settings, "validation"), "validation",
                                        s["limit"], _max_gen_toks(settings), int(cfg["batch_size"])))
    if cfg["suite"] == "lm-eval":
        with benchmark._EVAL_LOCK:
            res = _lmeval(settings, base_dir, adapter_dir, s["tasks"], s["limit"])
        return with_stats(_lmeval_outcomes(res, {t: t for t in s["tasks"]}, cfg["metric"]))
    outcomes, scores = _callable(settings, base_dir, adapter_dir, "validation", s["limit"])
    return with_stats(outcomes, scores)


def _test_run(settings: Settings, base_dir, adapter_dir) -> dict:
    cfg = settings.eval_config()
    if cfg["suite"] == "skills":
        from skills.evaluate import evaluate
        from skills.lmeval import task_name

        skills = _skills(settings, cfg["split"])
        acc, res = evaluate(base_dir, adapter_dir, skills=skills, split=cfg["split"], limit=cfg["limit"],
                            data_dir=benchmark.suite_data_dir(settings), batch_size=int(cfg["batch_size"]),
                            tasks_dir=settings.work / "lm_eval_tasks", return_details=True)
        rec = with_stats(_lmeval_outcomes(res, {task_name(s, cfg["split"]): s for s in skills}, "exact_match"))
        for skill, value in acc.items():  # the per-sample mean is lm-eval's own score
            if abs(rec["scores"][skill] - value) > 1e-9:
                raise benchmark.BenchmarkError(f"{skill}: samples give {rec['scores'][skill]}, lm-eval {value}")
        return rec
    if cfg["suite"] == "lm-eval":
        res = _lmeval(settings, base_dir, adapter_dir, cfg["tasks"], cfg["limit"])
        return with_stats(_lmeval_outcomes(res, {t: t for t in cfg["tasks"]}, cfg["metric"]))
    outcomes, scores = _callable(settings, base_dir, adapter_dir, cfg["split"], cfg["limit"])
    return with_stats(outcomes, scores)


TEST_READS: list[str] = []  # labels of test-split evaluations this process actually ran (not cache hits)


def score_test(settings: Settings, base: dict, adapter_dir, label: str) -> dict:
    """Test-split scores with per-sample outcomes, cached by content; the scores-only record goes to the eval cache
    too. Returns the record with ``label`` and ``cached``."""
    fingerprint = benchmark.benchmark_fingerprint(settings)
    key = benchmark.eval_key(settings, base["sha256"], adapter_dir, fingerprint)
    path = settings.work / "eval-samples" / f"{key[:32]}.json"
    if path.is_file():
        return {**json.loads(path.read_text()), "label": label, "cached": True}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    for t in list(benchmark._PREWARM):
        t.join()
    t0 = time.time()
    with benchmark._EVAL_LOCK:
        rec = _test_run(settings, base["path"], adapter_dir)
    TEST_READS.append(label)
    if not rec["scores"]:
        raise benchmark.BenchmarkError(f"{label}: the benchmark returned no scores")
    rec = {"key": key, **rec, "seconds": round(time.time() - t0, 2)}
    _write_json(path, rec)
    plain = settings.work / "eval-cache" / f"{key[:32]}.json"
    if not plain.is_file():
        _write_json(plain, {"key": key, "scores": rec["scores"], "mean": rec["mean"], "seconds": rec["seconds"]})
    return {**rec, "label": label, "cached": False}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    tmp.replace(path)


def outcomes_table(records: dict[str, dict]) -> dict[str, list]:
    """Per-sample outcomes of several models as one column-oriented table (for ``mlflow.log_table``)."""
    cols: dict[str, list] = {"model": [], "task": [], "item": [], "outcome": []}
    for model, rec in records.items():
        for task, items in sorted((rec.get("outcomes") or {}).items()):
            for item, value in sorted(items.items()):
                cols["model"].append(model)
                cols["task"].append(task)
                cols["item"].append(item)
                cols["outcome"].append(value)
    return cols


__all__ = ["score_validation", "score_test", "validation_fingerprint", "outcomes_table", "with_stats", "digest"]
