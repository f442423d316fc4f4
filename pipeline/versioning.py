"""Version the merged adapter and its scores with DVC: the flow's results become the ``merge``/``eval`` stage outputs.

The flow writes exactly what ``dvc repro`` would (same code path, same bytes) into the stage outputs, then
``dvc commit`` records it in dvc.lock (deps, params and output md5s), ``dvc push`` copies it to the DVC remote, and
``dvc exp save`` keeps the night as an experiment (``pipeline.dvc.history: exp``): a commit under refs/exps with
dvc.lock, params.yaml and metrics.json, so ``dvc exp show`` and ``dvc metrics diff`` compare nights while HEAD and
the working tree stay where they are. All through DVC's Python API (pipeline/dvcio.py).
So dvc.lock always says what produced the latest merge, ``dvc repro`` afterwards finds nothing to do, and older
merges stay in the DVC cache/remote under the md5 recorded in each model version's lineage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import dvcio
from .files import project_lock, write_text
from .merging import materialize
from .records import DvcRecord
from .settings import Settings, load_settings


def metrics_json(scores: dict[str, float]) -> str:
    """The eval stage's metrics file (deterministic: the same scores give the same bytes)."""
    mean = sum(scores.values()) / len(scores)
    return json.dumps({"mean": round(mean, 6), "scores": {k: round(v, 6) for k, v in sorted(scores.items())}},
                      indent=1, sort_keys=True) + "\n"


def write_metrics(path: Path, scores: dict[str, float]) -> None:
    write_text(path, metrics_json(scores))


def version_outputs(settings: Settings, store: Path, scores: dict[str, float]) -> DvcRecord:
    """Materialise the merge into the DVC stage outputs, ``dvc commit`` and ``dvc push``; return the md5s."""
    cfg = settings.pipeline.dvc
    project = settings.project
    merged, metrics = settings.path("merged"), settings.path("eval") / "metrics.json"
    if not cfg.enabled:
        return DvcRecord(enabled=False, reason="pipeline.dvc.enabled is false")
    if not dvcio.is_dvc_repo(project):
        return DvcRecord(enabled=False, reason=f"{project} is not a DVC repository")
    names = dvcio.stage_names(project)
    stages = [suite_stage(settings, s, names) for s in cfg.stages]
    missing = sorted(s for s in stages if s not in names)
    if missing:
        raise dvcio.DvcError(f"dvc.yaml has no stage(s) {', '.join(missing)} (pipeline.dvc.stages)")
    with project_lock(settings.work, "dvc"):
        materialize(store, merged)
        write_metrics(metrics, scores)
        dvcio.commit(project, stages)
        pushed = False
        if cfg.push and dvcio.has_remote(project):
            dvcio.push(project, stages)  # raises (DVC's message) when the remote is down: nothing registered
            pushed = True
        entries = dvcio.lock_entries(project, stages)
        rel = merged.relative_to(project).as_posix()
        md5 = next((e[rel] for e in entries.values() if rel in e), None)
        exp = None
        if cfg.history == "exp" and (project / ".git").exists():
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            name = dvcio.exp_name(stamp, md5)
            sha = dvcio.exp_save(project, name, stages, [metrics.relative_to(project).as_posix()])
            exp = {"name": name, "sha": sha}
            if cfg.exp_push:  # raises when the git remote refuses: nothing registered, like `dvc push`
                dvcio.exp_push(project, cfg.exp_push, name)
                exp["pushed_to"] = cfg.exp_push
            if cfg.exp_keep:
                exp["pruned"] = ",".join(dvcio.exp_prune(project, cfg.exp_keep, cfg.exp_push))
    return DvcRecord(enabled=True, path=rel, md5=md5, pushed=pushed, lock=entries, exp=exp)


def suite_stage(settings: Settings, stage: str, names: set[str]) -> str:
    """The DVC stage a night of this suite commits to: ``merge@<suite>`` when dvc.yaml has one stage per suite (a
    ``foreach`` over ``suites:``), else the plain ``merge``."""
    per_suite = f"{stage}@{settings.pipeline.suite}"
    return per_suite if settings.pipeline.suite and per_suite in names else stage


def dvc_consistent(settings: Settings) -> str | None:
    """Why dvc.lock must not record this run (None: it may): overrides of what the DVC stages read. With one stage
    per suite, a night of another suite than params.yaml's default (``--suite``) is what its own stage reads."""
    if settings.params_path != settings.project / "params.yaml":
        return f"the run read {settings.params_path.name}, but the DVC stages read params.yaml"
    suite = settings.pipeline.suite
    names = dvcio.stage_names(settings.project) if suite else set()
    per_suite = suite and all(f"{s}@{suite}" in names for s in settings.pipeline.dvc.stages)
    on_disk = load_settings(settings.project, settings.params_path, {"suite": suite} if per_suite else None)
    if on_disk.merge != settings.merge:
        return "the recipe was overridden (not what params.yaml says)"
    for key in ("catalog", "dtype", "calibrate", "eval", "paths", "search"):
        if getattr(on_disk.pipeline, key) != getattr(settings.pipeline, key):
            return f"pipeline.{key} was overridden (not what params.yaml says)"
    return None
