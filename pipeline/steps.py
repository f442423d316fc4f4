"""The nightly pipeline's Prefect tasks: thin wrappers over the plain step modules, each with its retries and logs.

Prefect's own result cache is off (``NO_CACHE``): caching is content-addressed inside the steps (the merge store and
the eval cache are keyed on sha256 of the inputs' bytes), which also holds across processes, task runners, Prefect
servers and the DVC stages.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import pico

from . import evaluation, sources, merging, promotion, versioning
from .settings import CatalogEntry, Settings
from .errors import is_permanent
from .records import (ChampionRecord, Decision, DvcRecord, EvalResult, FetchedSource, Lineage, MergeResult,
                      Registration)


def transient(task_, task_run, state) -> bool:
    """Retry condition: retry anything but a permanent error (``PipelineError.permanent``, pico's AdapterError)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result()
        except BaseException as e:  # noqa: BLE001
            exc = e
    return not is_permanent(exc)


@task(name="mlflow-preflight", cache_policy=NO_CACHE)
def mlflow_preflight(settings: Settings) -> str:
    exp = promotion.preflight(settings)
    get_run_logger().info("MLflow %s reachable (experiment %s)", settings.tracking_uri, exp)
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


@task(name="validate", cache_policy=NO_CACHE)
def validate(settings: Settings, fetched: list[FetchedSource]) -> tuple[pico.AdapterSet, list[list[str]], str,
                                                                       MergeResult | None]:
    """pico's checks on the set; the merge plan; the content key; a verified cached merge if there is one."""
    recipe = settings.recipe
    aset = merging.load_set(fetched)
    if recipe.weights is not None and len(recipe.weights) != len(aset):
        raise ValueError(f"merge.weights has {len(recipe.weights)} entries for {len(aset)} adapters")
    groups = merging.plan_groups(aset, recipe, settings.pipeline.calibrate.layers_per_group)
    key = merging.merge_key(fetched, recipe, settings.pipeline.dtype, merging.device_class(settings))
    store = merging.store_dir(settings, key)
    manifest = merging.verify_dir(store)
    log = get_run_logger()
    log.info("%d adapters valid: %d modules in %d groups; merge key %s%s", len(aset), len(aset.modules), len(groups),
             key[:16], " (cached)" if manifest else "")
    if manifest is None:
        return aset, groups, key, None
    merging.check_sources(manifest, fetched)
    log.info("merge cache hit: %s (same sources, recipe and pico version)", store)
    return aset, groups, key, MergeResult(key=key, store=str(store), manifest=manifest, cached=True)


@task(name="calibrate", cache_policy=NO_CACHE, task_run_name="calibrate-{modules[0]}")
def calibrate(aset: pico.AdapterSet, modules: list[str], recipe: pico.Recipe, device: str = "auto",
              threads: int | None = 1):
    return merging.calibrate_group(aset, modules, recipe, device, threads)


@task(name="merge-group", cache_policy=NO_CACHE)
def merge_group(cal, recipe: pico.Recipe, threads: int | None = 1):
    return merging.merge_group(cal, recipe, threads)


@task(name="write", cache_policy=NO_CACHE)
def write(settings: Settings, key: str, aset: pico.AdapterSet, groups: list[list[str]], results,
          fetched: list[FetchedSource]) -> MergeResult:
    store, manifest, reused = merging.write_store(settings, key, aset, settings.recipe, groups, results,
                                                  settings.pipeline.dtype)
    merging.check_sources(manifest, fetched)
    get_run_logger().info("merged adapter %s (%d modules, rank <= %d)%s", store, manifest["output"]["modules"],
                          manifest["output"]["max_rank"], " (written by a concurrent run)" if reused else "")
    return MergeResult(key=key, store=str(store), manifest=manifest, cached=False)


@task(name="benchmark", cache_policy=NO_CACHE, task_run_name="benchmark-{label}")
def run_benchmark(settings: Settings, base: FetchedSource, adapter_dir: str | None, label: str) -> EvalResult:
    rec = evaluation.evaluate_cached(settings, base, adapter_dir, label)
    get_run_logger().info("%s: mean %.4f %s%s", label, rec.mean, rec.scores,
                          " (cached)" if rec.cached else f" ({rec.seconds} s)")
    return rec


@task(name="champion", cache_policy=NO_CACHE)
def champion(settings: Settings, base: FetchedSource, fingerprint: str) -> ChampionRecord | None:
    """The current champion with its scores on *this* benchmark (re-evaluated from its artifacts if it was scored on
    another one)."""
    rec = promotion.champion_record(settings)
    if rec is None or rec.fingerprint == fingerprint:
        return rec
    dest = settings.work / "registry-cache" / f"v{rec.version}-{(rec.merge_key or 'x')[:12]}"
    path = promotion.download_version(settings, rec.source, dest)
    ev = evaluation.evaluate_cached(settings, base, path, f"champion v{rec.version}")
    get_run_logger().info("champion v%s re-scored on this benchmark: mean %.4f", rec.version, ev.mean)
    return rec.model_copy(update={"scores": ev.scores, "mean": ev.mean, "fingerprint": fingerprint})


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
def register(settings: Settings, lineage: Lineage, store: str, base: FetchedSource, params: dict, metrics: dict,
             stderr: dict[str, float], artifacts: dict) -> Registration:
    rec = promotion.register(settings, lineage=lineage, store=Path(store), base=base, params=params, metrics=metrics,
                             stderr=stderr, artifacts=artifacts)
    get_run_logger().info("MLflow run %s; %s version %s%s", rec.run_id, rec.model, rec.version,
                          " (existing version: same bytes, same benchmark; nothing uploaded)" if rec.reused else "")
    return rec


@task(name="promote", cache_policy=NO_CACHE)
def promote(settings: Settings, version: str, scores: dict[str, float], fingerprint: str,
            champ: ChampionRecord | None, verdict=None) -> Decision:
    decision = promotion.promote(settings, version, scores, fingerprint, champ, verdict)
    get_run_logger().info("promotion: v%s -> %s: %s", version, decision.alias, "; ".join(decision.reasons))
    return decision


# ---------------------------------------------------------------------------------------------------------------
# Per-sample outcomes, the statistical gate, and the search's MLflow records


@task(name="benchmark-test", cache_policy=NO_CACHE, task_run_name="benchmark-test-{label}")
def run_test_benchmark(settings: Settings, base: FetchedSource, adapter_dir: str | None, label: str) -> EvalResult:
    """The test split with per-sample outcomes (lm-eval ``log_samples``, or the scorer's), cached by content."""
    from . import scoring

    rec = scoring.score_test(settings, base, adapter_dir, label)
    get_run_logger().info("%s: test mean %.4f%s %s%s", label, rec.mean,
                          f" ± {rec.mean_stderr:.4f}" if rec.mean_stderr is not None else "", rec.scores,
                          " (cached)" if rec.cached else f" ({rec.seconds} s)")
    return rec


@task(name="champion-outcomes", cache_policy=NO_CACHE)
def champion_outcomes(settings: Settings, base: FetchedSource, champ: ChampionRecord) -> EvalResult:
    """The champion's per-sample test outcomes: its merged adapter from the local store (same merge key, verified)
    or from MLflow, scored on this benchmark (a cache hit when it was scored here before)."""
    from . import scoring

    path = None
    if champ.merge_key:
        local = merging.store_dir(settings, champ.merge_key)
        if merging.verify_dir(local) is not None:
            path = local
    if path is None:
        dest = settings.work / "registry-cache" / f"v{champ.version}-{(champ.merge_key or 'x')[:12]}"
        path = promotion.download_version(settings, champ.source, dest)
    return scoring.score_test(settings, base, str(path), f"champion v{champ.version}")


@task(name="gate", cache_policy=NO_CACHE)
def statistical_gate(settings: Settings, result: EvalResult, champ: ChampionRecord | None,
                     champ_eval: EvalResult | None):
    """The paired test (pipeline/gate.py) when per-sample outcomes exist; None: the scorer gives plain scores, and the
    promotion step compares means."""
    from . import gate

    if not result.outcomes or (champ is not None and not (champ_eval and champ_eval.outcomes)):
        get_run_logger().warning("no per-sample outcomes from the scorer: the gate compares means (no test)")
        return None
    verdict = gate.judge(result.outcomes, champ_eval.outcomes if champ is not None else None, settings.pipeline.gate,
                         champion_name=f"the champion v{champ.version}" if champ else "the champion")
    get_run_logger().info("gate: %s: %s", "promote" if verdict.promote else "refuse", "; ".join(verdict.reasons))
    return verdict


@task(name="record-search-and-gate", cache_policy=NO_CACHE)
def record_search_and_gate(settings: Settings, registered: Registration, found: dict | None, result: EvalResult,
                           champ: ChampionRecord | None, champ_eval: EvalResult | None, verdict) -> None:
    """Child runs per candidate, the outcomes table and gate statistics on the night's run, tags on the version."""
    from . import scoring, tracking

    if found is not None:
        tracking.log_candidates(settings, registered.run_id, found)
    models = {"merged": result}
    if champ_eval is not None:
        models[f"champion v{champ.version}"] = champ_eval
    tracking.log_night(settings, registered.run_id, outcomes_table=scoring.outcomes_table(models), search=found,
                       gate=verdict.to_dict() if verdict is not None else None)
    tags = tracking.search_tags(found, result)
    if tags and not registered.reused:
        tracking.tag_version(settings, registered.version, tags)
