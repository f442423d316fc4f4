"""Time one nightly run on the embedded default, step by step (fetch to promotion), and its fixed costs.

    python bench/nightly_timing.py                 # cold night (merge + eval caches cleared), then a warm rerun
    python bench/nightly_timing.py --keep-cache    # as the next night would run with nothing changed
    python bench/nightly_timing.py --json out.json

Needs the skills suite built (`dvc repro` or `python -m flows.nightly` builds it). Clearing the caches removes only
the content-addressed caches under build/pipeline (store, eval-samples, search-cache, prefect-results);
MLflow and DVC keep their history, so a cold run of an unchanged recipe registers into the version it already has.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cpu() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", default=str(ROOT))
    ap.add_argument("--keep-cache", action="store_true", help="do not clear the merge/eval caches first")
    ap.add_argument("--runs", type=int, default=2, help="runs in this process (the first cold unless --keep-cache)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a pipeline:/merge: key for these runs (as python -m flows.nightly --set)")
    ap.add_argument("--no-build", action="store_true", help="do not build missing suite outputs with dvc repro")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    from pipeline.environ import quiet_env

    quiet_env()
    from pipeline.settings import load_settings
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows.nightly import parse_set

    overrides = parse_set(args.set) or None
    settings = load_settings(args.project, overrides=overrides)
    from flows.nightly import nightly_merge
    from pipeline.build import ensure_suite
    from pipeline.runtime import warm_up

    import_s = time.perf_counter() - t0
    if not args.no_build:
        ensure_suite(settings)
    t = time.perf_counter()
    api = warm_up(settings)  # as the main command does: API start, lm-eval import, MLflow store side by side
    if api is not None:
        api.join()
    warm_s = time.perf_counter() - t
    if not args.keep_cache:
        for sub in ("store", "eval-samples", "search-cache", "prefect-results"):
            shutil.rmtree(settings.work / sub, ignore_errors=True)
    runs = []
    for i in range(args.runs):
        load = os.getloadavg()[0]
        cpu0 = _cpu()
        t = time.perf_counter()
        night = nightly_merge(project=str(settings.project), overrides=overrides)
        wall = time.perf_counter() - t
        search = night.search.model_dump(include={"chosen", "why", "candidates", "cached", "seconds"}) \
            if night.search else None
        runs.append({"run": i + 1, "cold": i == 0 and not args.keep_cache, "wall_s": round(wall, 2),
                     "cpu_s": round(_cpu() - cpu0, 2), "load_before": round(load, 2),
                     "load_after": round(os.getloadavg()[0], 2), "flow_steps_s": night.timings,
                     "prefect_overhead_s": round(wall - night.timings["total"], 2), "cached_merge": night.cached_merge,
                     "eval_cached": night.eval.cached, "decision": night.decision.alias,
                     "version": night.registered.version, "test_mean": night.eval.mean,
                     "test_mean_stderr": night.eval.mean_stderr, "search": search})
    out = {"machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()})",
           "python": sys.version.split()[0], "imports_s": round(import_s, 2),
           "prefect_api_start_s": round(warm_s, 2), "load_at_start": round(load0, 2), "runs": runs}
    print(f"machine: {out['machine']}; imports (prefect, torch, pico, flow): {out['imports_s']} s; Prefect API "
          f"start (lm-eval import and MLflow store opening beside it): {out['prefect_api_start_s']} s")
    for r in runs:
        kind = "cold (merge + eval computed)" if r["cold"] else "rerun (caches warm)"
        print(f"\nrun {r['run']}: {kind}: {r['wall_s']} s wall ({r['cpu_s']} s CPU in this process and its children; "
              f"load average {r['load_before']} -> {r['load_after']} on {os.cpu_count()} CPUs), of which Prefect "
              f"engine {r['prefect_overhead_s']} s -> v{r['version']} {r['decision']}")
        if r["search"]:
            s = r["search"]
            print(f"  search: {s['candidates']} candidates ({s['cached']} cached) in {s['seconds']} s; chosen "
                  f"{s['chosen']} ({s['why']})")
        se = r["test_mean_stderr"]
        print(f"  test mean {r['test_mean']:.4f}" + (f" ± {se:.4f}" if se is not None else ""))
        for step, s in r["flow_steps_s"].items():
            print(f"  {step:<20} {s:>7.2f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
