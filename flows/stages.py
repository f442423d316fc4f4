"""The DVC stages of the pipeline (``merge`` and ``eval`` in dvc.yaml): the same steps as the flow, without Prefect.

    python -m flows.stages merge    # fetch + validate + calibrate + merge -> pipeline.paths.merged
    python -m flows.stages eval     # benchmark pipeline.paths.merged -> pipeline.paths.eval/metrics.json

`dvc repro` runs them from params.yaml (``merge:``, ``pipeline:``) and the catalog; the bytes are those the flow
writes (same fetch, same grouping, same writer), so a flow run followed by `dvc repro` has nothing to do, and
`dvc repro` alone reproduces a merge.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from pipeline.settings import load_settings, quiet_env


def stage_merge(settings) -> dict:
    from pipeline import evaluation, sources, merging

    fetched = [sources.fetch_entry(settings, e) for e in settings.catalog.adapters]
    aset = merging.load_set(fetched)
    if settings.search:  # the same search as the flow (every candidate's record cached by content: free after it)
        from pipeline import search
        from pipeline.candidates import run_search_plain

        base = evaluation.resolve_base(settings, sources.fetch_base(settings), fetched[0].path)
        chosen = run_search_plain(settings, search.expand(settings.merge), aset, fetched, base)["chosen"]
        print(f"recipe search: chosen on validation: {chosen['label']}")
        settings = settings.with_recipe(chosen["recipe"])
    recipe = settings.recipe
    groups = merging.plan_groups(aset, recipe, settings.pipeline.calibrate.layers_per_group)
    device, threads = settings.pipeline.device, settings.pipeline.calibrate.threads
    results = (merging.merge_group(merging.calibrate_group(aset, g, recipe, device, threads), recipe, threads)
               for g in groups)
    out = settings.path("merged")
    import torch

    from pico.merge import write_merged

    shutil.rmtree(out, ignore_errors=True)
    manifest = write_merged(aset, recipe, groups, results, out, overwrite=True, progress=False,
                            dtype=getattr(torch, settings.pipeline.dtype))
    merging.check_sources(manifest, fetched)
    print(f"merged {len(aset)} adapters -> {out} ({manifest['output']['modules']} modules)")
    return manifest


def stage_eval(settings) -> dict:
    from pipeline import evaluation, sources, versioning

    merged = settings.path("merged")
    base = evaluation.resolve_base(settings, sources.fetch_base(settings), merged)
    rec = evaluation.evaluate_cached(settings, base, merged, "merged")
    versioning.write_metrics(settings.path("eval") / "metrics.json", rec.scores)
    print(f"eval: mean {rec.mean:.4f} {rec.scores}")
    return rec


def main(argv: list[str] | None = None) -> int:
    quiet_env()
    ap = argparse.ArgumentParser(prog="python -m flows.stages")
    ap.add_argument("stage", choices=["merge", "eval"])
    ap.add_argument("--project", default=".")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    settings = load_settings(args.project, args.params)
    {"merge": stage_merge, "eval": stage_eval}[args.stage](settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
