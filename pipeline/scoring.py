"""Scores with per-sample outcomes: the validation split (to choose a candidate) and the test split (to gate it).

By suite (``pipeline.eval.suite``):

* a plugged-in scorer (``skills``, ``callable``): its optional ``outcomes(base_dir, adapter_dir, split, limit, *,
  context)`` method returns ``{task: {item: 0/1}}``; the skills suite scores the validation split with the suite
  report's fast greedy decoder and the test split through lm-eval's ``log_samples`` (skills/scorer.py). Without that
  method the scorer itself is called; it may return per-item outcomes (``{task: {item: 0/1}}`` or
  ``{task: [0/1, ...]}``) or plain scores.
* ``lm-eval``: ``simple_evaluate(log_samples=True)`` on ``eval.tasks`` (test) or ``search.tasks`` (validation).

Validation uses ``pipeline.search.limit`` items per task. Test records are cached by content (base, adapter files,
benchmark fingerprint) like :mod:`pipeline.evaluation`, whose scores-only cache gets the same record, so baselines, the
DVC eval stage and reruns read the same numbers. Items are named by lm-eval's doc id and document hash (or the
scorer's ids): two models' outcomes are compared only on the same items.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from . import evaluation
from .settings import Settings, digest
from .records import EvalResult, FetchedSource


def with_stats(outcomes: dict[str, dict] | None, scores: dict[str, float] | None = None) -> dict:
    """The record of one evaluation: scores (and, with outcomes, stderr, mean ± stderr, n per task)."""
    from .gate import summarize

    if outcomes:
        s = summarize(outcomes)
        return {**s, "outcomes": outcomes}

    scores = dict(sorted((scores or {}).items()))
    return {"scores": scores, "stderr": {}, "mean": sum(scores.values()) / max(1, len(scores)),
            "mean_stderr": None, "n": {}, "outcomes": None}


def _context(settings: Settings, split: str, limit):
    return evaluation.context(settings.model_copy(update={"pipeline": settings.pipeline.model_copy(update={
        "eval": settings.pipeline.eval.model_copy(update={"split": split, "limit": limit})})}))


def validation_fingerprint(settings: Settings) -> dict:
    """What validation scores depend on besides the model: the scorer, its settings and the validation data."""
    cfg, s = settings.pipeline.eval, settings.pipeline.search
    fp = {"suite": cfg.suite, "limit": s.limit, "skills": cfg.skills, "split": "validation"}
    if cfg.suite == "lm-eval":
        if not s.tasks:
            raise evaluation.BenchmarkError("pipeline.search.tasks is empty: name the lm-eval tasks candidates are "
                                           "chosen on (a validation split; never the test tasks)")
        fp.update(tasks=list(s.tasks), metric=cfg.metric, **evaluation.lmeval_model_settings(cfg))
        if cfg.include_path:
            inc = settings.resolve(cfg.include_path)
            fp["include"] = evaluation.files_digest(p for p in inc.rglob("*") if p.is_file())
        return fp
    fp["callable"] = evaluation.scorer_name(cfg)
    scorer = evaluation.load_scorer(settings)
    if hasattr(scorer, "fingerprint"):
        try:
            fp.update(scorer.fingerprint(_context(settings, "validation", s.limit)))
        except FileNotFoundError as exc:
            raise evaluation.BenchmarkError(str(exc)) from exc
    return fp


def _lmeval_outcomes(res: dict, names: dict[str, str], metric: str) -> dict[str, dict]:
    out = {}
    for task, label in names.items():
        samples = (res.get("samples") or {}).get(task)
        if not samples:
            raise evaluation.BenchmarkError(f"lm-eval returned no samples for task {task!r}")
        items = {}
        for s in samples:
            value = s.get(metric)
            if value is None:
                raise evaluation.BenchmarkError(f"task {task!r}: samples have no metric {metric!r}")
            items[f"{s['doc_id']}:{str(s.get('doc_hash', ''))[:12]}"] = float(value)
        out[label] = items
    return out


def _lmeval(settings: Settings, base_dir, adapter_dir, tasks: list[str], limit) -> dict:
    import lm_eval

    # the same model settings as the scores-only benchmark (dtype, model_args, chat template, few-shot, device)
    return lm_eval.simple_evaluate(**evaluation.lmeval_kwargs(settings, base_dir, adapter_dir, tasks, limit),
                                   log_samples=True)


def _parse(got: dict, who: str):
    outcomes, scores = {}, {}
    for task, value in got.items():
        if isinstance(value, dict):
            outcomes[str(task)] = {str(k): float(v) for k, v in value.items()}
        elif isinstance(value, (list, tuple)):
            outcomes[str(task)] = {str(i): float(v) for i, v in enumerate(value)}
        else:
            scores[str(task)] = float(value)
    if outcomes and scores:
        raise evaluation.BenchmarkError(f"{who}: return per-item outcomes for every task or for none")
    return outcomes or None, scores


def score_split(settings: Settings, base_dir, adapter_dir, split: str, limit, tasks: list[str] | None = None) -> dict:
    """One evaluation with per-sample outcomes where the scorer has them: scores, stderr, mean ± stderr, n."""
    cfg = settings.pipeline.eval
    if cfg.suite == "lm-eval":
        res = _lmeval(settings, base_dir, adapter_dir, tasks or cfg.tasks, limit)
        return with_stats(_lmeval_outcomes(res, {t: t for t in (tasks or cfg.tasks)}, cfg.metric))
    scorer = evaluation.load_scorer(settings)
    ctx = _context(settings, split, limit)
    extra = {"context": ctx} if evaluation._wants_context(scorer) else {}
    adapter = adapter_dir and str(adapter_dir)
    if hasattr(scorer, "outcomes"):
        return with_stats(scorer.outcomes(str(base_dir), adapter, split, limit, **extra))
    outcomes, scores = _parse(scorer(str(base_dir), adapter, split, limit, **extra), evaluation.scorer_name(cfg))
    return with_stats(outcomes, scores)


def score_validation(settings: Settings, base_dir, adapter_dir, threads: int | None = 1) -> dict:
    """Validation scores (with per-sample outcomes where the scorer has them) of base + adapter."""
    s = settings.pipeline.search
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if settings.pipeline.eval.suite == "lm-eval":
        with evaluation._EVAL_LOCK:
            return score_split(settings, base_dir, adapter_dir, "validation", s.limit, list(s.tasks))
    return score_split(settings, base_dir, adapter_dir, "validation", s.limit)


TEST_READS: list[str] = []  # labels of test-split evaluations this process actually ran (not cache hits)


def score_test(settings: Settings, base: FetchedSource, adapter_dir, label: str) -> EvalResult:
    """Test-split scores with per-sample outcomes, cached by content; the scores-only record goes to the eval cache
    too (the same key as :func:`pipeline.evaluation.evaluate_cached`)."""
    fingerprint = evaluation.benchmark_fingerprint(settings)
    key = evaluation.eval_key(settings, base.sha256, adapter_dir, fingerprint)
    path = settings.work / "eval-samples" / f"{key[:32]}.json"
    if path.is_file():
        return EvalResult(**json.loads(path.read_text()), label=label, cached=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    for t in list(evaluation._PREWARM):
        t.join()
    t0 = time.time()
    cfg = settings.pipeline.eval
    with evaluation._EVAL_LOCK:
        rec = score_split(settings, base.path, adapter_dir, cfg.split, cfg.limit)
    TEST_READS.append(label)
    if not rec["scores"]:
        raise evaluation.BenchmarkError(f"{label}: the benchmark returned no scores")
    rec = {"key": key, **rec, "seconds": round(time.time() - t0, 2)}
    _write_json(path, rec)
    plain = settings.work / "eval-cache" / f"{key[:32]}.json"
    if not plain.is_file():
        _write_json(plain, {"key": key, "scores": rec["scores"], "mean": rec["mean"], "seconds": rec["seconds"]})
    return EvalResult(**rec, label=label, cached=False)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    tmp.replace(path)


def outcomes_table(records: dict[str, dict]) -> dict[str, list]:
    """Per-sample outcomes of several models as one column-oriented table (for ``mlflow.log_table``)."""
    cols: dict[str, list] = {"model": [], "task": [], "item": [], "outcome": []}
    for model, rec in records.items():
        outcomes = rec.get("outcomes") if isinstance(rec, dict) else rec.outcomes
        for task, items in sorted((outcomes or {}).items()):
            for item, value in sorted(items.items()):
                cols["model"].append(model)
                cols["task"].append(task)
                cols["item"].append(item)
                cols["outcome"].append(value)
    return cols


__all__ = ["score_validation", "score_test", "validation_fingerprint", "outcomes_table", "with_stats", "digest"]
