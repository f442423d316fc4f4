"""Every Prefect task of the nightly pipeline: thin wrappers over the plain modules, each with its retries and logs.

Prefect's own result cache is off (``NO_CACHE``) except for a search candidate: caching is content-addressed inside
the steps (the merge store, the eval cache and the candidates' records are keyed on sha256 of the inputs' bytes),
which also holds across processes, task runners, Prefect servers and the DVC stages. A candidate's content key is
also its task's ``cache_key_fn`` (results as JSON under ``<work>/prefect-results``), so an unchanged night shows
every candidate ``Cached`` in the Prefect UI.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.filesystems import LocalFileSystem
from prefect.runtime import flow_run

import pico
from pico.writer import json_digest

from . import evaluation, gate, merging, notify, render, runtime, search, sources, versioning
from .errors import is_permanent
from .records import (
    Candidate,
    CandidateRecord,
    ChampionRecord,
    Decision,
    DvcRecord,
    EvalResult,
    Evaluation,
    FetchedSource,
    MergeResult,
    NightlyResult,
    Registration,
    SearchResult,
    Sources,
    Verdict,
)
from .settings import CatalogEntry, Settings
from .tracking import client as mlflow_client
from .tracking import lineage, runs
from .tracking import promote as registry


def transient(task_, task_run, state) -> bool:
    """Retry condition: retry anything but a permanent error (``PipelineError.permanent``, pico's errors)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result()
        except BaseException as e:  # noqa: BLE001
            exc = e
    return not is_permanent(exc)


# ---------------------------------------------------------------------------------------------------------------
# Fetch the sources


@task(name="mlflow-preflight", cache_policy=NO_CACHE)
def mlflow_preflight(settings: Settings) -> str:
    exp = mlflow_client.preflight(settings)
    get_run_logger().info("MLflow %s reachable (experiment %s)", settings.tracking_uri, exp)
    guard = mlflow_client.check_guard(settings)  # the cross-host alias guard, with a Prefect server
    if guard:
        get_run_logger().info("alias guard: Prefect global concurrency limit %s", guard)
    return exp


@task(name="fetch", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=2, retry_condition_fn=transient,
      task_run_name="fetch-{entry.name}")
def fetch_adapter(settings: Settings, entry: CatalogEntry) -> FetchedSource:
    rec = sources.fetch_entry(settings, entry)
    get_run_logger().info("%s: %s -> %s sha256 %s%s", entry.name, entry.source, rec.path, rec.sha256[:16],
                          " (pin ok)" if rec.pinned else "")
    return rec


@task(name="fetch-base", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=2, retry_condition_fn=transient)
def fetch_base(settings: Settings) -> FetchedSource | None:
    return sources.fetch_base(settings)


# ---------------------------------------------------------------------------------------------------------------
# Choose and merge


@task(name="validate", cache_policy=NO_CACHE)
def load_set(fetched: list[FetchedSource]) -> pico.AdapterSet:
    """pico's checks on the set (same base, shapes, PEFT fields understood)."""
    aset = merging.load_set(fetched)
    get_run_logger().info("%d adapters valid: %d modules", len(aset), len(aset.modules))
    return aset


@task(name="calibrate", cache_policy=NO_CACHE, task_run_name="calibrate-{modules[0]}")
def calibrate(aset: pico.AdapterSet, modules: list[str], recipe: pico.Recipe, device: str = "auto",
              threads: int | None = 1):
    return merging.calibrate_group(aset, modules, recipe, device, threads)


@task(name="merge-group", cache_policy=NO_CACHE)
def merge_group(cal, recipe: pico.Recipe, threads: int | None = 1):
    return merging.merge_group(cal, recipe, threads)


def _candidate_key(ctx, params) -> str:
    return f"pico-candidate-v2-{params['cache_key']}"  # v2: the result is a CandidateRecord (v1: a dict)


@task(name="candidate", cache_key_fn=_candidate_key, persist_result=True, result_serializer="json",
      task_run_name="candidate-{candidate.index}")
def score_candidate(settings: Settings, aset: pico.AdapterSet, fetched: list[FetchedSource], base: FetchedSource,
                    candidate: Candidate, merge_key: str, key: str, cache_key: str) -> CandidateRecord:
    """One candidate merged and scored on validation (``cache_key``: its record's key and the project)."""
    if candidate.kind == "learned" and not search.record_path(settings, key).is_file():
        cfg = candidate.tara_config().resolve(len(fetched))
        get_run_logger().info("%s: teacher replies to %d prompts (cached by content), then %s training steps on %d "
                              "torch threads (minutes on a CPU: progress below)", candidate.label,
                              sum(f.prompts.n for f in fetched if f.prompts), cfg.total_steps(cfg.steps_per_epoch),
                              merging.learn_threads(settings))
    rec = search.run_candidate(settings, aset, fetched, base, candidate, merge_key, key,
                               runtime.progress_lines(get_run_logger(), candidate.label))
    get_run_logger().info("%-40s validation mean %.4f%s", candidate.label, rec.validation.mean,
                          " (cached)" if rec.cached else f" (merge {rec.merge_s} s, score {rec.score_s} s)")
    if rec.training and not rec.cached:
        create_markdown_artifact(key="pico-learned-merge", markdown=render.learned_markdown(rec),
                                 description="The learned merge candidate: its cost and training curve")
    return rec


def result_storage(settings: Settings):
    """The candidates' Prefect results: a local store under the project's work dir, saved as a block named after it
    (Prefect 3 wants result storage persisted server-side); None when it cannot be saved."""
    path = settings.work / "prefect-results"
    path.mkdir(parents=True, exist_ok=True)
    block = LocalFileSystem(basepath=str(path))
    with contextlib.suppress(Exception):
        block.save(f"pico-results-{json_digest(str(path))[:12]}", overwrite=True)
        return block
    return None


def cache_key(settings: Settings, key: str) -> str:
    return json_digest({"candidate": key, "project": str(settings.work)})


# ---------------------------------------------------------------------------------------------------------------
# Benchmark and judge


@task(name="benchmark", cache_policy=NO_CACHE, task_run_name="benchmark-{label}")
def benchmark(settings: Settings, base: FetchedSource, adapter_dir: str | None, label: str) -> EvalResult:
    """The test split with per-sample outcomes (lm-eval ``log_samples``, or the scorer's), cached by content."""
    rec = evaluation.evaluate(settings, base, adapter_dir, label)
    get_run_logger().info("%s: test mean %s %s%s", label, render.pm(rec.mean, rec.mean_stderr), rec.scores,
                          " (cached)" if rec.cached else f" ({rec.seconds} s)")
    return rec


@task(name="champion", cache_policy=NO_CACHE)
def champion(settings: Settings, base: FetchedSource, fingerprint: str) -> tuple[ChampionRecord | None,
                                                                                  EvalResult | None]:
    """The current champion, with its scores and per-sample outcomes on *this* benchmark: its merged adapter (the
    local store, else MLflow) evaluated once (a cache hit when it was scored here before)."""
    rec = registry.champion_record(settings)
    if rec is None:
        return None, None
    ev = evaluation.evaluate(settings, base, str(registry.champion_adapter(settings, rec)), f"champion v{rec.version}")
    if rec.fingerprint != fingerprint:  # scored on another benchmark when it was registered
        get_run_logger().info("champion v%s re-scored on this benchmark: mean %.4f", rec.version, ev.mean)
        rec = rec.model_copy(update={"scores": ev.scores, "mean": ev.mean, "fingerprint": fingerprint})
    return rec, ev


@task(name="gate", cache_policy=NO_CACHE)
def judge(settings: Settings, result: EvalResult, champ: ChampionRecord | None,
          champ_eval: EvalResult | None) -> Verdict | None:
    """The paired test (pipeline/gate.py) when per-sample outcomes exist; None: the scorer gives plain scores, and the
    promotion step compares means."""
    champ_outcomes = champ_eval.outcomes if champ is not None and champ_eval is not None else None
    if not result.outcomes or (champ is not None and not champ_outcomes):
        get_run_logger().warning("no per-sample outcomes from the scorer: the gate compares means (no test)")
        return None
    verdict = gate.judge(result.outcomes, champ_outcomes, settings.pipeline.gate,
                         champion_name=f"the champion v{champ.version}" if champ else "the champion")
    get_run_logger().info("gate: %s: %s", "promote" if verdict.promote else "refuse", "; ".join(verdict.reasons))
    return verdict


# ---------------------------------------------------------------------------------------------------------------
# Version, register and promote


@task(name="version-dvc", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=3, retry_condition_fn=transient)
def version_dvc(settings: Settings, store: str, scores: dict[str, float]) -> DvcRecord:
    skip_reason = versioning.dvc_consistent(settings)
    if skip_reason:  # dvc.lock would claim params.yaml produced an output it did not
        rec = DvcRecord(enabled=False, reason=f"{skip_reason}; dvc.lock left as is")
    else:
        rec = versioning.version_outputs(settings, Path(store), scores)
    log = get_run_logger()
    if rec.enabled:
        log.info("DVC: %s md5 %s committed to dvc.lock%s", rec.path, rec.md5, ", pushed" if rec.pushed else "")
    else:
        log.warning("DVC versioning skipped: %s", rec.reason)
    return rec


@task(name="register", cache_policy=NO_CACHE)
def register(settings: Settings, srcs: Sources, merged: MergeResult, found: SearchResult | None, ev: Evaluation,
             dvc: DvcRecord, timings: dict[str, float]) -> Registration:
    """The night's lineage, its MLflow run and model version (reused when the same identity exists); the candidates'
    child runs, the outcomes table and the gate's statistics."""
    lin = lineage.build_lineage(settings, srcs.adapters, srcs.base, merged, ev.benchmark, ev.merged, dvc)
    rec = runs.register(settings, lin, merged, srcs.base, ev, found, timings)
    get_run_logger().info("MLflow run %s; %s version %s%s", rec.run_id, rec.model, rec.version,
                          " (existing version: same bytes, same benchmark; nothing uploaded)" if rec.reused else "")
    runs.record_search_and_gate(settings, rec, ev, found)
    return rec


@task(name="promote", cache_policy=NO_CACHE)
def promote(settings: Settings, version: str, ev: Evaluation) -> Decision:
    decision = registry.promote(settings, version, ev.merged.scores, ev.fingerprint, ev.champion, ev.verdict)
    get_run_logger().info("promotion: v%s -> %s: %s", version, decision.alias, "; ".join(decision.reasons))
    return decision


@task(name="publish", cache_policy=NO_CACHE)
def publish(settings: Settings, night: NightlyResult) -> NightlyResult:
    """The night's Prefect artifacts (stable keys: each night adds a version to the same artifact's history) and the
    promotion notification; the result, with the flow run and the artifacts' keys."""
    board = registry.leaderboard(settings, limit=8, fingerprint=night.fingerprint)
    made = []
    if night.search:
        create_table_artifact(key="pico-candidates", table=night.search.leaderboard,
                              description="Recipe search: candidates by validation mean (the argmax is the night's "
                                          "merge)")
        made.append("pico-candidates")
    create_table_artifact(key="pico-leaderboard", table=render.leaderboard_table(night, board),
                          description="Registered versions by test mean ± stderr (same benchmark), then baselines")
    create_markdown_artifact(key="pico-decision", markdown=render.decision_markdown(night),
                             description="The night's recipe and promotion decision")
    made += ["pico-leaderboard", "pico-decision"]
    if night.mlflow_url:
        create_link_artifact(key="pico-mlflow-run", link=night.mlflow_url,
                             link_text=f"MLflow run {night.registered.run_id}",
                             description="The night's MLflow run (child runs: one per candidate)")
        made.append("pico-mlflow-run")
    if night.decision.promoted and not night.decision.unchanged:
        notify.send(settings.pipeline.notify, "promotion", *render.promotion_message(night))
    return night.model_copy(update={"artifacts": made, "flow_run_id": str(flow_run.id)})
