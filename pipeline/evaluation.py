"""Evaluation: one path for every score the night reads. lm-eval on any task list, or a scorer plugged in through
``pipeline.eval.callable``, on the test split (the benchmark: cached by content) or the validation split (choosing a
recipe: the candidate's record is its cache, :mod:`pipeline.search`).

Suites (``pipeline.eval.suite``):
- ``callable``: ``callable: "module:name"`` names a scorer, called as ``scorer(base_dir, adapter_dir, split, limit)``
  and returning ``{task: score}`` or per-item outcomes (``{task: {item: 0/1}}`` or ``{task: [0/1, ...]}``). A
  scorer that declares a keyword ``context`` also gets a :class:`SuiteContext` (project, params file, work folder,
  the eval settings of the split), and it may offer optional methods the pipeline uses when present:
  ``outcomes(base_dir, adapter_dir, split, limit, *, context)`` (per-item outcomes, preferred over the call),
  ``fingerprint(context) -> dict`` (what else its scores depend on, e.g. its data files' digest),
  ``inputs(context) -> list[Path]`` (what it reads; the main command builds missing ones with ``dvc repro``),
  ``prewarm(context)`` (run in a background thread while fetch and merge run), ``generation(context) -> dict``
  (how it generates: ``apply_chat_template``, ``max_new_tokens``, ``stop``; recorded in the registered model so it
  serves the way it was evaluated) and ``tasks(context) -> list[str]`` (the task names its scores carry, known
  before scoring: ``gate.floors`` keys are checked against them).
- ``skills``: the embedded skills suite, an alias of ``callable: skills.scorer:suite`` (this package imports
  nothing from skills/).
- ``lm-eval``: ``lm_eval.simple_evaluate(log_samples=True)`` on ``eval.tasks`` (test) or ``search.tasks``
  (validation). A group (``mmlu``) or a tag is expanded to its leaf tasks by lm-eval's own ``TaskManager``; the gate
  compares leaf tasks. ``metric`` (``name`` or ``name,filter``, lm-eval's result key) is read from each sample, the
  samples of the named filter (a task with one filter: that one); each leaf's per-item values must average to the
  score lm-eval reports for it (a corpus-level metric such as BLEU or F1 over all items is refused by name).

:func:`check_benchmark` resolves the task lists before any work (the flow's first step): groups expanded, a
validation task list overlapping the test list refused, ``gate.floors`` keys checked against the benchmark's task
names (a scorer names them with ``tasks(context)``).

Items are named by lm-eval's doc id and document hash (or the scorer's ids): two models' outcomes are compared only
on the same items. The test split's cache key hashes the base model, the adapter's files (None for the bare base)
and the benchmark's fingerprint (settings and data), so an unchanged model on an unchanged benchmark is evaluated
once: reruns, baselines, the champion and the DVC eval stage read the same record.
"""

from __future__ import annotations

import importlib
import inspect
import json
import numbers
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from pico.writer import json_digest, sha256_file

from .errors import PipelineError
from .files import write_json
from .gate import summarize
from .records import EvalResult, FetchedSource, Outcomes, Validation
from .settings import ConfigError, EvalSettings, Settings, unknown_floors

Split = Literal["test", "validation"]
SKILLS_SCORER = "skills.scorer:suite"  # what `suite: skills` means


class EvaluationError(PipelineError):
    permanent = True


@dataclass(frozen=True)
class SuiteContext:
    """What a plugged-in scorer may read besides its arguments."""

    project: Path
    params_path: Path
    work: Path
    eval: EvalSettings  # of the split scored: split and limit are the validation's for the search


def split_settings(settings: Settings, split: Split) -> tuple[EvalSettings, list[str]]:
    """The eval settings as a scorer sees them on ``split``, and the lm-eval tasks of that split."""
    cfg = settings.pipeline.eval
    if split == "test":
        return cfg, list(cfg.tasks)
    s = settings.pipeline.search
    return cfg.model_copy(update={"split": "validation", "limit": s.limit}), list(s.tasks)


def context(settings: Settings, split: Split = "test") -> SuiteContext:
    return SuiteContext(settings.project, settings.params_path, settings.work, split_settings(settings, split)[0])


def scorer_name(cfg: EvalSettings) -> str | None:
    """The "module:name" of the plugged-in scorer (None for suite: lm-eval)."""
    return SKILLS_SCORER if cfg.suite == "skills" else cfg.callable if cfg.suite == "callable" else None


_SCORERS: dict = {}


def load_scorer(settings: Settings):
    """The scorer object named by the settings (imported once per process; the project is importable)."""
    name = scorer_name(settings.pipeline.eval)
    if name is None:
        raise EvaluationError("suite: lm-eval has no scorer to load")
    if name not in _SCORERS:
        if str(settings.project) not in sys.path:  # a scorer module may live in the project
            sys.path.append(str(settings.project))
        module, _, attr = name.partition(":")
        try:
            _SCORERS[name] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise EvaluationError(f"pipeline.eval.callable {name!r} cannot be loaded: {exc}") from exc
    return _SCORERS[name]


def _wants_context(fn) -> bool:
    try:
        return "context" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def files_digest(paths) -> str:
    return json_digest({str(p): sha256_file(p) for p in sorted(paths)})


def adapter_digest(path: str | Path | None) -> str | None:
    """The adapter's files (its manifest aside: the merge's record, not its bytes); None for the bare base."""
    if path is None:
        return None
    return files_digest(f for f in Path(path).iterdir() if f.is_file() and f.name != "merge_manifest.json")


def fingerprint(settings: Settings, split: Split = "test") -> dict:
    """What the scores on ``split`` depend on besides the model: the eval settings and the benchmark's data."""
    cfg, s, test = settings.pipeline.eval, settings.pipeline.search, split == "test"
    if test:
        fp = cfg.model_dump(include={"suite", "skills", "split", "limit", "tasks", "metric", "batch_size"})
    else:
        fp = {"suite": cfg.suite, "limit": s.limit, "skills": cfg.skills, "split": "validation"}
    if cfg.suite == "lm-eval":
        if test and not cfg.tasks:
            raise EvaluationError("pipeline.eval.tasks is empty: name the lm-eval tasks to run (or suite: skills)")
        if not test and not s.tasks:
            raise EvaluationError("pipeline.search.tasks is empty: name the lm-eval tasks candidates are chosen on "
                                  "(a validation split; never the test tasks)")
        if not test:
            fp.update(tasks=list(s.tasks), metric=cfg.metric)
        fp.update(lmeval_model_settings(cfg))  # the model settings change lm-eval's scores too
        if cfg.include_path:
            inc = settings.resolve(cfg.include_path)
            fp["include"] = files_digest(p for p in inc.rglob("*") if p.is_file())
        return fp
    if not test or cfg.suite == "callable":
        fp["callable"] = scorer_name(cfg) if not test else cfg.callable
    scorer = load_scorer(settings)
    if hasattr(scorer, "fingerprint"):
        try:
            fp.update(scorer.fingerprint(context(settings, split)))
        except FileNotFoundError as exc:
            raise EvaluationError(str(exc)) from exc
    return fp


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
    out: dict = dict(DEFAULT_GENERATION)
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
            raise EvaluationError(f"the benchmark applies a chat template but the base {base_dir} has none")
        out["chat_template"] = template
    return out


def _lmeval_generation(settings: Settings) -> dict:
    """max_new_tokens/stop from the lm-eval tasks' YAML ``generation_kwargs`` (when every generative task agrees)."""
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval 0.4.13's task-YAML reader (includes, !function tags)

    index = _task_manager(_include(settings)).task_index
    seen = set()
    for task in leaf_tasks(settings, "test"):
        path = getattr(index.get(task), "yaml_path", None)  # an index Entry; None for generated tasks
        if not path:
            continue
        kw = load_yaml(path, resolve_func=False).get("generation_kwargs") or {}
        if kw:
            until = kw.get("until") or []
            seen.add((int(kw.get("max_gen_toks", 256)), tuple([until] if isinstance(until, str) else until)))
    if len(seen) != 1:
        return {}  # no generative task, or tasks that disagree: the pyfunc's defaults (per-request params override)
    (max_new, stop), = seen
    return {"max_new_tokens": max_new, "stop": list(stop)}


_PREWARM: list[threading.Thread] = []
_TASK_MANAGERS: dict = {}
_LEAVES: dict = {}


def _include(settings: Settings) -> str | None:
    cfg = settings.pipeline.eval
    return str(settings.resolve(cfg.include_path)) if cfg.include_path else None


def _task_manager(include: str | None):
    """lm-eval's TaskManager indexes every built-in task (seconds): one per include path per process."""
    from lm_eval.tasks import TaskManager

    if include not in _TASK_MANAGERS:
        _TASK_MANAGERS[include] = TaskManager(include_path=include)
    return _TASK_MANAGERS[include]


def _offline() -> None:
    """The benchmark reads lm-eval's datasets from the local cache (or the task's local files), never the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def expand_tasks(tasks: list[str], include: str | None, key: str = "pipeline.eval.tasks") -> list[str]:
    """lm-eval task names as lm-eval runs them: a task is itself; a group (``mmlu``) or a tag is the leaf tasks
    lm-eval's ``TaskManager.load`` builds for it (recursively, in its order; this loads their datasets, once per
    process). Leaves are what lm-eval keys its samples by, so they are what the gate compares."""
    tm = _task_manager(include)
    out: list[str] = []
    for name in tasks:
        if (include, name) not in _LEAVES:
            if name in tm.all_subtasks:
                _LEAVES[include, name] = [name]
            else:
                _offline()
                try:
                    _LEAVES[include, name] = list(tm.load([name])["tasks"])
                except KeyError:
                    raise ConfigError(f"{key}: {name!r} is not an lm-eval task, group or tag (built-in, or in "
                                      f"include_path {include})") from None
        out += [leaf for leaf in _LEAVES[include, name] if leaf not in out]
    return out


def leaf_tasks(settings: Settings, split: Split = "test") -> list[str]:
    """The leaf lm-eval tasks of ``split``'s task list (``eval.tasks`` or ``search.tasks``)."""
    key = "pipeline.eval.tasks" if split == "test" else "pipeline.search.tasks"
    return expand_tasks(split_settings(settings, split)[1], _include(settings), key)


def task_names(settings: Settings, split: Split = "test") -> list[str] | None:
    """The task names the scores of ``split`` carry, before anything is scored: lm-eval's leaf tasks, or the plugged-in
    scorer's ``tasks(context)``; None when the scorer does not say."""
    if settings.pipeline.eval.suite == "lm-eval":
        return leaf_tasks(settings, split)
    scorer = load_scorer(settings)
    names = scorer.tasks(context(settings, split)) if hasattr(scorer, "tasks") else None
    return None if names is None else list(names)


def check_benchmark(settings: Settings) -> list[str] | None:
    """The task lists resolved and checked before any work (the night's first step): a ``ConfigError`` naming the
    key when the lm-eval task lists are empty or unknown, when the validation list (``pipeline.search.tasks``, groups
    expanded) shares a task with the test list, or when a ``pipeline.gate.floors`` key is not a task of the
    benchmark. Returns the benchmark's task names (None: the scorer does not name them)."""
    cfg, file = settings.pipeline.eval, settings.params_path.name
    if cfg.suite == "lm-eval":
        if not cfg.tasks:
            raise ConfigError(f"{file}: pipeline.eval.tasks is empty: name the lm-eval tasks to run (or suite: "
                              "skills)")
        if settings.search and not settings.pipeline.search.tasks:
            raise ConfigError(f"{file}: pipeline.search.tasks is empty: name the lm-eval tasks candidates are chosen "
                              "on (a validation split; never the test tasks)")
    try:
        names = task_names(settings, "test")
        if cfg.suite == "lm-eval" and settings.pipeline.search.tasks:
            test = set(names or [])
            shared = [t for t in leaf_tasks(settings, "validation") if t in test]
            if shared:
                raise ConfigError(f"pipeline.search.tasks: {', '.join(shared)} also in pipeline.eval.tasks (groups "
                                  "expanded): the recipe would be chosen on the test items; validation tasks must be "
                                  "other tasks (e.g. the task's validation split as its own YAML)")
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    if names is not None:
        bad = unknown_floors(settings.pipeline.gate, names, "the benchmark")
        if bad:
            raise ConfigError(f"{file}: pipeline.{bad}")
    return names


def prewarm(settings: Settings) -> threading.Thread | None:
    """Once per process, in the background while fetch and merge run: import lm-eval (about 12 s here) and index its
    tasks, or let the plugged-in scorer prepare (its ``prewarm``). None when there is nothing to do or it started."""
    cfg = settings.pipeline.eval
    if _PREWARM:
        return None
    if cfg.suite == "lm-eval":
        def work():
            import lm_eval.models.huggingface  # noqa: F401

            _task_manager(_include(settings))
    else:
        scorer = load_scorer(settings)
        if not hasattr(scorer, "prewarm"):
            return None

        def work():
            scorer.prewarm(context(settings))

    def guarded():
        try:
            work()
        except Exception:  # the evaluation reports problems itself
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
    return dict(model="hf", model_args=model_args, tasks=list(tasks), num_fewshot=cfg.num_fewshot,
                apply_chat_template=cfg.apply_chat_template, batch_size=int(cfg.batch_size), device=cfg.device,
                limit=limit, task_manager=_task_manager(_include(settings)), bootstrap_iters=0, random_seed=0,
                numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)


def lmeval_model_settings(cfg: EvalSettings) -> dict:
    """The eval settings that change lm-eval's scores besides the tasks and their data (part of every cache key)."""
    return cfg.model_dump(include={"dtype", "model_args", "apply_chat_template", "num_fewshot", "batch_size"})


def stats(outcomes: Outcomes | None, scores: dict[str, float] | None = None) -> Validation:
    """Scores with their stderr, mean ± stderr and n per task from per-sample outcomes; or plain scores."""
    if outcomes:
        return Validation(**summarize(outcomes), outcomes=outcomes)
    scores = dict(sorted((scores or {}).items()))
    return Validation(scores=scores, mean=sum(scores.values()) / max(1, len(scores)))


def parse_metric(metric: str) -> tuple[str, str | None]:
    """``pipeline.eval.metric`` as (metric, filter): ``exact_match,strict-match`` names lm-eval's filter too (its
    result key), ``acc`` does not (then a task must have one filter)."""
    name, _, flt = metric.partition(",")
    return name.strip(), flt.strip() or None


def _lmeval_outcomes(res: dict, tasks: list[str], metric: str) -> Outcomes:
    """Per-item values of ``metric`` for each leaf task, from lm-eval's logged samples: one sample per document and
    filter, the filter the metric names (a task with one filter: that one; several and none named: an error naming
    them). Each task's values must be numbers whose mean is lm-eval's own score for it (the metric's aggregation is the
    mean of per-item values); otherwise the gate could not test it item by item, and the error says so."""
    name, wanted = parse_metric(metric)
    samples = res.get("samples") or {}
    extra = sorted(set(samples) - set(tasks))
    if extra:
        raise EvaluationError(f"lm-eval returned samples for tasks not in the expanded task list: {extra}")
    out = {}
    for task in tasks:
        logged = samples.get(task)
        if not logged:
            raise EvaluationError(f"lm-eval returned no samples for task {task!r}")
        filters = list(dict.fromkeys(str(s.get("filter", "none")) for s in logged))
        use = wanted if wanted in filters else filters[0] if len(filters) == 1 else None
        if use is None:
            raise EvaluationError(
                f"task {task!r} logs {len(filters)} filters ({', '.join(filters)}): pipeline.eval.metric must name "
                f"one of them, e.g. '{name},{filters[0]}'" if wanted is None else
                f"task {task!r} has no filter {wanted!r} (pipeline.eval.metric {metric!r}; its filters: "
                f"{', '.join(filters)})")
        items: dict[str, float] = {}
        for s in logged:
            if str(s.get("filter", "none")) != use:
                continue
            value = s.get(name)
            if value is None:
                raise EvaluationError(f"task {task!r}: samples have no metric {name!r} (they have: "
                                      f"{', '.join(s.get('metrics') or [])})")
            if not isinstance(value, numbers.Real):
                raise EvaluationError(
                    f"task {task!r}: metric {name!r} logs {type(value).__name__} values per item, not a score (a "
                    "corpus-level metric, aggregated over all items): the gate needs a per-item score (0/1 or a "
                    "number whose mean is the task's score)")
            item = f"{s['doc_id']}:{str(s.get('doc_hash', ''))[:12]}"
            if item in items:
                raise EvaluationError(f"task {task!r}: item {item} logged twice for filter {use!r}")
            items[item] = float(value)
        reported = ((res.get("results") or {}).get(task) or {}).get(f"{name},{use}")
        mean = sum(items.values()) / len(items)
        if isinstance(reported, numbers.Real) and abs(mean - float(reported)) > 1e-6:
            raise EvaluationError(f"task {task!r}: the mean of the per-item {name!r} ({mean:.6f}) is not lm-eval's "
                                  f"score {float(reported):.6f}: the metric is not aggregated as a mean of per-item scores, "
                                  "so the gate cannot compare it item by item")
        out[task] = items
    return out


def _parse(got: dict, who: str) -> tuple[Outcomes | None, dict[str, float]]:
    outcomes, scores = {}, {}
    for task, value in got.items():
        if isinstance(value, dict):
            outcomes[str(task)] = {str(k): float(v) for k, v in value.items()}
        elif isinstance(value, (list, tuple)):
            outcomes[str(task)] = {str(i): float(v) for i, v in enumerate(value)}
        else:
            scores[str(task)] = float(value)
    if outcomes and scores:
        raise EvaluationError(f"{who}: return per-item outcomes for every task or for none")
    return outcomes or None, scores


def score(settings: Settings, base_dir, adapter_dir, split: Split = "test") -> Validation:
    """Base (+ adapter) on ``split``, with per-sample outcomes where the scorer has them: the one place that calls
    lm-eval or the plugged-in scorer. Uncached (see :func:`evaluate`)."""
    cfg, tasks = split_settings(settings, split)
    if cfg.suite == "lm-eval":
        import lm_eval

        res = lm_eval.simple_evaluate(**lmeval_kwargs(settings, base_dir, adapter_dir, tasks, cfg.limit),
                                      log_samples=True)
        return stats(_lmeval_outcomes(res, leaf_tasks(settings, split), cfg.metric))
    scorer = load_scorer(settings)
    extra = {"context": context(settings, split)} if _wants_context(scorer) else {}
    adapter = adapter_dir and str(adapter_dir)
    if hasattr(scorer, "outcomes"):
        return stats(scorer.outcomes(str(base_dir), adapter, cfg.split, cfg.limit, **extra))
    return stats(*_parse(scorer(str(base_dir), adapter, cfg.split, cfg.limit, **extra), str(scorer_name(cfg))))


_EVAL_LOCK = threading.Lock()  # lm-eval and torch threads: one evaluation at a time per process
TEST_READS: list[str] = []  # labels of test-split evaluations this process actually ran (not cache hits)


def evaluate(settings: Settings, base: FetchedSource, adapter_dir: str | Path | None, label: str) -> EvalResult:
    """The test split (the benchmark) of base (+ adapter), with per-sample outcomes; from the cache when this exact
    model was evaluated on this exact benchmark."""
    key = json_digest({"base": base.sha256, "adapter": adapter_digest(adapter_dir),
                       "bench": fingerprint(settings, "test")})
    path = settings.work / "eval-samples" / f"{key[:32]}.json"
    if path.is_file():
        return EvalResult(**json.loads(path.read_text()), label=label, cached=True)
    _offline()
    for t in list(_PREWARM):  # let the background import/indexing finish rather than race it
        t.join()
    t0 = time.time()
    with _EVAL_LOCK:
        if os.environ.get("TQDM_DISABLE") == "1":
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        rec = score(settings, base.path, adapter_dir, "test")
    TEST_READS.append(label)
    if not rec.scores:
        raise EvaluationError(f"{label}: the benchmark returned no scores")
    record = {"key": key, **rec.model_dump(), "seconds": round(time.time() - t0, 2)}
    write_json(path, record)
    return EvalResult(**record, label=label, cached=False)


def validate(settings: Settings, base_dir, adapter_dir, threads: int | None = 1) -> Validation:
    """The validation split of base + adapter (a search candidate), with per-sample outcomes where the scorer has
    them; torch pinned to ``threads`` (the candidate's merge ran with them)."""
    if threads:
        torch.set_num_threads(int(threads))
    if settings.pipeline.eval.suite == "lm-eval":
        with _EVAL_LOCK:
            return score(settings, base_dir, adapter_dir, "validation")
    return score(settings, base_dir, adapter_dir, "validation")
