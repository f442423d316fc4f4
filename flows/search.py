"""The recipe search under Prefect: each candidate a task mapped over the task runner, cached by its content key.

Two caches, one key. The candidate's record file (``<work>/search-cache/<key>``, written by
``tasks.candidates.run_candidate``) is the authoritative one: it holds across processes, Prefect servers and the
DVC stage. The same key is also the task's Prefect ``cache_key_fn`` (results persisted as JSON under
``<work>/prefect-results``), so an unchanged night shows every candidate as ``Cached`` in the Prefect UI, and
recomputes nothing either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

from prefect import flow, get_run_logger, task, unmapped

from tasks import candidates as cand_mod
from tasks import merging, search
from tasks.config import Settings, digest


def _cache_key(ctx, params) -> str:
    return f"pico-candidate-{params['cache_key']}"


@task(name="candidate", cache_key_fn=_cache_key, persist_result=True, result_serializer="json",
      task_run_name="candidate-{candidate[index]}")
def candidate_task(settings: Settings, aset, fetched: list[dict], base: dict, candidate: dict, val_fingerprint: dict,
                   cache_key: str) -> dict:
    rec = cand_mod.run_candidate(settings, aset, fetched, base, candidate, val_fingerprint)
    get_run_logger().info("%-40s validation mean %.4f%s", candidate["label"], rec["validation"]["mean"],
                          " (cached)" if rec["cached"] else f" (merge {rec['merge_s']} s, score {rec['score_s']} s)")
    return rec


def _result_storage(settings: Settings):
    """A local result store under the project's work dir, saved as a block named after it (Prefect 3 wants result
    storage persisted server-side)."""
    from prefect.filesystems import LocalFileSystem

    path = settings.work / "prefect-results"
    path.mkdir(parents=True, exist_ok=True)
    block = LocalFileSystem(basepath=str(path))
    with contextlib.suppress(Exception):
        block.save(f"pico-results-{digest(str(path))[:12]}", overwrite=True)
        return block
    return None


def _keys(settings: Settings, cands: list[dict], fetched: list[dict], base: dict, val_fp: dict) -> list[str]:
    keys = []
    for c in cands:
        recipe = search.Candidate(c["recipe"], c["label"], c["index"]).recipe_obj()
        mkey = merging.merge_key(fetched, recipe, settings.pipeline["dtype"], merging.device_class(settings))
        keys.append(digest({"candidate": cand_mod.candidate_key(mkey, base["sha256"], val_fp),
                            "project": str(settings.work)}))
    return keys


def run_rounds(settings: Settings, cands: list[dict], score_all) -> dict:
    """Score every candidate (``score_all(settings, cands) -> (records, cached flags)``); with
    ``pipeline.search.limit`` and ``finalists: k``, the top k of that screening are scored again on the whole
    validation split and the choice is made among them. The validation argmax (ties: search order) is chosen."""
    from tasks import scoring

    t0 = time.perf_counter()
    cfg = scoring.search_config(settings)
    records, flags = score_all(settings, cands)
    cached = {r["index"] for r, f in zip(records, flags) if f}
    for r in records:
        r["scored_on"] = f"first {cfg['limit']} validation items" if cfg["limit"] else "all validation items"
    pool = records
    if cfg["finalists"] and cfg["limit"]:
        top = sorted(records, key=lambda r: (-r["validation"]["mean"], r["index"]))[: int(cfg["finalists"])]
        full = dataclasses.replace(settings, pipeline={**settings.pipeline, "search": {**cfg, "limit": None}})
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


@flow(name="recipe-search", log_prints=True)
def search_flow(settings: Settings, space_candidates: list[dict], aset, fetched: list[dict], base: dict) -> dict:
    """Merge and score every candidate on the validation split; the validation argmax is the night's recipe."""
    import torch

    from tasks import scoring

    log = get_run_logger()
    t = candidate_task
    storage = _result_storage(settings)
    if storage is not None:
        t = candidate_task.with_options(result_storage=storage)

    def score_all(st: Settings, cands: list[dict]):
        val_fp = scoring.validation_fingerprint(st)
        futures = t.map(unmapped(st), unmapped(aset), unmapped(fetched), unmapped(base), cands, unmapped(val_fp),
                        _keys(st, cands, fetched, base, val_fp))
        records = [f.result() for f in futures]
        return records, [bool(r.get("cached")) or f.state.name == "Cached" for r, f in zip(records, futures)]

    before = torch.get_num_threads()
    try:
        found = run_rounds(settings, space_candidates, score_all)
    finally:
        torch.set_num_threads(before)  # (candidates pinned it for identical bytes; the rest of the run gets it back)
    log.info("chosen: %s (%s)", found["chosen"]["label"], found["why"])
    return found


def run_search_plain(settings: Settings, space: search.Space, aset, fetched: list[dict], base: dict) -> dict:
    """The same search without Prefect, one candidate after the other (the DVC ``merge`` stage)."""
    from tasks import scoring

    def score_all(st: Settings, cands: list[dict]):
        val_fp = scoring.validation_fingerprint(st)
        records = [cand_mod.run_candidate(st, aset, fetched, base, c, val_fp) for c in cands]
        return records, [bool(r.get("cached")) for r in records]

    return run_rounds(settings, [dataclasses.asdict(c) for c in space.candidates], score_all)
