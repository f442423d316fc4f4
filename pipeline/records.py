"""The records passed between the nightly steps, typed and validated where they are made.

Each record is a pydantic model with ``extra="forbid"``; ``model_dump()`` gives the JSON the run stores (lineage.json,
eval.json, the ``--json`` summary), key for key what the untyped pipeline wrote before.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import pico
from pico.tara import TaraConfig


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


Outcomes = dict[str, dict[str, float]]  # {task: {item: value}}: per-sample outcomes (0/1 or a score), for the gate


class PromptsFile(Record):
    """An adapter's unlabeled prompts (catalog ``prompts:``) resolved to a local JSONL file and hashed: they decide a
    learned merge's bytes, so their digest is in its key and in the lineage."""

    uri: str
    path: str
    sha256: str
    n: int  # prompts (non-empty rows)
    revision: str | None = None


class FetchedSource(Record):
    """One catalog entry resolved to a local directory and hashed (pico's per-adapter sha256)."""

    name: str
    uri: str
    path: str
    revision: str | None = None
    sha256: str
    pinned: bool = False
    files: dict[str, str] = {}
    dvc: dict | None = None  # what DVC recorded for it (pipeline.dvcio.recorded_files), None when not DVC-tracked
    prompts: PromptsFile | None = None  # the catalog's prompts: for learned merges


class EvalResult(Record):
    """Scores of one model on the benchmark (from the content-addressed eval cache when ``cached``)."""

    key: str
    scores: dict[str, float]
    mean: float
    seconds: float
    label: str
    cached: bool = False
    stderr: dict[str, float] = {}  # per task: sample std / sqrt(n) (with per-sample outcomes)
    mean_stderr: float | None = None  # of the mean over tasks
    n: dict[str, int] = {}  # items per task
    # per-sample 0/1 outcomes {task: {item: 0/1}} for the paired gate; kept out of dumps (summaries, eval.json):
    # they go to MLflow as a table
    outcomes: dict[str, dict[str, float]] | None = Field(None, exclude=True)


class Scores(Record):
    """One model's scores on one split: per task, their mean, and (with per-sample outcomes) stderr and item counts."""

    scores: dict[str, float]
    stderr: dict[str, float] = {}  # per task: sample std / sqrt(n)
    mean: float
    mean_stderr: float | None = None  # of the mean over tasks
    n: dict[str, int] = {}  # items per task


class Validation(Scores):
    """A candidate's validation scores with the outcomes they came from (kept in its cached record)."""

    outcomes: Outcomes | None = None


class ChampionRecord(Record):
    version: str
    scores: dict[str, float]
    mean: float
    fingerprint: str
    source: str | None = None
    run_id: str | None = None
    merge_key: str | None = None


class Decision(Record):
    promoted: bool
    alias: str
    version: str
    unchanged: bool
    reasons: list[str]
    previous_champion: str | None = None


class Registration(Record):
    run_id: str
    experiment_id: str
    model: str
    version: str
    reused: bool
    artifact_uri: str


class DvcRecord(Record):
    enabled: bool
    reason: str | None = None
    path: str | None = None
    md5: str | None = None
    pushed: bool = False
    lock: dict[str, dict[str, str | None]] = {}
    exp: dict[str, str] | None = None  # the night's DVC experiment (dvc exp save): name and commit sha


class LineageSource(Record):
    name: str
    uri: str
    path: str
    revision: str | None
    sha256: str
    files: dict[str, str]
    dvc: dict | None
    prompts: PromptsFile | None = None  # a learned merge's: the prompts it learned from


class LineageBase(Record):
    name: str
    uri: str
    revision: str | None
    sha256: str


class LineageOutput(Record):
    files: dict[str, str]
    dvc: dict | None = None  # {path, md5, pushed} when versioned with DVC


class GitInfo(Record):
    commit: str | None
    dirty: bool | None


class LineageEval(Record):
    fingerprint: str
    benchmark: dict
    scores: dict[str, float]
    mean: float


class Lineage(Record):
    """Where a merged adapter came from: lineage.json of the run and (flattened) the model version's tags."""

    pico_version: str
    merge_key: str
    recipe: dict
    recipe_hash: str
    sources: list[LineageSource]
    base: LineageBase
    output: LineageOutput
    git: GitInfo
    eval: LineageEval
    project: str
    dvc_lock: dict | None = None

    def to_json(self) -> dict:
        """lineage.json: the optional DVC parts only when the output was versioned."""
        out = self.model_dump(exclude={"dvc_lock"} if self.dvc_lock is None else set())
        if self.output.dvc is None:
            del out["output"]["dvc"]
        for src in out["sources"]:  # prompts: only a learned merge's sources have them
            if src.get("prompts") is None:
                src.pop("prompts", None)
        return out


class MergeResult(Record):
    """The merged adapter in the content-addressed store."""

    key: str
    store: str
    manifest: dict
    cached: bool
    runner: str | None = None  # the task runner that calibrated it (None: from the store, or in-process)


class Candidate(Record):
    """One recipe of the search space, in the space's order (ties on validation go to the earlier candidate).

    ``kind`` "merge": a data-free merge, ``recipe`` is ``pico.Recipe.to_dict()``. ``kind`` "learned": a merge learned
    from the adapters as teachers on their prompts (``pico tara``), ``recipe`` is ``{"method": "tara", <TaraConfig
    fields as written>}``; without ``init`` it starts from the best data-free candidate of the night."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: dict
    label: str
    index: int
    kind: Literal["merge", "learned"] = "merge"

    def recipe_obj(self) -> pico.Recipe:
        if self.kind != "merge":
            raise TypeError(f"candidate {self.label!r} is a learned merge, not a pico.Recipe")
        return pico.Recipe.from_dict(self.recipe)

    def tara_config(self, init: str | None = None):
        """The learned candidate's ``pico.tara.TaraConfig`` (``init``: the data-free merge it starts from when the
        grid names none)."""
        fields = {k: v for k, v in self.recipe.items() if k != "method"}
        if fields.get("init") is None and init is not None:
            fields["init"] = init
        return TaraConfig(**fields)


class SearchSpace(Record):
    """``merge:`` expanded (pipeline.grids.expand): the candidates in order and the combinations skipped, with why."""

    candidates: list[Candidate]
    skipped: list[dict] = []  # {"recipe": {...}, "reason": "..."}
    single: bool = False  # merge: was one plain recipe

    def describe(self) -> str:
        lines = [f"{len(self.candidates)} candidates" + (f", {len(self.skipped)} combinations skipped"
                                                          if self.skipped else "")]
        lines += [f"  {c.index:>2} {c.label}" for c in self.candidates]
        lines += [f"  skipped {json.dumps(s['recipe'], sort_keys=True, default=str)}: {s['reason']}"
                  for s in self.skipped]
        return "\n".join(lines)


class CandidateRecord(Record):
    """One candidate merged into the store and scored on validation; cached by ``key`` (the file holds all but the
    last two fields)."""

    key: str  # the candidate's content key: merge key, base model, validation fingerprint
    merge_key: str
    store: str
    label: str
    index: int
    recipe: dict
    validation: Validation
    merge_s: float
    score_s: float
    kind: Literal["merge", "learned"] = "merge"
    training: dict | None = None  # a learned merge: init, steps, seconds (prepare/train), loss curve, teacher cache
    cached: bool = False  # read from its record (or Prefect's cache) this night
    scored_on: str = ""  # "first N validation items", "all validation items (finalist)", ...

    def to_file(self) -> dict:
        return self.model_dump(exclude={"cached", "scored_on"})

    def candidate(self) -> Candidate:
        return Candidate(recipe=self.recipe, label=self.label, index=self.index, kind=self.kind)


class SearchResult(Record):
    """The search of one night: every candidate's record, the validation argmax and why."""

    records: list[CandidateRecord]
    chosen: CandidateRecord
    runner_up: CandidateRecord | None
    margin: float | None
    why: str
    cached: int  # candidates whose every round came from the cache
    seconds: float


class SearchSummary(Record):
    """The search as the night's summary shows it (``NightlyResult.search``)."""

    chosen: str
    why: str
    margin: float | None
    runner_up: str | None
    candidates: int
    cached: int
    seconds: float
    skipped: list[dict]
    leaderboard: list[dict]  # pipeline.render.candidate_rows


class Comparison(Record):
    """Candidate minus champion on the same items (pipeline.gate.compare)."""

    gain: float  # mean over tasks of the per-task mean difference
    gain_stderr: float  # paired standard error of that gain
    p_gain: float  # one-sided: P(gain this large | gain <= min_delta), sign-flip randomization test
    min_delta: float = 0.0  # the null hypothesis tested: gain <= min_delta
    ci_low: float | None = None  # the gain's paired bootstrap interval at ci_level (1 - 2 alpha: its lower end is
    ci_high: float | None = None  # the one-sided 1 - alpha bound)
    ci_level: float | None = None
    # task -> {diff, stderr, won, lost, n, test ("mcnemar" | "sign-flip"), p_worse, p_better, p_worse_holm}
    tasks: dict[str, dict] = {}


class Verdict(Record):
    """The paired gate's decision and the statistics behind it (pipeline.gate.judge)."""

    promote: bool
    reasons: list[str]
    candidate: Scores
    champion: Scores | None = None
    comparison: Comparison | None = None


class Sources(Record):
    """The night's fetched sources: the adapters to merge (in catalog order), the base model, the baselines."""

    adapters: list[FetchedSource]
    base: FetchedSource
    baselines: list[FetchedSource] = []


class Evaluation(Record):
    """The night's merge benchmarked and judged: its test scores, the baselines', the champion's, the gate's."""

    benchmark: dict  # the test split's fingerprint (pipeline.evaluation.fingerprint)
    fingerprint: str  # its digest: which versions' scores compare with these
    merged: EvalResult
    baselines: list[EvalResult] = []
    champion: ChampionRecord | None = None  # with its scores on this benchmark
    champion_eval: EvalResult | None = None  # its per-sample outcomes, for the gate
    verdict: Verdict | None = None  # None: plain scores, the means are compared


class NightlyResult(Record):
    """What one night did (the flow's return value; ``--json`` writes its dump)."""

    project: str
    merge_key: str
    fingerprint: str
    store: str
    cached_merge: bool
    runner: str | None
    eval: EvalResult
    baselines: list[EvalResult]
    champion_before: ChampionRecord | None
    registered: Registration
    decision: Decision
    dvc: DvcRecord
    experiment_id: str
    timings: dict[str, float]
    tracking_uri: str
    model: str
    recipe_label: str = ""  # the night's recipe (pipeline.grids.label)
    search: SearchSummary | None = None  # the recipe search: chosen, why, margin, runner-up, candidates' leaderboard
    gate: Verdict | None = None  # the paired test (None: the scorer gave plain scores and the means were compared)
    mlflow_url: str | None = None
    flow_run_id: str | None = None
    artifacts: list[str] = []  # keys of the Prefect artifacts created
