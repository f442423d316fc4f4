"""Version the merged adapter and its scores with DVC: the flow's results become the ``merge``/``eval`` stage outputs.

The flow writes exactly what ``dvc repro`` would (same code path, same bytes) into the stage outputs, then
``dvc commit`` records it in dvc.lock (deps, params and output md5s) and ``dvc push`` copies it to the DVC remote.
So dvc.lock always says what produced the latest merge, ``dvc repro`` afterwards finds nothing to do, and older
merges stay in the DVC cache/remote under the md5 recorded in each model version's lineage.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from . import dvcio
from .config import Settings, load_settings
from .merging import materialize
from .records import DvcRecord


def metrics_json(scores: dict[str, float]) -> str:
    """The eval stage's metrics file (deterministic: the same scores give the same bytes)."""
    mean = sum(scores.values()) / len(scores)
    return json.dumps({"mean": round(mean, 6), "scores": {k: round(v, 6) for k, v in sorted(scores.items())}},
                      indent=1, sort_keys=True) + "\n"


def write_metrics(path: Path, scores: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(metrics_json(scores))
    tmp.replace(path)


def lock_entries(project: Path, stages: list[str]) -> dict[str, dict[str, str]]:
    """For each stage in dvc.lock: path -> md5 of its deps and outs (what the lineage records)."""
    lock = project / "dvc.lock"
    if not lock.is_file():
        return {}
    data = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    out = {}
    for stage in stages:
        info = data.get(stage) or {}
        entries = {d["path"]: d.get("md5") for d in (info.get("deps") or []) + (info.get("outs") or [])}
        if entries:
            out[stage] = entries
    return out


def dvc_stages(project: Path) -> set[str]:
    path = project / "dvc.yaml"
    if not path.is_file():
        return set()
    return set(((yaml.safe_load(path.read_text()) or {}).get("stages") or {}))


def version_outputs(settings: Settings, store: Path, scores: dict[str, float]) -> DvcRecord:
    """Materialise the merge into the DVC stage outputs, ``dvc commit`` and ``dvc push``; return the md5s."""
    cfg = settings.pipeline.dvc
    project = settings.project
    merged, metrics = settings.path("merged"), settings.path("eval") / "metrics.json"
    if not cfg.enabled:
        return DvcRecord(enabled=False, reason="pipeline.dvc.enabled is false")
    if not dvcio.is_dvc_repo(project):
        return DvcRecord(enabled=False, reason=f"{project} is not a DVC repository")
    stages = [s for s in cfg.stages if s in dvc_stages(project)]
    missing = sorted(set(cfg.stages) - set(stages))
    if missing:
        raise dvcio.DvcError(f"dvc.yaml has no stage(s) {', '.join(missing)} (pipeline.dvc.stages)")
    with dvcio.project_lock(settings.work, "dvc"):
        materialize(store, merged)
        write_metrics(metrics, scores)
        dvcio.dvc_cmd(project, "commit", "--force", *stages)
        pushed = False
        if cfg.push and dvcio.has_remote(project):
            dvcio.dvc_cmd(project, "push", *stages)
            pushed = True
        entries = lock_entries(project, stages)
    rel = merged.relative_to(project).as_posix()
    md5 = next((e[rel] for e in entries.values() if rel in e), None)
    return DvcRecord(enabled=True, path=rel, md5=md5, pushed=pushed, lock=entries)


def dvc_consistent(settings: Settings) -> str | None:
    """Why dvc.lock must not record this run (None: it may): overrides of what the DVC stages read."""
    if settings.params_path != settings.project / "params.yaml":
        return f"the run read {settings.params_path.name}, but the DVC stages read params.yaml"
    on_disk = load_settings(settings.project, settings.params_path)
    if on_disk.merge != settings.merge:
        return "the recipe was overridden (not what params.yaml says)"
    for key in ("catalog", "dtype", "calibrate", "eval", "paths"):
        if getattr(on_disk.pipeline, key) != getattr(settings.pipeline, key):
            return f"pipeline.{key} was overridden (not what params.yaml says)"
    return None
