"""The recipe search: every candidate of the space merged (into the content-addressed store) and scored on the
validation split; the validation argmax is the night's recipe.

A candidate's record is cached by its content key: the merge key (sources' bytes, recipe, pico's code, dtype,
device class), the base model's digest and the validation fingerprint (scorer, settings, validation data). An
unchanged night finds every record and recomputes nothing; a changed adapter, recipe list or validation set
recomputes exactly the candidates it touches. The merged adapter goes to the same store the night's merge uses
(:func:`pipeline.merging.merge_into_store`), so the chosen candidate is not merged again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Protocol, TypeVar

import pico
from pico.recipe import format_recipe
from pico.writer import json_digest

from . import evaluation, merging
from .errors import SearchError
from .files import write_json
from .records import Candidate, CandidateRecord, FetchedSource, SearchResult, SearchSpace, SearchSummary
from .render import candidate_rows
from .settings import Settings


class Indexed(Protocol):
    index: int  # the position in the search space: ties go to the earlier one


T = TypeVar("T", bound=Indexed)


def rank(scored: list[tuple[T, float]]) -> list[tuple[T, float]]:
    """Best first by validation score; ties go to the earlier candidate (``.index``, the space's order)."""
    return sorted(scored, key=lambda cs: (-cs[1], cs[0].index))


def best(scored: list[tuple[T, float]]) -> tuple[T, float, float | None]:
    """The validation argmax (ties: the earlier candidate), its score, and the margin over the runner-up."""
    if not scored:
        raise SearchError("no scored candidates")
    ranked = rank(scored)
    margin = ranked[0][1] - ranked[1][1] if len(ranked) > 1 else None
    return ranked[0][0], ranked[0][1], margin


def candidate_key(merge_key: str, base_sha: str, val_fingerprint: dict) -> str:
    return json_digest({"merge": merge_key, "base": base_sha, "validation": val_fingerprint})


def record_path(settings: Settings, key: str) -> Path:
    return settings.work / "search-cache" / f"{key[:32]}.json"


def run_candidate(settings: Settings, aset: pico.AdapterSet, fetched: list[FetchedSource], base: FetchedSource,
                  candidate: Candidate, merge_key: str, key: str, report=None) -> CandidateRecord:
    """Merge + validation score of one candidate (``key``: its :func:`candidate_key`), cached by content;
    ``report``: the learned merge's progress lines (:func:`merging.learn_into_store`)."""
    path = record_path(settings, key)
    if path.is_file():
        return CandidateRecord(**json.loads(path.read_text()), cached=True)
    t0 = time.perf_counter()
    training = None
    if candidate.kind == "learned":
        merged, training = merging.learn_into_store(settings, aset, fetched, base, candidate.tara_config(), merge_key,
                                                    candidate.label, report)
    else:
        merged = merging.merge_into_store(settings, aset, fetched, candidate.recipe_obj(), key=merge_key)
    t1 = time.perf_counter()
    val = evaluation.validate(settings, base.path, merged.store, settings.pipeline.calibrate.threads)
    rec = CandidateRecord(key=key, merge_key=merge_key, store=merged.store, label=candidate.label,
                          index=candidate.index, recipe=candidate.recipe, validation=val, merge_s=round(t1 - t0, 2),
                          score_s=round(time.perf_counter() - t1, 2), kind=candidate.kind, training=training)
    write_json(path, rec.to_file())
    return rec


Job = tuple[Candidate, str, str]  # a candidate, its merge key, its record's key
ScoreAll = Callable[[Settings, list[Job]], list[CandidateRecord]]


def run_rounds(settings: Settings, space: SearchSpace, fetched: list[FetchedSource], base: FetchedSource,
               score_all: ScoreAll) -> SearchResult:
    """Score every candidate (``score_all(settings, jobs)``: each record with ``cached`` set); with
    ``pipeline.search.limit`` and ``finalists: k``, the top k of that screening are scored again on the whole
    validation split and the choice is made among them. The validation argmax (:func:`best`) is chosen."""
    t0 = time.perf_counter()
    cfg, p = settings.pipeline.search, settings.pipeline
    device = merging.device_class(settings)
    free = [c for c in space.candidates if c.kind == "merge"]
    merge_keys = {c.index: merging.merge_key(fetched, c.recipe_obj(), p.dtype, device) for c in free}

    def jobs(st: Settings, cands: list[Candidate]) -> list[Job]:
        fp = evaluation.fingerprint(st, "validation")
        return [(c, merge_keys[c.index], candidate_key(merge_keys[c.index], base.sha256, fp)) for c in cands]

    full = settings.model_copy(update={"pipeline": p.model_copy(update={
        "search": cfg.model_copy(update={"limit": None})})})
    scored_on = f"first {cfg.limit} validation items" if cfg.limit else "all validation items"
    records = [r.model_copy(update={"scored_on": scored_on}) for r in score_all(settings, jobs(settings, free))] \
        if free else []
    cached = {r.index for r in records if r.cached}
    pool = records
    if cfg.finalists and cfg.limit and free:
        top = rank([(r, r.validation.mean) for r in records])[: int(cfg.finalists)]
        by_index = {c.index: c for c in free}
        pool = [r.model_copy(update={"scored_on": "all validation items (finalist)"})
                for r in score_all(full, jobs(full, [by_index[r.index] for r, _ in top]))]
        finalists = {r.index for r in pool}
        records = pool + [r for r in records if r.index not in finalists]
        cached -= {r.index for r in pool if not r.cached}  # cached: every round of it was
    screened = pool is not records  # the choice is among finalists
    learned = [c for c in space.candidates if c.kind == "learned"]
    if learned:  # trained from the best data-free merge (unless init says), scored like the finalists
        start = best([(r, r.validation.mean) for r in pool])[0] if pool else None
        init = format_recipe(pico.Recipe.from_dict(start.recipe)) if start else None
        learned = [resolve_learned(c, init) for c in learned]
        st = full if cfg.limit else settings
        for c in learned:
            merge_keys[c.index] = merging.learned_key(settings, fetched, base, c.tara_config())
        on = "all validation items" + (" (learned)" if cfg.limit else "")
        done = [r.model_copy(update={"scored_on": on}) for r in score_all(st, jobs(st, learned))]
        cached |= {r.index for r in done if r.cached}
        pool = pool + done
        records = records + done
    chosen, _, margin = best([(r, r.validation.mean) for r in pool])
    runner_up = rank([(r, r.validation.mean) for r in pool])[1][0] if len(pool) > 1 else None
    why = (f"validation argmax: mean {chosen.validation.mean:.4f}"
           + (f", {margin:+.4f} over the runner-up {runner_up.label} ({runner_up.validation.mean:.4f})"
              if runner_up else "")
           + f" among {len(pool)} " + (f"candidates ({len(pool) - len(learned)} finalists, {len(learned)} learned)"
                                       if screened and learned else "finalists" if screened else "candidates"))
    return SearchResult(records=records, chosen=chosen, runner_up=runner_up, margin=margin, why=why,
                        cached=len(cached), seconds=round(time.perf_counter() - t0, 2))


def resolve_learned(candidate: Candidate, init: str | None) -> Candidate:
    """A learned candidate with the data-free merge it starts from written in (when its grid names none): ``init``,
    the night's best data-free candidate (None: TARA's default init)."""
    if candidate.recipe.get("init") is not None or init is None:
        return candidate
    return candidate.model_copy(update={"recipe": {**candidate.recipe, "init": init},
                                        "label": candidate.label.replace("(from the best data-free merge)",
                                                                         f"init={init}")})


def run_search_plain(settings: Settings, aset: pico.AdapterSet, fetched: list[FetchedSource],
                     base: FetchedSource) -> SearchResult:
    """The same search without Prefect, one candidate after the other (the DVC ``merge`` stage)."""
    def score_all(st: Settings, jobs: list[Job]) -> list[CandidateRecord]:
        return [run_candidate(st, aset, fetched, base, *job) for job in jobs]

    return run_rounds(settings, settings.space, fetched, base, score_all)


def summary(found: SearchResult, space: SearchSpace) -> SearchSummary:
    """The search as the night's summary shows it."""
    return SearchSummary(chosen=found.chosen.label, why=found.why, margin=found.margin,
                         runner_up=found.runner_up.label if found.runner_up else None, candidates=len(found.records),
                         cached=found.cached, seconds=found.seconds, skipped=space.skipped,
                         leaderboard=candidate_rows(found.records, found.chosen.key))
