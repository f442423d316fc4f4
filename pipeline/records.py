"""The records passed between the nightly steps, typed and validated where they are made (built by the steps, and by
:mod:`pipeline.runlog` for what the run logs).

Each record is a pydantic model with ``extra="forbid"``; ``model_dump()`` gives the JSON the run stores (lineage.json,
eval.json, the ``--json`` summary), key for key what the untyped pipeline wrote before.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
        return out


class MergeResult(Record):
    """The merged adapter in the content-addressed store."""

    key: str
    store: str
    manifest: dict
    cached: bool


class NightlyResult(Record):
    """What one night did (the flow's return value, as a dict; ``--json`` writes it)."""

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
    recipe_label: str = ""  # the night's recipe (pipeline.search.label)
    search: dict | None = None  # the recipe search: chosen, why, margin, runner-up, candidates' leaderboard
    gate: dict | None = None  # the paired test's statistics (pipeline.gate.Verdict.to_dict)
    mlflow_url: str | None = None
    flow_run_id: str | None = None
    artifacts: list[str] = []  # keys of the Prefect artifacts created
