"""The nightly merge, as the design card says it: fetch the team's adapters; choose the recipe on validation and
merge it, calibrating per layer group on the workers; benchmark and judge it; version (DVC), register (MLflow) and
promote it.

Run it (builds the skills suite with ``dvc repro`` first if it is missing, then prints the leaderboard, the promotion
decision and where to look)::

    python -m flows.nightly                   # embedded default: SQLite MLflow, Prefect ephemeral API, DVC local
    MLFLOW_TRACKING_URI=http://host:5000 python -m flows.nightly
    python -m flows.nightly --set merge.method=ties --set merge.params.density=0.5

Only composition lives here: the flow's four steps call the tasks of ``pipeline.steps`` (thin Prefect tasks over plain
modules) and pass the records of ``pipeline.records``; the recipe search and the calibrate/merge map are subflows with
their own task runner. The four steps are plain functions in the flow's run, not subflows: a subflow costs a flow run
of its own (about 0.9 s each here, 3.5 s a night: measured on the tests' nights). The schedule lives in
``flows/deploy.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, unmapped

import pico
from pico.writer import json_digest
from pipeline import evaluation, merging, notify, render, runtime, search, sources, steps
from pipeline.build import ensure_suite
from pipeline.records import Evaluation, MergeResult, NightlyResult, SearchResult, Sources
from pipeline.settings import Settings, load_settings
from pipeline.tracking.promote import leaderboard
from pipeline.tracking.runs import run_url

CODE_ROOT = Path(steps.__file__).resolve().parents[1]  # the pipeline code this run imported (a worker's: its clone)


# no timeout_seconds here: the flow applies the project's pipeline.schedule.flow_timeout_s itself (runtime.flow_timeout),
# so a worker's run of the deployment, which imports this decorator's options, times out as params.yaml says
@flow(name="nightly-merge", log_prints=True, on_failure=[notify.on_failure_hook], on_crashed=[notify.on_failure_hook])
def nightly_merge(project: str = ".", params: str = "params.yaml", overrides: dict | None = None) -> NightlyResult:
    """Fetch the sources; choose the recipe on validation (when params.yaml's merge: is a search space) and merge
    it; benchmark it on the test split and judge it against the champion; version, register and promote it."""
    settings = load_settings(project, params, overrides)  # a relative project: against the run's folder (a clone)
    get_run_logger().info("project %s, code %s, work %s", settings.project, CODE_ROOT, settings.work)
    with runtime.flow_timeout(settings.pipeline.schedule.flow_timeout_s):
        evaluation.check_benchmark(settings)  # task lists resolved (groups expanded), floors and overlaps checked
        clock = runtime.Clock()
        srcs = clock.mark("fetch", fetch_sources(settings))
        merged, found = clock.mark("choose_merge", choose_and_merge(settings, srcs))
        judged = clock.mark("benchmark_judge", benchmark_and_judge(settings, srcs, merged))
        night = clock.mark("version_register_promote", version_register_promote(settings, srcs, merged, found,
                                                                                 judged, clock.durations()))
        return steps.publish(settings, night.model_copy(update={"timings": clock.durations()}))


def fetch_sources(settings: Settings) -> Sources:
    """The catalog's adapters, base and baselines, pinned and retried; MLflow checked beside them (an unreachable
    server fails the night here, in seconds, before any merge)."""
    evaluation.prewarm(settings)  # lm-eval's import or the scorer's preparation, in the background
    preflight = steps.mlflow_preflight.submit(settings)
    fetch = steps.fetch_adapter.with_options(retries=settings.pipeline.fetch.retries,
                                             retry_delay_seconds=settings.pipeline.fetch.retry_delay_s)
    adapters = [fetch.submit(settings, e) for e in settings.catalog.adapters]
    base = steps.fetch_base.submit(settings)
    baselines = [fetch.submit(settings, e) for e in settings.catalog.baselines]
    fetched = [f.result() for f in adapters]
    preflight.result()  # raises RegistryUnavailable: nothing below runs, no alias moves
    return Sources(adapters=fetched, base=sources.resolve_base(settings, base.result(), fetched[0].path),
                   baselines=[f.result() for f in baselines])


def choose_and_merge(settings: Settings, srcs: Sources) -> tuple[MergeResult, SearchResult | None]:
    """The validation argmax of the search space (or the one recipe), merged into the store with each layer group
    calibrated on the task runner's workers (nothing recomputed when the store has it: the chosen candidate does)."""
    aset = steps.load_set(srcs.adapters)
    found, chosen, runner = None, settings.space.candidates[0], None

    def on_workers(aset: pico.AdapterSet, groups: list[list[str]], recipe: pico.Recipe) -> list:
        nonlocal runner
        runner = runtime.make_task_runner(settings)
        return calibrate_and_merge.with_options(task_runner=runner)(settings, aset, groups, recipe)

    with runtime.torch_threads():  # the tasks pin it for identical bytes; the rest of the run gets it back
        if settings.search:
            get_run_logger().info("recipe search: %s", settings.space.describe())
            found = recipe_search.with_options(task_runner=runtime.make_task_runner(settings))(settings, aset, srcs)
            chosen = found.chosen
        merged = merging.merge_chosen(settings, aset, srcs.adapters, srcs.base, chosen, compute=on_workers)
    merged = merged.model_copy(update={"runner": runner and type(runner).__name__})
    get_run_logger().info("merged adapter %s (%d modules, rank <= %d)%s", merged.store,
                          merged.manifest["output"]["modules"], merged.manifest["output"]["max_rank"],
                          " (cached)" if merged.cached else "")
    return merged, found


@flow(name="recipe-search")
def recipe_search(settings: Settings, aset: pico.AdapterSet, srcs: Sources) -> SearchResult:
    """Every candidate merged and scored on the validation split, one task each, mapped over the task runner and
    cached by content; the validation argmax is the night's recipe."""
    candidate = steps.score_candidate.with_options(result_storage=steps.result_storage(settings))

    def score_all(st: Settings, jobs: list[search.Job]):
        cands, mkeys, keys = zip(*jobs)
        learned = any(c.kind == "learned" for c in cands)  # trained on a GPU worker when the cluster has one
        with runtime.gpu_annotation(settings) if learned else contextlib.nullcontext():
            futures = candidate.map(unmapped(st), unmapped(aset), unmapped(srcs.adapters), unmapped(srcs.base),
                                    cands, mkeys, keys, [steps.cache_key(st, k) for k in keys])
        runtime.log_progress(futures, "candidates" if not learned else "learned candidates", get_run_logger())
        records = [f.result() for f in futures]
        return [r.model_copy(update={"cached": r.cached or f.state.name == "Cached"}) for r, f in zip(records, futures)]

    found = search.run_rounds(settings, settings.space, srcs.adapters, srcs.base, score_all)
    get_run_logger().info("chosen: %s (%s)", found.chosen.label, found.why)
    return found


@flow(name="calibrate-and-merge")
def calibrate_and_merge(settings: Settings, aset: pico.AdapterSet, groups: list[list[str]], recipe: pico.Recipe):
    """Calibrate each group of layers (mapped over the task runner's workers; on their GPUs when the runner has
    them), then merge each: the results ``pipeline.merging.merge_into_store`` writes."""
    threads = settings.pipeline.calibrate.threads
    with runtime.gpu_annotation(settings):
        cals = steps.calibrate.map(unmapped(aset), groups, unmapped(recipe), unmapped(settings.pipeline.device),
                                   unmapped(threads))
        merged = steps.merge_group.map(cals, unmapped(recipe), unmapped(threads))
    return [f.result() for f in merged]


def benchmark_and_judge(settings: Settings, srcs: Sources, merged: MergeResult) -> Evaluation:
    """The test split read once for the new merge; the baselines and the champion on the same benchmark (cached by
    content); the paired gate on their per-sample outcomes."""
    bench = evaluation.fingerprint(settings, "test")
    benchmark = steps.benchmark.with_options(timeout_seconds=settings.pipeline.schedule.benchmark_timeout_s)
    result = benchmark(settings, srcs.base, merged.store, "merged")
    baselines = []  # after the merge, never beside it (evaluation changes torch's thread count)
    if settings.pipeline.eval.baselines:  # cached by content: free after the first night
        baselines = [benchmark.submit(settings, srcs.base, None, "base")]
        baselines += [benchmark.submit(settings, srcs.base, b.path, b.name) for b in srcs.baselines]
    fingerprint = json_digest(bench)
    champion, champion_eval = steps.champion(settings, srcs.base, fingerprint)
    return Evaluation(benchmark=bench, fingerprint=fingerprint, merged=result,
                      baselines=[f.result() for f in baselines], champion=champion, champion_eval=champion_eval,
                      verdict=steps.judge(settings, result, champion, champion_eval))


def version_register_promote(settings: Settings, srcs: Sources, merged: MergeResult, found: SearchResult | None,
                             ev: Evaluation, timings: dict[str, float]) -> NightlyResult:
    """The merge and its scores as the DVC stages' outputs (dvc.lock, pushed); the MLflow run and model version with
    its lineage; the alias moved through the gate, last, under the registry lock."""
    dvc = steps.version_dvc(settings, merged.store, ev.merged.scores)
    registered = steps.register(settings, srcs, merged, found, ev, dvc, timings)
    decision = steps.promote(settings, registered.version, ev)
    return NightlyResult(
        project=str(settings.project), merge_key=merged.key, fingerprint=ev.fingerprint, store=merged.store,
        cached_merge=merged.cached, runner=merged.runner, eval=ev.merged, baselines=ev.baselines,
        champion_before=ev.champion, registered=registered, decision=decision, dvc=dvc,
        experiment_id=registered.experiment_id, timings=timings, tracking_uri=settings.tracking_uri,
        model=settings.model_name, recipe_label=found.chosen.label if found else settings.space.candidates[0].label,
        search=search.summary(found, settings.space) if found else None, gate=ev.verdict,
        mlflow_url=run_url(settings, registered.experiment_id, registered.run_id))


# ---------------------------------------------------------------------------------------------------------------
# The main command


def parse_set(items: list[str]) -> dict:
    """--set a.b.c=value (YAML value) -> nested overrides; `merge.` keys go to the recipe."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.nightly", description=__doc__.splitlines()[0])
    ap.add_argument("--project", default=".", help="project directory holding params.yaml (default: .)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a pipeline:/merge: key, e.g. --set merge.method=ties --set eval.limit=50")
    ap.add_argument("--suite", default=None, metavar="NAME",
                    help="run on a preset of params.yaml suites: (skills | smollm2); same as --set suite=NAME")
    ap.add_argument("--no-build", action="store_true", help="do not build missing suite outputs with dvc repro")
    ap.add_argument("--build-only", action="store_true", help="build the suite's missing outputs, then stop")
    ap.add_argument("--json", type=Path, help="also write the run summary as JSON here")
    args = ap.parse_args(argv)
    overrides = parse_set(args.set)
    if args.suite:
        overrides["suite"] = args.suite
    try:
        settings = load_settings(args.project, args.params, overrides)
        evaluation.check_benchmark(settings)  # before a suite build of minutes
        if not args.no_build:
            ensure_suite(settings)
        if args.build_only:
            print("suite built; nothing else run (--build-only)")
            return 0
        t0 = time.perf_counter()
        api = runtime.warm_up(settings)
        if api is not None:
            api.join()
        night = nightly_merge(project=str(settings.project), params=args.params, overrides=overrides)
        night.timings["wall_with_prefect_start"] = round(time.perf_counter() - t0, 2)
    except Exception as exc:  # one clear line; Prefect has logged the traceback of the failed task
        print(f"\nnightly-merge FAILED: {type(exc).__name__}: {exc}\nNo alias was moved.", file=sys.stderr)
        return 1
    print(render.report(night, settings, leaderboard(settings, limit=8, fingerprint=night.fingerprint)))
    if args.json:
        args.json.write_text(json.dumps(night.model_dump(), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
