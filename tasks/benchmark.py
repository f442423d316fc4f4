"""Benchmark: lm-eval on any task list, or a scorer plugged in through ``pipeline.eval.callable``; cached by content.

Suites (``pipeline.eval.suite``):
- ``callable``: ``callable: "module:name"`` names a scorer, called as ``scorer(base_dir, adapter_dir, split, limit)``
  and returning ``{task: score}``. A scorer that declares a keyword ``context`` also gets a :class:`SuiteContext`
  (project, params file, work folder, the eval settings), and it may offer three optional methods the pipeline uses
  when present: ``fingerprint(context) -> dict`` (what else its scores depend on, e.g. its data files' digest),
  ``inputs(context) -> list[Path]`` (what it reads; the main command builds missing ones with ``dvc repro``),
  ``prewarm(context)`` (run in a background thread while fetch and merge run) and ``generation(context) -> dict``
  (how it generates: ``apply_chat_template``, ``max_new_tokens``, ``stop``; recorded in the registered model so it
  serves the way it was evaluated).
- ``skills``: the embedded skills suite, an alias of ``callable: skills.scorer:suite`` (this package imports
  nothing from skills/).
- ``lm-eval``: ``tasks`` (+ ``include_path``, ``metric``) through ``lm_eval.simple_evaluate``.

The cache key hashes the base model's files, the adapter's files (None for the bare base), the evaluation settings
and the benchmark's data (the scorer's fingerprint, or the include path's task files), so an unchanged model on an
unchanged benchmark is never evaluated twice: reruns and the leaderboard's baselines cost nothing.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pico.writer import sha256_file

from .config import EvalSettings, Settings, digest
from .errors import PipelineError
from .records import EvalResult, FetchedSource

SKILLS_SCORER = "skills.scorer:suite"  # what `suite: skills` means


class BenchmarkError(PipelineError):
    permanent = True


@dataclass(frozen=True)
class SuiteContext:
    """What a plugged-in scorer may read besides its arguments."""

    project: Path
    params_path: Path
    work: Path
    eval: EvalSettings


def context(settings: Settings) -> SuiteContext:
    return SuiteContext(settings.project, settings.params_path, settings.work, settings.pipeline.eval)


def scorer_name(cfg: EvalSettings) -> str | None:
    """The "module:name" of the plugged-in scorer (None for suite: lm-eval)."""
    return SKILLS_SCORER if cfg.suite == "skills" else cfg.callable if cfg.suite == "callable" else None


_SCORERS: dict = {}


def load_scorer(settings: Settings):
    """The scorer object named by the settings (imported once per process; the project is importable)."""
    name = scorer_name(settings.pipeline.eval)
    if name not in _SCORERS:
        if str(settings.project) not in sys.path:  # a scorer module may live in the project
            sys.path.append(str(settings.project))
        module, _, attr = name.partition(":")
        try:
            _SCORERS[name] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise BenchmarkError(f"pipeline.eval.callable {name!r} cannot be loaded: {exc}") from exc
    return _SCORERS[name]


def _wants_context(fn) -> bool:
    try:
        return "context" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def files_digest(paths) -> str:
    return digest({str(p): sha256_file(p) for p in sorted(paths)})


def benchmark_fingerprint(settings: Settings) -> dict:
    """What the scores depend on besides the model: the eval settings and the benchmark's data."""
    cfg = settings.pipeline.eval
    keep = cfg.model_dump(include={"suite", "skills", "split", "limit", "tasks", "metric", "batch_size"})
    if cfg.suite == "lm-eval":
        if not cfg.tasks:
            raise BenchmarkError("pipeline.eval.tasks is empty: name the lm-eval tasks to run (or suite: skills)")
        keep.update(lmeval_model_settings(cfg))  # the model settings change lm-eval's scores too
        if cfg.include_path:
            inc = settings.resolve(cfg.include_path)
            keep["include"] = files_digest(p for p in inc.rglob("*") if p.is_file())
        return keep
    if cfg.suite == "callable":
        keep["callable"] = cfg.callable
    scorer = load_scorer(settings)
    if hasattr(scorer, "fingerprint"):
        try:
            keep.update(scorer.fingerprint(context(settings)))
        except FileNotFoundError as exc:
            raise BenchmarkError(str(exc)) from exc
    return keep


def scorer_inputs(settings: Settings) -> list[Path]:
    """The files the plugged-in scorer reads (for the main command's suite build); none for lm-eval."""
    if scorer_name(settings.pipeline.eval) is None:
        return []
    scorer = load_scorer(settings)
    return list(scorer.inputs(context(settings))) if hasattr(scorer, "inputs") else []


DEFAULT_GENERATION = {"apply_chat_template": False, "max_new_tokens": 16, "stop": []}


def generation(settings: Settings, base_dir: str | Path) -> dict:
    """How the benchmark generated, for the registered model to serve the same way: whether the prompt goes through
    the base's chat template (and that template's text, so the served model keeps it even if the base's tokenizer
    changes), the maximum new tokens and the stop strings. From the scorer's ``generation(context)``; for an lm-eval
    task list, the eval settings' ``apply_chat_template`` and the tasks' ``generation_kwargs`` when they all agree."""
    cfg = settings.pipeline.eval
    out = dict(DEFAULT_GENERATION)
    if cfg.suite == "lm-eval":
        out["apply_chat_template"] = cfg.apply_chat_template
        out.update(_lmeval_generation(settings))
    else:
        scorer = load_scorer(settings)
        if hasattr(scorer, "generation"):
            out.update(scorer.generation(context(settings)))
    out["chat_template"] = None
    if out["apply_chat_template"]:
        from transformers import AutoTokenizer

        template = AutoTokenizer.from_pretrained(str(base_dir)).chat_template
        if not template:
            raise BenchmarkError(f"the benchmark applies a chat template but the base {base_dir} has none")
        out["chat_template"] = template
    return out


def _lmeval_generation(settings: Settings) -> dict:
    """max_new_tokens/stop from the lm-eval tasks' YAML ``generation_kwargs`` (when every generative task agrees)."""
    from lm_eval.utils import load_yaml_config

    cfg = settings.pipeline.eval
    index = _task_manager(str(settings.resolve(cfg.include_path)) if cfg.include_path else None).task_index
    seen = set()
    for task in cfg.tasks:
        path = (index.get(task) or {}).get("yaml_path")
        if not path or path == -1:
            continue
        kw = load_yaml_config(path).get("generation_kwargs") or {}
        if kw:
            until = kw.get("until") or []
            seen.add((int(kw.get("max_gen_toks", 256)), tuple([until] if isinstance(until, str) else until)))
    if len(seen) != 1:
        return {}  # no generative task, or tasks that disagree: the pyfunc's defaults (per-request params override)
    (max_new, stop), = seen
    return {"max_new_tokens": max_new, "stop": list(stop)}


def model_digest(path: str | Path | None) -> str | None:
    if path is None:
        return None
    path = Path(path)
    return files_digest(f for f in path.iterdir() if f.is_file() and f.name != "merge_manifest.json")


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


def prewarm(settings: Settings) -> threading.Thread | None:
    """Once per process, in the background while fetch and merge run: import lm-eval (about 12 s here) and index its
    tasks, or let the plugged-in scorer prepare (its ``prewarm``). None when there is nothing to do or it started."""
    cfg = settings.pipeline.eval
    if _PREWARM:
        return None
    if cfg.suite == "lm-eval":
        def work():
            import lm_eval.models.huggingface  # noqa: F401

            _task_manager(str(settings.resolve(cfg.include_path)) if cfg.include_path else None)
    else:
        scorer = load_scorer(settings)
        if not hasattr(scorer, "prewarm"):
            return None

        def work():
            scorer.prewarm(context(settings))

    def guarded():
        try:
            work()
        except Exception:  # the benchmark step reports problems itself
            pass

    t = threading.Thread(target=guarded, name="prewarm-benchmark", daemon=True)
    t.start()
    _PREWARM.append(t)
    return t


def lmeval_kwargs(settings: Settings, base_dir, adapter_dir, tasks: list[str], limit) -> dict:
    """``lm_eval.simple_evaluate`` arguments for base (+ adapter) on ``tasks``: one place for the model settings
    (dtype, model_args, chat template, few-shot, device), so the test split, the validation split of a search and
    the baselines are scored by the same model configuration."""
    cfg = settings.pipeline.eval
    model_args = f"pretrained={base_dir},tokenizer={base_dir},dtype={cfg.dtype}"
    if adapter_dir is not None:
        model_args += f",peft={adapter_dir}"
    if cfg.model_args:
        model_args += f",{cfg.model_args}"
    include = str(settings.resolve(cfg.include_path)) if cfg.include_path else None
    return dict(model="hf", model_args=model_args, tasks=list(tasks), num_fewshot=cfg.num_fewshot,
                apply_chat_template=cfg.apply_chat_template, batch_size=int(cfg.batch_size), device=cfg.device,
                limit=limit, task_manager=_task_manager(include), bootstrap_iters=0, random_seed=0,
                numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)


def lmeval_model_settings(cfg: EvalSettings) -> dict:
    """The eval settings that change lm-eval's scores besides the tasks and their data (part of every cache key)."""
    return cfg.model_dump(include={"dtype", "model_args", "apply_chat_template", "num_fewshot", "batch_size"})


_EVAL_LOCK = threading.Lock()  # lm-eval and torch threads: one evaluation at a time per process


def run_benchmark(settings: Settings, base_dir: str | Path,
                  adapter_dir: str | Path | None) -> tuple[dict[str, float], dict[str, float]]:
    """Scores per task in [0, 1], and their standard errors where the benchmark reports them: the plugged-in scorer
    (scores only), or lm-eval's task list (its ``<metric>_stderr`` when numeric)."""
    cfg = settings.pipeline.eval
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
        if cfg.suite != "lm-eval":
            scorer = load_scorer(settings)
            extra = {"context": context(settings)} if _wants_context(scorer) else {}
            scores = scorer(str(base_dir), adapter_dir and str(adapter_dir), cfg.split, cfg.limit, **extra)
            return {str(k): float(v) for k, v in scores.items()}, {}
        import lm_eval

        res = lm_eval.simple_evaluate(**lmeval_kwargs(settings, base_dir, adapter_dir, cfg.tasks, cfg.limit))
        scores, stderr = {}, {}
        for task in cfg.tasks:
            metrics = res["results"].get(task)
            if metrics is None:
                raise BenchmarkError(f"lm-eval returned no results for task {task!r}")
            value = next((v for k, v in metrics.items() if k.split(",")[0] == cfg.metric), None)
            if value is None:
                raise BenchmarkError(f"task {task!r} has no metric {cfg.metric!r} (has: {', '.join(metrics)})")
            scores[task] = float(value)
            err = next((v for k, v in metrics.items() if k.split(",")[0] == f"{cfg.metric}_stderr"), None)
            if isinstance(err, (int, float)):  # "N/A" when lm-eval computed none (bootstrap_iters=0)
                stderr[task] = float(err)
        return scores, stderr


def evaluate_cached(settings: Settings, base: FetchedSource, adapter_dir: str | Path | None,
                    label: str) -> EvalResult:
    """Scores of base (+ adapter), from the cache when this exact model was evaluated on this exact benchmark."""
    fingerprint = benchmark_fingerprint(settings)
    key = eval_key(settings, base.sha256, adapter_dir, fingerprint)
    path = settings.work / "eval-cache" / f"{key[:32]}.json"
    if path.is_file():
        return EvalResult(**json.loads(path.read_text()), label=label, cached=True)
    t0 = time.time()
    scores, stderr = run_benchmark(settings, base.path, adapter_dir)
    if not scores:
        raise BenchmarkError(f"{label}: the benchmark returned no scores")
    record = {"key": key, "scores": dict(sorted(scores.items())), "mean": sum(scores.values()) / len(scores),
              "seconds": round(time.time() - t0, 2)}
    if stderr:
        record["stderr"] = dict(sorted(stderr.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    tmp.replace(path)
    return EvalResult(**record, label=label, cached=False)


def resolve_base(settings: Settings, fetched_base: FetchedSource | None, adapter_path: str | Path) -> FetchedSource:
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
    return FetchedSource(name="base", uri=name, path=str(path), revision=None, sha256=model_digest(path))
