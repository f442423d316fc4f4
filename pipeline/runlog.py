"""What the nightly run logs, built from the step records: the lineage (lineage.json and the version's tags), the
MLflow params, metrics and artifacts, and the per-step timings."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from . import merging
from .settings import Settings
from .records import (ChampionRecord, DvcRecord, EvalResult, FetchedSource, GitInfo, Lineage, LineageBase,
                      LineageEval, LineageOutput, LineageSource, MergeResult)


def git_info(project: Path) -> GitInfo:
    def git(*args):
        proc = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    # the pipeline's own writes (dvc.lock, kept per night by `dvc exp save`) do not make the tree dirty
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock")) \
        if commit else None
    return GitInfo(commit=commit, dirty=dirty)


def build_lineage(settings: Settings, fetched: list[FetchedSource], base: FetchedSource, merged: MergeResult,
                  benchmark: dict, fingerprint: str, result: EvalResult, dvc: DvcRecord) -> Lineage:
    manifest = merged.manifest
    output = LineageOutput(files=manifest["output"]["files"])
    if dvc.enabled:
        output.dvc = {"path": dvc.path, "md5": dvc.md5, "pushed": dvc.pushed, "exp": dvc.exp}
    return Lineage(
        pico_version=manifest["pico_version"], merge_key=merged.key, recipe=manifest["recipe"],
        recipe_hash=manifest["recipe_hash"],
        sources=[LineageSource(**f.model_dump(include={"name", "uri", "path", "revision", "sha256", "files", "dvc"}))
                 for f in fetched],
        base=LineageBase(**base.model_dump(include={"name", "uri", "revision", "sha256"})),
        output=output, git=git_info(settings.project),
        eval=LineageEval(fingerprint=fingerprint, benchmark=benchmark, scores=result.scores, mean=result.mean),
        project=str(settings.project), dvc_lock=dvc.lock if dvc.enabled else None)


def run_params(settings: Settings, merged: MergeResult) -> dict:
    """The run's params (flattened by the registry): the recipe, the catalog, the benchmark and gate settings."""
    p = settings.pipeline
    return {"merge": settings.merge, "recipe_hash": merged.manifest["recipe_hash"],
            "catalog": [e.to_dict() for e in settings.catalog.adapters], "eval": p.eval.model_dump(),
            "gate": p.gate.model_dump(), "task_runner": p.task_runner.kind, "dtype": p.dtype, "merge_key": merged.key}


def run_metrics(result: EvalResult, baselines: list[EvalResult], champion: ChampionRecord | None,
                timings: dict[str, float]) -> dict[str, float]:
    metrics = {f"score.{k}": v for k, v in result.scores.items()}
    metrics["score.mean"] = result.mean
    for b in baselines:
        metrics[f"baseline.{b.label}.mean"] = b.mean
    if champion is not None:
        metrics["champion.mean"] = champion.mean
    metrics.update({f"time.{k}_s": v for k, v in timings.items()})
    return metrics


def search_metrics(result: EvalResult, found: dict | None, verdict) -> dict[str, float]:
    """Each score's stderr, the search's size and margin, the paired test's gain and p-value."""
    metrics = {f"score.{k}.stderr": v for k, v in result.stderr.items() if v == v}
    if result.mean_stderr is not None:
        metrics["score.mean.stderr"] = result.mean_stderr
    if found is not None:
        metrics.update({"search.candidates": len(found["records"]), "search.cached": found["cached"],
                        "search.validation_mean": found["chosen"]["validation"]["mean"]})
        if found["margin"] is not None:
            metrics["search.runner_up_margin"] = found["margin"]
    if verdict is not None and verdict.comparison is not None:
        c = verdict.comparison
        metrics.update({"gate.gain": c.gain, "gate.gain_stderr": c.gain_stderr, "gate.p_gain": c.p_gain})
    return metrics


def run_artifacts(settings: Settings, merged: MergeResult, result: EvalResult, baselines: list[EvalResult],
                  champion: ChampionRecord | None, lineage: Lineage) -> dict[str, Path | dict]:
    """The run's artifacts: the manifest, per-layer diagnostics (JSON and a plot), evaluations, lineage, config."""
    plot = merging.plot_diagnostics(merged.manifest, settings.work / "plots" / f"{merged.key[:16]}.png")
    return {"merge_manifest.json": Path(merged.store) / "merge_manifest.json",
            "diagnostics.json": merging.diagnostics(merged.manifest), "plots/diagnostics.png": plot,
            "eval.json": {"merged": result.model_dump(), "baselines": [b.model_dump() for b in baselines],
                          "champion": champion.model_dump() if champion else None},
            "lineage.json": lineage.to_json(), "config/params.yaml": settings.params_path,
            "config/catalog.yaml": settings.catalog.path}


class Clock:
    """Per-step wall times of the night (seconds since the previous mark)."""

    def __init__(self):
        self._now = time.perf_counter
        self.start = self._now()
        self.marks: list[tuple[str, float]] = []

    def mark(self, step: str) -> None:
        self.marks.append((step, self._now()))

    def durations(self) -> dict[str, float]:
        out, prev = {}, self.start
        for step, at in self.marks:
            out[step] = round(at - prev, 2)
            prev = at
        out["total"] = round(prev - self.start, 2)
        return out
