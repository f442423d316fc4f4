"""Benchmark: lm-eval on the skills suite (default) or on any lm-eval task list, cached by content hash.

The cache key hashes the base model's files, the adapter's files (None for the bare base), the evaluation settings
and the benchmark data (the suite's data files, or the include path's task files), so an unchanged model on an
unchanged benchmark is never evaluated twice: reruns and the leaderboard's baselines cost nothing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from pico.writer import sha256_file

from .config import Settings, digest


class BenchmarkError(RuntimeError):
    pass


def _files_digest(paths) -> str:
    return digest({str(p): sha256_file(p) for p in sorted(paths)})


def benchmark_fingerprint(settings: Settings) -> dict:
    """What the scores depend on besides the model: the eval settings and the benchmark's data."""
    cfg = settings.eval_config()
    keep = {k: cfg[k] for k in ("suite", "skills", "split", "limit", "tasks", "metric", "batch_size")}
    if cfg["suite"] == "lm-eval":  # the model settings change lm-eval's scores too
        keep.update({k: cfg[k] for k in ("dtype", "model_args", "apply_chat_template", "num_fewshot")})
    if cfg["suite"] == "skills":
        data = suite_data_dir(settings)
        if not data.is_dir():
            raise BenchmarkError(f"the skills suite data {data} is missing; build the suite first: `dvc repro` "
                                 "(or `python -m flows.nightly`, which builds it)")
        keep["data"] = _files_digest(p for p in data.glob(f"*/{cfg['split']}.jsonl"))
    elif cfg["suite"] == "callable":
        keep["callable"] = cfg["callable"]
    elif cfg["suite"] == "lm-eval":
        if not cfg["tasks"]:
            raise BenchmarkError("pipeline.eval.tasks is empty: name the lm-eval tasks to run (or suite: skills)")
        if cfg["include_path"]:
            inc = settings.resolve(cfg["include_path"])
            keep["include"] = _files_digest(p for p in inc.rglob("*") if p.is_file())
    else:
        raise BenchmarkError(f"pipeline.eval.suite must be skills, lm-eval or callable, got {cfg['suite']!r}")
    return keep


def suite_data_dir(settings: Settings) -> Path:
    import yaml

    suite = (yaml.safe_load(settings.params_path.read_text()) or {}).get("suite") or {}
    return settings.resolve(((suite.get("paths") or {}).get("data")) or "build/suite/data")


def model_digest(path: str | Path | None) -> str | None:
    if path is None:
        return None
    path = Path(path)
    return _files_digest(f for f in path.iterdir() if f.is_file() and f.name != "merge_manifest.json")


def eval_key(settings: Settings, base_sha: str, adapter: str | Path | None, fingerprint: dict) -> str:
    return digest({"base": base_sha, "adapter": model_digest(adapter), "bench": fingerprint})


_PREWARM: list[threading.Thread] = []
_TASK_MANAGERS: dict = {}


def _task_manager(include: str | None):
    """lm-eval's TaskManager indexes every built-in task (seconds): one per include path per process."""
    from lm_eval.tasks import TaskManager

    if include not in _TASK_MANAGERS:
        _TASK_MANAGERS[include] = TaskManager(include_path=include)
    return _TASK_MANAGERS[include]


def prewarm(settings: Settings | None = None) -> threading.Thread:
    """Import lm-eval (about 12 s here) and index its tasks in the background while fetch and merge run."""
    def _imp():
        try:
            import lm_eval  # noqa: F401
            import lm_eval.models.huggingface  # noqa: F401

            if settings is None:
                return
            cfg = settings.eval_config()
            if cfg["suite"] == "skills" and suite_data_dir(settings).is_dir():
                from skills.lmeval import task_manager, write_tasks

                task_manager(write_tasks(suite_data_dir(settings), settings.work / "lm_eval_tasks"))
            elif cfg["suite"] == "lm-eval":
                _task_manager(str(settings.resolve(cfg["include_path"])) if cfg["include_path"] else None)
        except Exception:  # the benchmark step reports problems itself
            pass

    t = threading.Thread(target=_imp, name="prewarm-lm-eval", daemon=True)
    t.start()
    _PREWARM.append(t)
    return t


_EVAL_LOCK = threading.Lock()  # lm-eval and torch threads: one evaluation at a time per process


def run_benchmark(settings: Settings, base_dir: str | Path, adapter_dir: str | Path | None) -> dict[str, float]:
    """Scores per task (skill) in [0, 1]. The one place that calls lm-eval."""
    cfg = settings.eval_config()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    for t in list(_PREWARM):  # let the background import/indexing finish rather than race it
        t.join()
    with _EVAL_LOCK:
        if os.environ.get("TQDM_DISABLE") == "1":
            try:
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            except Exception:
                pass
        if cfg["suite"] == "skills":
            from skills.evaluate import evaluate

            # task YAMLs under this project's work dir: never shared with another checkout or run
            return evaluate(base_dir, adapter_dir, skills=cfg["skills"], split=cfg["split"], limit=cfg["limit"],
                            data_dir=suite_data_dir(settings), batch_size=int(cfg["batch_size"]),
                            tasks_dir=settings.work / "lm_eval_tasks")
        if cfg["suite"] == "callable":  # "module:function"(base_dir, adapter_dir, split, limit) -> {task: score}
            import importlib
            import sys

            if str(settings.project) not in sys.path:  # a scorer module may live in the project
                sys.path.append(str(settings.project))
            module, _, fn = cfg["callable"].partition(":")
            scores = getattr(importlib.import_module(module), fn)(str(base_dir), adapter_dir and str(adapter_dir),
                                                                  cfg["split"], cfg["limit"])
            return {str(k): float(v) for k, v in scores.items()}
        import lm_eval

        model_args = f"pretrained={base_dir},tokenizer={base_dir},dtype={cfg['dtype']}"
        if adapter_dir is not None:
            model_args += f",peft={adapter_dir}"
        if cfg["model_args"]:
            model_args += f",{cfg['model_args']}"
        include = str(settings.resolve(cfg["include_path"])) if cfg["include_path"] else None
        res = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=list(cfg["tasks"]),
                                      num_fewshot=int(cfg["num_fewshot"]),
                                      apply_chat_template=bool(cfg["apply_chat_template"]),
                                      batch_size=int(cfg["batch_size"]), device=cfg["device"], limit=cfg["limit"],
                                      task_manager=_task_manager(include), bootstrap_iters=0,
                                      random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                      fewshot_random_seed=0)
        scores = {}
        for task in cfg["tasks"]:
            metrics = res["results"].get(task)
            if metrics is None:
                raise BenchmarkError(f"lm-eval returned no results for task {task!r}")
            value = next((v for k, v in metrics.items() if k.split(",")[0] == cfg["metric"]), None)
            if value is None:
                raise BenchmarkError(f"task {task!r} has no metric {cfg['metric']!r} (has: {', '.join(metrics)})")
            scores[task] = float(value)
        return scores


def evaluate_cached(settings: Settings, base: dict, adapter_dir: str | Path | None, label: str) -> dict:
    """Scores of base (+ adapter), from the cache when this exact model was evaluated on this exact benchmark."""
    fingerprint = benchmark_fingerprint(settings)
    key = eval_key(settings, base["sha256"], adapter_dir, fingerprint)
    path = settings.work / "eval-cache" / f"{key[:32]}.json"
    if path.is_file():
        record = json.loads(path.read_text())
        return {**record, "label": label, "cached": True}
    t0 = time.time()
    scores = run_benchmark(settings, base["path"], adapter_dir)
    if not scores:
        raise BenchmarkError(f"{label}: the benchmark returned no scores")
    record = {"key": key, "scores": dict(sorted(scores.items())), "mean": sum(scores.values()) / len(scores),
              "seconds": round(time.time() - t0, 2)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    tmp.replace(path)
    return {**record, "label": label, "cached": False}


def resolve_base(settings: Settings, fetched_base: dict | None, adapter_path: str | Path) -> dict:
    """The base model to evaluate on: the catalog's ``base:``, else the adapters' base_model_name_or_path."""
    if fetched_base is not None:
        return fetched_base
    cfg = json.loads((Path(adapter_path) / "adapter_config.json").read_text())
    name = cfg.get("base_model_name_or_path")
    if not name:
        raise BenchmarkError("no base model: add `base:` to the catalog (the adapters name none)")
    path = settings.resolve(name)
    if not path.is_dir():
        raise BenchmarkError(f"base model {name!r} (from adapter_config.json) is not a local directory; add `base:` "
                             "to the catalog")
    return {"name": "base", "uri": name, "path": str(path), "revision": None, "sha256": model_digest(path),
            "dvc": None}
