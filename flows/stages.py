"""The DVC stages of the pipeline (``merge`` and ``eval`` in dvc.yaml): the same steps as the flow, without Prefect.

    python -m flows.stages merge    # fetch + validate + calibrate + merge -> pipeline.paths.merged
    python -m flows.stages eval     # benchmark pipeline.paths.merged -> pipeline.paths.eval/metrics.json

`dvc repro` runs them from params.yaml (``merge:``, ``pipeline:``) and the catalog; the bytes are those the flow
writes (same fetch, same grouping, same writer), so a flow run followed by `dvc repro` has nothing to do, and
`dvc repro` alone reproduces a merge.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import evaluation, merging, search, sources, versioning
from pipeline.records import Candidate, CandidateRecord, EvalResult, MergeResult
from pipeline.settings import Settings, load_settings


def stage_merge(settings: Settings) -> MergeResult:
    fetched = [sources.fetch_entry(settings, e) for e in settings.catalog.adapters]
    aset = merging.load_set(fetched)
    chosen: Candidate | CandidateRecord = settings.space.candidates[0]
    base = None
    if settings.search:  # the same search as the flow (every candidate's record cached by content: free after it)
        base = sources.resolve_base(settings, sources.fetch_base(settings), fetched[0].path)
        chosen = search.run_search_plain(settings, aset, fetched, base).chosen
        print(f"recipe search: chosen on validation: {chosen.label}")
    merged = merging.merge_chosen(settings, aset, fetched, base, chosen)
    out = settings.path("merged")
    merging.materialize(Path(merged.store), out)
    print(f"merged {len(aset)} adapters -> {out} ({merged.manifest['output']['modules']} modules)")
    return merged


def stage_eval(settings: Settings) -> EvalResult:
    merged = settings.path("merged")
    base = sources.resolve_base(settings, sources.fetch_base(settings), merged)
    rec = evaluation.evaluate(settings, base, merged, "merged")
    versioning.write_metrics(settings.path("eval") / "metrics.json", rec.scores)
    print(f"eval: mean {rec.mean:.4f} {rec.scores}")
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.stages")
    ap.add_argument("stage", choices=["merge", "eval"])
    ap.add_argument("--project", default=".")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--suite", default=None, help="a preset of params.yaml suites: (dvc.yaml's merge@<suite>)")
    args = ap.parse_args(argv)
    settings = load_settings(args.project, args.params, {"suite": args.suite} if args.suite else None)
    if args.stage == "merge" and settings.search:
        evaluation.check_benchmark(settings)  # never choose on test tasks (groups expanded)
    {"merge": stage_merge, "eval": stage_eval}[args.stage](settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
