"""The recipe search under Prefect: each candidate a task mapped over the task runner, cached by its content key.

Two caches, one key. The candidate's record file (``<work>/search-cache/<key>``, written by
``pipeline.candidates.run_candidate``) is the authoritative one: it holds across processes, Prefect servers and the
DVC stage. The same key is also the task's Prefect ``cache_key_fn`` (results persisted as JSON under
``<work>/prefect-results``), so an unchanged night shows every candidate as ``Cached`` in the Prefect UI, and
recomputes nothing either way.
"""

from __future__ import annotations

import contextlib

from prefect import flow, get_run_logger, task, unmapped

from pipeline import candidates as cand_mod
from pipeline import merging, search
from pipeline.settings import Settings, digest
from pipeline.records import FetchedSource


def _cache_key(ctx, params) -> str:
    return f"pico-candidate-{params['cache_key']}"


@task(name="candidate", cache_key_fn=_cache_key, persist_result=True, result_serializer="json",
      task_run_name="candidate-{candidate[index]}")
def candidate_task(settings: Settings, aset, fetched: list[FetchedSource], base: FetchedSource, candidate: dict,
                   val_fingerprint: dict, cache_key: str) -> dict:
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


def _keys(settings: Settings, cands: list[dict], fetched: list[FetchedSource], base: FetchedSource,
          val_fp: dict) -> list[str]:
    keys = []
    for c in cands:
        recipe = search.Candidate(c["recipe"], c["label"], c["index"]).recipe_obj()
        mkey = merging.merge_key(fetched, recipe, settings.pipeline.dtype, merging.device_class(settings))
        keys.append(digest({"candidate": cand_mod.candidate_key(mkey, base.sha256, val_fp),
                            "project": str(settings.work)}))
    return keys


@flow(name="recipe-search", log_prints=True)
def search_flow(settings: Settings, space_candidates: list[dict], aset, fetched: list[FetchedSource],
                base: FetchedSource) -> dict:
    """Merge and score every candidate on the validation split; the validation argmax is the night's recipe."""
    import torch

    from pipeline import scoring

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
        found = cand_mod.run_rounds(settings, space_candidates, score_all)
    finally:
        torch.set_num_threads(before)  # (candidates pinned it for identical bytes; the rest of the run gets it back)
    log.info("chosen: %s (%s)", found["chosen"]["label"], found["why"])
    return found
