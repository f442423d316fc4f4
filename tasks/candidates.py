"""One search candidate: merge it (into the content-addressed store) and score it on the validation split.

A candidate's record is cached by its content key: the merge key (sources' bytes, recipe, pico's code, dtype,
device class), the base model's digest and the validation fingerprint (scorer, settings, validation data). An
unchanged night finds every record and recomputes nothing; a changed adapter, recipe list or validation set
recomputes exactly the candidates it touches. The merged adapter goes to the same store the nightly's merge step
uses (same groups, same thread count, same writer), so the chosen candidate's merge is not redone.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from . import merging, scoring
from .config import Settings, digest


def candidate_key(merge_key: str, base_sha: str, val_fingerprint: dict) -> str:
    return digest({"merge": merge_key, "base": base_sha, "validation": val_fingerprint})


def record_path(settings: Settings, key: str) -> Path:
    return settings.work / "search-cache" / f"{key[:32]}.json"


def merge_into_store(settings: Settings, aset, fetched: list[dict], recipe) -> tuple[str, str, bool]:
    """The candidate's merged adapter in the store (merged now unless a verified copy is there).
    Returns (merge key, store dir, merged now)."""
    key = merging.merge_key(fetched, recipe, settings.pipeline["dtype"], merging.device_class(settings))
    store = merging.store_dir(settings, key)
    if merging.verify_dir(store) is not None:
        return key, str(store), False
    threads = settings.pipeline["calibrate"]["threads"]
    groups = merging.plan_groups(aset, recipe, settings.pipeline["calibrate"]["layers_per_group"])
    results = [merging.merge_group(merging.calibrate_group(aset, g, recipe, settings.pipeline["device"], threads),
                                   recipe, threads) for g in groups]
    store, manifest, _ = merging.write_store(settings, key, aset, recipe, groups, results, settings.pipeline["dtype"])
    merging.check_sources(manifest, fetched)
    return key, str(store), True


def run_candidate(settings: Settings, aset, fetched: list[dict], base: dict, candidate: dict,
                  val_fingerprint: dict) -> dict:
    """Merge + validation score of one candidate (``candidate``: Candidate fields as a dict), cached by content."""
    from pico import Recipe

    recipe = Recipe.from_dict(candidate["recipe"])
    mkey = merging.merge_key(fetched, recipe, settings.pipeline["dtype"], merging.device_class(settings))
    key = candidate_key(mkey, base["sha256"], val_fingerprint)
    path = record_path(settings, key)
    if path.is_file():
        rec = json.loads(path.read_text())
        return {**rec, "cached": True}
    t0 = time.perf_counter()
    mkey, store, merged = merge_into_store(settings, aset, fetched, recipe)
    t1 = time.perf_counter()
    val = scoring.score_validation(settings, base["path"], store, settings.pipeline["calibrate"]["threads"])
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
