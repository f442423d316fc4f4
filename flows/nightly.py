"""The nightly merge: fetch -> validate -> calibrate (mapped over layer groups) -> merge -> benchmark -> version (DVC)
-> register (MLflow) -> promote.

Run it (builds the skills suite with ``dvc repro`` first if it is missing, then prints the leaderboard, the promotion
decision and where to look)::

    python -m flows.nightly                   # embedded default: SQLite MLflow, Prefect ephemeral API, DVC local
    MLFLOW_TRACKING_URI=http://host:5000 python -m flows.nightly
    python -m flows.nightly --set merge.method=ties --set merge.params.density=0.5

Only composition lives here: the steps are ``pipeline.steps`` (Prefect tasks over plain modules), the records they pass
are ``pipeline.records``; the schedule lives in ``flows/deploy.py`` (``python -m flows.deploy``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pipeline.settings import quiet_env

quiet_env()

import torch  # noqa: E402
from prefect import flow, get_run_logger, unmapped  # noqa: E402

from prefect import runtime as prefect_runtime  # noqa: E402

from flows import artifacts  # noqa: E402
from flows.search import search_flow  # noqa: E402
from pipeline import evaluation, candidates, notify, promotion, runlog, runtime, search, steps, tracking  # noqa: E402
from pipeline.settings import ScheduleSettings, Settings, digest, load_settings  # noqa: E402
from pipeline.records import FetchedSource, MergeResult, NightlyResult  # noqa: E402


@flow(name="calibrate-and-merge", log_prints=True)
def calibrate_and_merge(settings: Settings, aset, groups: list[list[str]], key: str,
                        fetched: list[FetchedSource]) -> MergeResult:
    """Calibrate each group of layers (mapped over the task runner's workers), merge each, write one adapter."""
    recipe, threads = settings.recipe, settings.pipeline.calibrate.threads
    before = torch.get_num_threads()
    try:
        with runtime.gpu_annotation(settings):  # calibration runs on GPU workers when the runner has them
            cals = steps.calibrate.map(unmapped(aset), groups, unmapped(recipe), unmapped(settings.pipeline.device),
                                       unmapped(threads))
            merged = steps.merge_group.map(cals, unmapped(recipe), unmapped(threads))
        results = [f.result() for f in merged]
    finally:
        torch.set_num_threads(before)  # (the pool's threads pinned it; the rest of the run gets it back)
    return steps.write(settings, key, aset, groups, results, fetched)


# the default timeout of a night; the deployment (flows/deploy.py) applies pipeline.schedule.flow_timeout_s
@flow(name="nightly-merge", log_prints=True, timeout_seconds=ScheduleSettings().flow_timeout_s,
      on_failure=[notify.on_failure_hook], on_crashed=[notify.on_failure_hook])
def nightly_merge(project: str = ".", params: str = "params.yaml", overrides: dict | None = None) -> dict:
    """Choose the recipe on validation (when params.yaml's merge: is a search space), merge the catalog's adapters,
    benchmark on the test split, version, register and promote through the statistical gate."""
    settings = load_settings(project, params, overrides)
    clock = runlog.Clock()
    evaluation.prewarm(settings)
    preflight = steps.mlflow_preflight.submit(settings)  # beside fetch: an unreachable MLflow fails in seconds

    fetch = steps.fetch_adapter.with_options(retries=settings.pipeline.fetch.retries,
                                             retry_delay_seconds=settings.pipeline.fetch.retry_delay_s)
    adapter_fs = [fetch.submit(settings, e) for e in settings.catalog.adapters]
    base_f = steps.fetch_base.submit(settings)
    baseline_fs = [fetch.submit(settings, e) for e in settings.catalog.baselines]
    fetched = [f.result() for f in adapter_fs]
    clock.mark("fetch")
    base = evaluation.resolve_base(settings, base_f.result(), fetched[0].path)

    found = None
    if settings.search:  # merge: is a search space: the validation argmax becomes the night's recipe
        import dataclasses

        from pipeline import merging

        space = search.expand(settings.merge)
        get_run_logger().info("recipe search: %s", space.describe())
        found = search_flow.with_options(task_runner=runtime.make_task_runner(settings))(
            settings, [dataclasses.asdict(c) for c in space.candidates], merging.load_set(fetched), fetched, base)
        settings = settings.with_recipe(found["chosen"]["recipe"])
        clock.mark("search")

    aset, groups, key, merged = steps.validate(settings, fetched)
    clock.mark("validate")
    bench = evaluation.benchmark_fingerprint(settings)
    fingerprint = digest(bench)

    runner = None
    if merged is None:
        runner = runtime.make_task_runner(settings)
        merged = calibrate_and_merge.with_options(task_runner=runner)(settings, aset, groups, key, fetched)
    clock.mark("calibrate_merge")

    run_benchmark = steps.run_test_benchmark.with_options(
        timeout_seconds=settings.pipeline.schedule.benchmark_timeout_s)
    result = run_benchmark(settings, base, merged.store, "merged")  # the one test read of a new merge
    clock.mark("benchmark")
    baseline_runs = []  # after the merge, never beside it (evaluation changes torch's thread count)
    if settings.pipeline.eval.baselines:  # cached by content: free after the first night
        baseline_runs.append(run_benchmark.submit(settings, base, None, "base"))
        baseline_runs += [run_benchmark.submit(settings, base, b.result().path, b.result().name)
                          for b in baseline_fs]
    experiment = preflight.result()  # raises RegistryUnavailable: nothing below runs, no alias moves
    champion = steps.champion(settings, base, fingerprint)
    champ_eval = steps.champion_outcomes(settings, base, champion) if champion is not None else None
    baselines = [f.result() for f in baseline_runs]
    clock.mark("baselines_champion")
    verdict = steps.statistical_gate(settings, result, champion, champ_eval)

    dvc = steps.version_dvc(settings, merged.store, result.scores)
    clock.mark("version")

    lineage = runlog.build_lineage(settings, fetched, base, merged, bench, fingerprint, result, dvc)
    registered = steps.register(settings, lineage, merged.store, base, runlog.run_params(settings, merged),
                                runlog.run_metrics(result, baselines, champion, clock.durations())
                                | runlog.search_metrics(result, found, verdict), result.stderr,
                                runlog.run_artifacts(settings, merged, result, baselines, champion, lineage))
    steps.record_search_and_gate(settings, registered, found, result, champion, champ_eval, verdict)
    clock.mark("register")

    decision = steps.promote(settings, registered.version, result.scores, fingerprint, champion, verdict)
    clock.mark("promote")

    summary = NightlyResult(
        project=str(settings.project), merge_key=key, fingerprint=fingerprint, store=merged.store,
        cached_merge=merged.cached, runner=runner and type(runner).__name__, eval=result, baselines=baselines,
        champion_before=champion, registered=registered, decision=decision, dvc=dvc, experiment_id=experiment,
        timings=clock.durations(), tracking_uri=settings.tracking_uri, model=settings.model_name,
        recipe_label=search.label(settings.recipe), gate=verdict.to_dict() if verdict is not None else None,
        mlflow_url=tracking.run_url(settings, registered.experiment_id, registered.run_id),
        flow_run_id=str(prefect_runtime.flow_run.id), search=None if found is None else {
            "chosen": found["chosen"]["label"], "why": found["why"], "margin": found["margin"],
            "runner_up": found["runner_up"]["label"] if found["runner_up"] else None,
            "candidates": len(found["records"]), "cached": found["cached"], "seconds": found["seconds"],
            "skipped": search.expand(settings.merge).skipped,
            "leaderboard": candidates.leaderboard_rows(found["records"], found["chosen"]["key"])}).model_dump()
    board = promotion.leaderboard(settings, limit=8, fingerprint=fingerprint)
    summary["artifacts"] = artifacts.publish(summary, board, summary["search"] and summary["search"]["leaderboard"])
    if decision.promoted and not decision.unchanged:
        notify.send(settings.pipeline.notify, "promotion", *notify.promotion_message(summary))
    return summary


# ---------------------------------------------------------------------------------------------------------------
# The main command


def parse_set(items: list[str]) -> dict:
    """--set a.b.c=value (YAML value) -> nested overrides; `merge.` keys go to the recipe."""
    import yaml

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
    from pipeline.report import report
    from pipeline.build import ensure_suite

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
        if not args.no_build:
            ensure_suite(settings)
        if args.build_only:
            print("suite built; nothing else run (--build-only)")
            return 0
        t0 = time.perf_counter()
        api = runtime.warm_up(settings)
        if api is not None:
            api.join()
        summary = nightly_merge(project=str(settings.project), params=args.params, overrides=overrides)
        summary["timings"]["wall_with_prefect_start"] = round(time.perf_counter() - t0, 2)
    except Exception as exc:  # one clear line; Prefect has logged the traceback of the failed task
        print(f"\nnightly-merge FAILED: {type(exc).__name__}: {exc}\nNo alias was moved.", file=sys.stderr)
        return 1
    print(report(summary, settings))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
