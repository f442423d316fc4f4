"""The recipe search under Prefect: each candidate a task mapped over the task runner, cached by its content key.

Two caches, one key. The candidate's record file (``<work>/search-cache/<key>``, written by
``tasks.candidates.run_candidate``) is the authoritative one: it holds across processes, Prefect servers and the
DVC stage. The same key is also the task's Prefect ``cache_key_fn`` (results persisted as JSON under
``<work>/prefect-results``), so an unchanged night shows every candidate as ``Cached`` in the Prefect UI, and
recomputes nothing either way.
"""

from __future__ import annotations

import contextlib
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


@flow(name="recipe-search", log_prints=True)
def search_flow(settings: Settings, space_candidates: list[dict], aset, fetched: list[dict], base: dict) -> dict:
    """Merge and score every candidate on the validation split; the validation argmax is the night's recipe."""
    from tasks import scoring

    log = get_run_logger()
    t0 = time.perf_counter()
    val_fp = scoring.validation_fingerprint(settings)
    keys = []
    for c in space_candidates:
        recipe = search.Candidate(c["recipe"], c["label"], c["index"]).recipe_obj()
        mkey = merging.merge_key(fetched, recipe, settings.pipeline["dtype"], merging.device_class(settings))
        keys.append(digest({"candidate": cand_mod.candidate_key(mkey, base["sha256"], val_fp),
                            "project": str(settings.work)}))
    t = candidate_task
    storage = _result_storage(settings)
    if storage is not None:
        t = candidate_task.with_options(result_storage=storage)
    import torch

    before = torch.get_num_threads()
    try:
        futures = t.map(unmapped(settings), unmapped(aset), unmapped(fetched), unmapped(base), space_candidates,
                        unmapped(val_fp), keys)
        records = [f.result() for f in futures]
    finally:
        torch.set_num_threads(before)  # (candidates pinned it for identical bytes; the rest of the run gets it back)
    states = [f.state.name for f in futures]
    scored = [(search.Candidate(r["recipe"], r["label"], r["index"]), r["validation"]["mean"]) for r in records]
    chosen, score, margin = search.best(scored)
    ranked = sorted(records, key=lambda r: (-r["validation"]["mean"], r["index"]))
    chosen_rec = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    why = (f"validation argmax: mean {score:.4f}" + (f", {margin:+.4f} over the runner-up {runner_up['label']} "
                                                      f"({runner_up['validation']['mean']:.4f})" if runner_up else "")
           + f" among {len(records)} candidates")
    log.info("chosen: %s (%s)", chosen.label, why)
    return {"records": records, "chosen": chosen_rec, "runner_up": runner_up, "margin": margin, "why": why,
            "validation_fingerprint": val_fp, "states": states,
            "cached": sum(1 for r, s in zip(records, states) if r.get("cached") or s == "Cached"),
            "seconds": round(time.perf_counter() - t0, 2)}


def run_search_plain(settings: Settings, space: search.Space, aset, fetched: list[dict], base: dict) -> dict:
    """The same search without Prefect, one candidate after the other (the DVC ``merge`` stage)."""
    from tasks import scoring

    val_fp = scoring.validation_fingerprint(settings)
    import dataclasses

    records = [cand_mod.run_candidate(settings, aset, fetched, base, dataclasses.asdict(c), val_fp)
               for c in space.candidates]
    ranked = sorted(records, key=lambda r: (-r["validation"]["mean"], r["index"]))
    return {"records": records, "chosen": ranked[0]}
