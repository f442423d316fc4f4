"""One search candidate: merge it (into the content-addressed store) and score it on the validation split.

A candidate's record is cached by its content key: the merge key (sources' bytes, recipe, pico's code, dtype,
device class), the base model's digest and the validation fingerprint (scorer, settings, validation data). An
unchanged night finds every record and recomputes nothing; a changed adapter, recipe list or validation set
recomputes exactly the candidates it touches. The merged adapter goes to the same store the nightly's merge step
uses (same groups, same thread count, same writer), so the chosen candidate's merge is not redone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

from . import merging, scoring
from .settings import Settings, digest
from .records import FetchedSource


def candidate_key(merge_key: str, base_sha: str, val_fingerprint: dict) -> str:
    return digest({"merge": merge_key, "base": base_sha, "validation": val_fingerprint})


def record_path(settings: Settings, key: str) -> Path:
    return settings.work / "search-cache" / f"{key[:32]}.json"


def merge_into_store(settings: Settings, aset, fetched: list[FetchedSource], recipe) -> tuple[str, str, bool]:
    """The candidate's merged adapter in the store (merged now unless a verified copy is there).
    Returns (merge key, store dir, merged now)."""
    p = settings.pipeline
    key = merging.merge_key(fetched, recipe, p.dtype, merging.device_class(settings))
    store = merging.store_dir(settings, key)
    if merging.verify_dir(store) is not None:
        return key, str(store), False
    threads = p.calibrate.threads
    groups = merging.plan_groups(aset, recipe, p.calibrate.layers_per_group)
    results = [merging.merge_group(merging.calibrate_group(aset, g, recipe, p.device, threads), recipe, threads)
               for g in groups]
    store, manifest, _ = merging.write_store(settings, key, aset, recipe, groups, results, p.dtype)
    merging.check_sources(manifest, fetched)
    return key, str(store), True


def run_candidate(settings: Settings, aset, fetched: list[FetchedSource], base: FetchedSource, candidate: dict,
                  val_fingerprint: dict) -> dict:
    """Merge + validation score of one candidate (``candidate``: Candidate fields as a dict), cached by content."""
    from pico import Recipe

    recipe = Recipe.from_dict(candidate["recipe"])
    mkey = merging.merge_key(fetched, recipe, settings.pipeline.dtype, merging.device_class(settings))
    key = candidate_key(mkey, base.sha256, val_fingerprint)
    path = record_path(settings, key)
    if path.is_file():
        rec = json.loads(path.read_text())
        return {**rec, "cached": True}
    t0 = time.perf_counter()
    mkey, store, merged = merge_into_store(settings, aset, fetched, recipe)
    t1 = time.perf_counter()
    val = scoring.score_validation(settings, base.path, store, settings.pipeline.calibrate.threads)
    rec = {"key": key, "merge_key": mkey, "store": store, "label": candidate["label"], "index": candidate["index"],
           "recipe": recipe.to_dict(), "validation": val, "merge_s": round(t1 - t0, 2),
           "score_s": round(time.perf_counter() - t1, 2)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(rec, indent=1, sort_keys=True))
    tmp.replace(path)
    return {**rec, "cached": False}


def leaderboard_rows(records: list[dict], chosen_key: str | None = None) -> list[dict]:
    """Candidates by validation mean (best first; ties: search order), as table rows with mean ± stderr."""
    rows = []
    finalist = lambda r: "finalist" in r.get("scored_on", "")  # noqa: E731
    for r in sorted(records, key=lambda r: (not finalist(r), -r["validation"]["mean"], r["index"])):
        v = r["validation"]
        se = v.get("mean_stderr")
        row = {"rank": len(rows) + 1, "candidate": r["label"],
               "val mean": f"{v['mean']:.4f}" + (f" ± {se:.4f}" if se is not None else "")}
        row.update({t: f"{s:.3f}" for t, s in v["scores"].items()})
        row["scored on"] = r.get("scored_on", "")
        row["chosen"] = "yes" if r["key"] == chosen_key else ""
        rows.append(row)
    return rows


def run_rounds(settings: Settings, cands: list[dict], score_all) -> dict:
    """Score every candidate (``score_all(settings, cands) -> (records, cached flags)``); with
    ``pipeline.search.limit`` and ``finalists: k``, the top k of that screening are scored again on the whole
    validation split and the choice is made among them. The validation argmax (ties: search order) is chosen."""
    t0 = time.perf_counter()
    cfg = settings.pipeline.search
    records, flags = score_all(settings, cands)
    cached = {r["index"] for r, f in zip(records, flags) if f}
    for r in records:
        r["scored_on"] = f"first {cfg.limit} validation items" if cfg.limit else "all validation items"
    pool = records
    if cfg.finalists and cfg.limit:
        top = sorted(records, key=lambda r: (-r["validation"]["mean"], r["index"]))[: int(cfg.finalists)]
        full = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(update={
            "search": cfg.model_copy(update={"limit": None})})})
        by_index = {c["index"]: c for c in cands}
        pool, fin_flags = score_all(full, [by_index[r["index"]] for r in top])
        for r in pool:
            r["scored_on"] = "all validation items (finalist)"
        finalists = {r["index"] for r in pool}
        records = pool + [r for r in records if r["index"] not in finalists]
        cached -= {r["index"] for r, f in zip(pool, fin_flags) if not f}  # cached: every round of it was
    ranked = sorted(pool, key=lambda r: (-r["validation"]["mean"], r["index"]))
    chosen, runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    margin = chosen["validation"]["mean"] - runner_up["validation"]["mean"] if runner_up else None
    why = (f"validation argmax: mean {chosen['validation']['mean']:.4f}"
           + (f", {margin:+.4f} over the runner-up {runner_up['label']} ({runner_up['validation']['mean']:.4f})"
              if runner_up else "")
           + f" among {len(pool)} " + ("finalists" if pool is not records else "candidates"))
    return {"records": records, "chosen": chosen, "runner_up": runner_up, "margin": margin, "why": why,
            "cached": len(cached), "seconds": round(time.perf_counter() - t0, 2)}


def run_search_plain(settings: Settings, space, aset, fetched: list[FetchedSource], base: FetchedSource) -> dict:
    """The same search without Prefect, one candidate after the other (the DVC ``merge`` stage)."""
    def score_all(st: Settings, cands: list[dict]):
        val_fp = scoring.validation_fingerprint(st)
        records = [run_candidate(st, aset, fetched, base, c, val_fp) for c in cands]
        return records, [bool(r.get("cached")) for r in records]

    return run_rounds(settings, [dataclasses.asdict(c) for c in space.candidates], score_all)
