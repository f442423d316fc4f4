"""The pipeline's settings: ``pipeline:`` and ``merge:`` in params.yaml, and the adapter catalog they name.

Typed (pydantic) and validated once, in :func:`load_settings`: an unknown key anywhere, a wrong type or a bad value
stops the run before any work with one error naming the file and the key. Plain Python otherwise (no Prefect, MLflow
or DVC imports): the DVC stages, the flow and ``pico lineage`` all read settings through here, so every entry point
resolves paths and defaults the same way. Relative paths are relative to the project directory (the one holding
params.yaml).
"""

from __future__ import annotations

import copy
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

import pico

from .errors import PipelineError, SearchError
from .grids import expand
from .records import SearchSpace


class ConfigError(PipelineError, ValueError):
    """A problem in params.yaml or the catalog, named by file and key."""

    permanent = True


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathSettings(_Section):
    # content-addressed merge store, eval cache, locks, fetched sources; the environment's PICO_WORK_DIR (absolute)
    # replaces it: a worker host's persistent, shared folder (a deployment's run clones the project afresh)
    work: str = "build/pipeline"
    merged: str = "build/pipeline/merged"  # DVC 'merge' stage output: the latest merged adapter
    eval: str = "build/pipeline/eval"  # DVC 'eval' stage output: metrics.json of the latest merge


class CalibrateSettings(_Section):
    # None: the library's shape batches; N: split them N layers a task.
    layers_per_group: PositiveInt | None = None
    # torch intra-op threads of each calibrate/merge task, the same on every runner (same bytes).
    threads: PositiveInt | None = 1


class TaskRunnerSettings(_Section):
    kind: Literal["threads", "dask"] = "threads"
    max_workers: PositiveInt = 2  # threads
    address: str | None = None  # dask: scheduler address of an existing cluster; None: a LocalCluster
    n_workers: PositiveInt = 2  # dask LocalCluster
    processes: bool = True  # dask LocalCluster
    gpu_resource: str | None = None  # dask: e.g. "GPU": calibration tasks ask workers for one unit of it


class FetchSettings(_Section):
    retries: int = Field(3, ge=0)
    retry_delay_s: float = Field(2.0, ge=0)


class EvalSettings(_Section):
    suite: Literal["skills", "lm-eval", "callable"] = "skills"  # skills: an alias of the callable below
    callable: str | None = None  # "module:function"(base_dir, adapter_dir, split, limit) -> {task: score}
    skills: list[str] | None = None  # skills suite: which skills (None: all)
    split: str = "test"
    limit: int | float | None = None  # items per task (None: all)
    tasks: list[str] = []  # lm-eval task, group or tag names, for suite: lm-eval (groups: their leaf tasks are scored)
    include_path: str | None = None  # lm-eval: a folder of task YAMLs
    # lm-eval: the per-item metric read from each sample, "name" or "name,filter" (lm-eval's result key, e.g.
    # "exact_match,strict-match"): a task that logs several filters needs the filter named
    metric: str = "exact_match"
    batch_size: PositiveInt = 64
    # lm-eval model settings (suite: lm-eval), from params so the same path serves a user's model on a GPU
    device: str = "cpu"
    dtype: str = "float32"
    model_args: str = ""  # extra HF model_args, e.g. "attn_implementation=sdpa"
    apply_chat_template: bool = False  # instruct models: score through their chat template
    num_fewshot: int = Field(0, ge=0)
    baselines: bool = True  # also evaluate the catalog's baselines and the base model (cached by content hash)

    @model_validator(mode="after")
    def _valid(self):
        if self.suite == "callable" and (not self.callable or ":" not in self.callable):
            raise ValueError(f"suite: callable needs callable: 'module:function', got {self.callable!r}")
        if not re.fullmatch(r"[^,\s]+(,[^,\s]+)?", self.metric):
            raise ValueError(f"metric: 'name' or 'name,filter' (lm-eval's result key, e.g. 'exact_match,strict-match'), "
                             f"got {self.metric!r}")
        return self


class MlflowSettings(_Section):
    tracking_uri: str = "sqlite:///build/mlflow/mlflow.db"  # MLFLOW_TRACKING_URI overrides
    artifact_root: str = "build/mlflow/artifacts"  # for a file/sqlite store; a server manages its own
    experiment: str = "pico-nightly"
    model_name: str = "pico-merged"
    # Exported as MLFLOW_HTTP_REQUEST_* (unless the environment sets them): MLflow parses each as an int and refuses
    # retries above 10 and a backoff factor above 120 (its _MLFLOW_HTTP_REQUEST_MAX_*_LIMIT), so these are ints with
    # those bounds, refused here, at load, with the key named (tests/pipeline/test_env_exports.py checks the types
    # against MLflow's own parser). Few retries: an unreachable server fails the step in seconds, not minutes.
    http_retries: int = Field(2, ge=0, le=10)
    http_backoff_factor: int = Field(1, ge=0, le=120)
    http_timeout_s: int = Field(20, gt=0)
    log_adapter: bool = True  # the merged adapter as run artifacts (the model version's source)
    # a pip index serving the night's torch build (e.g. https://download.pytorch.org/whl/cpu for 2.13.0+cpu): the model
    # version's requirements then pin that build and name the index; None: the public version (PyPI's is CUDA)
    torch_index: str | None = None
    # The Prefect global concurrency limit (limit 1) held while versions are registered and aliases move, whenever a
    # Prefect server is configured (PREFECT_API_URL), so runs on different hosts never race on the aliases; the
    # preflight checks it exists (`prefect global-concurrency-limit create pico-registry --limit 1`). The embedded
    # API, or None here: a file lock under pipeline.paths.work only (one host)
    registry_limit: str | None = "pico-registry"
    registry_limit_timeout_s: float = Field(600, gt=0)


class GateSettings(_Section):
    metric: Literal["mean"] = "mean"  # the aggregate compared with the champion (only the mean so far)
    min_delta: float = 0.0  # promote when the mean gain over the champion is significantly above min_delta ...
    # ... at this level (one-sided paired tests, pipeline/gate.py; also the Holm-corrected per-task veto's level; the
    # gain's interval is at 1 - 2 alpha)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    iters: int = Field(20000, ge=100)  # Monte Carlo draws of the randomization tests and the bootstrap (fixed seed)
    seed: int = 0
    floor: float = 0.0  # ... and no task below this score
    floors: dict[str, float] = {}  # per-task floors, overriding `floor`; each key must be a task of the benchmark

    def floor_of(self, task: str) -> float:
        return float(self.floors.get(task, self.floor))


def unknown_floors(gate: GateSettings, tasks: list[str], what: str) -> str | None:
    """``gate.floors`` keys that are not in ``tasks`` (a typo would silently leave that task at the default floor),
    as the error's text after the file name; None when every key is a task."""
    bad = [k for k in gate.floors if k not in tasks]
    if not bad:
        return None
    known = ", ".join(tasks[:12]) + (f", ... ({len(tasks)} in all)" if len(tasks) > 12 else "")
    return (f"gate.floors: {', '.join(repr(k) for k in bad)} {'is not a task' if len(bad) == 1 else 'are not tasks'} "
            f"of {what} (its tasks: {known})")


class SearchSettings(_Section):
    """Scoring the candidates of a search space (``merge:`` with lists, pipeline/search.py) on the validation split."""

    limit: PositiveInt | None = None  # validation items per task (None: all)
    tasks: list[str] = []  # eval.suite lm-eval: the lm-eval tasks candidates are chosen on (validation, not test)
    finalists: PositiveInt | None = None  # with limit: the top N of that screening are scored on all items


class NotifySettings(_Section):
    """Notifications through a saved Prefect notification block (pipeline/notify.py). The block holds the webhook URL
    and its token on the Prefect server; params.yaml only names it (it is committed, and copied into each night's
    records), so a URL here is refused."""

    block: str | None = None  # a saved block, e.g. "slack-webhook/team-ml" or "custom-webhook/pico-nightly"
    events: list[Literal["failure", "promotion"]] = ["failure", "promotion"]  # ("on" is YAML 1.1 for true)

    @model_validator(mode="before")
    @classmethod
    def _no_url(cls, data: Any):
        if isinstance(data, dict) and data.get("webhook_url") is not None:
            raise ValueError("webhook_url: a webhook URL carries its token, and params.yaml is committed and copied "
                             "into each night's records; save it as a Prefect notification block (`python -m "
                             "pipeline.notify save-webhook NAME` reads the URL from stdin) and set "
                             "pipeline.notify.block: custom-webhook/NAME")
        if isinstance(data, dict) and "webhook_url" in data:  # `webhook_url: null` (the old default): nothing set
            data = {k: v for k, v in data.items() if k != "webhook_url"}
        return data


class ScheduleSettings(_Section):
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    deployment: str = "nightly"
    concurrency_limit: PositiveInt | None = 1
    # a hung night must not hold the one slot of concurrency_limit: the flow and the benchmark task time out
    flow_timeout_s: float | None = Field(6 * 3600, gt=0)
    benchmark_timeout_s: float | None = Field(3600, gt=0)


class DvcSettings(_Section):
    enabled: bool = True
    push: bool = True
    stages: list[str] = ["merge", "eval"]
    # exp: each night is a DVC experiment (`dvc exp save`: dvc exp show / metrics diff compare nights); none: only
    # the workspace dvc.lock
    history: Literal["exp", "none"] = "exp"
    # with history exp: the git remote each night's experiment is pushed to (`dvc exp push`, with its DVC objects);
    # None: it stays on the worker
    exp_push: str | None = None
    # with history exp: keep the newest N nightly experiments (here and on exp_push's remote); None: keep all
    exp_keep: PositiveInt | None = None
    # the one-off suite build (pipeline/build.py): independent stages (a foreach's items) run this many at once
    build_jobs: PositiveInt = 1
    # what a suite's merge@<suite> / eval@<suite> stages read (dvc.yaml interpolates them; the night does not)
    inputs: dict[str, str] = {}
    build_minutes: PositiveInt | None = None  # the suite build's measured wall time, printed as its estimate


class LearnSettings(_Section):
    """Training the learned candidates of a search space (``method: tara`` grids; pipeline/merging.py)."""

    # torch threads of the training (None: every core); the count is part of the learned merge's key
    threads: PositiveInt | None = None
    progress: bool = True  # pico's progress bars (teacher replies, steps) on the worker's stderr


class PipelineSettings(_Section):
    """Everything under ``pipeline:``; params.yaml overrides the defaults key by key."""

    suite: str | None = None  # a preset of params.yaml ``suites:`` applied under these keys (e.g. smollm2)
    catalog: str = "adapters.yaml"
    paths: PathSettings = PathSettings()
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"  # where calibration runs: auto (CUDA when the worker has one), cpu, cuda
    calibrate: CalibrateSettings = CalibrateSettings()
    task_runner: TaskRunnerSettings = TaskRunnerSettings()
    fetch: FetchSettings = FetchSettings()
    eval: EvalSettings = EvalSettings()
    mlflow: MlflowSettings = MlflowSettings()
    gate: GateSettings = GateSettings()
    search: SearchSettings = SearchSettings()
    learn: LearnSettings = LearnSettings()
    notify: NotifySettings = NotifySettings()
    schedule: ScheduleSettings = ScheduleSettings()
    dvc: DvcSettings = DvcSettings()

    @model_validator(mode="after")
    def _task_lists(self):
        """What is known without lm-eval or the scorer (pipeline.evaluation.check_benchmark checks the rest, groups
        expanded, at the night's start): no validation task is a test task; floors name skills of eval.skills."""
        shared = [t for t in self.search.tasks if t in self.eval.tasks]
        if shared:
            raise ValueError(f"search.tasks: {', '.join(shared)} also in eval.tasks: the recipe would be chosen on the "
                             "test items; validation tasks must be other tasks")
        if self.eval.suite == "skills" and self.eval.skills:
            bad = unknown_floors(self.gate, self.eval.skills, "eval.skills")
            if bad:
                raise ValueError(bad)
        return self


class CatalogEntry(_Section):
    name: str
    source: str  # local path, hf://org/name@rev, dvc://path[@rev]
    sha256: str | None = None  # optional pin: pico's per-adapter digest (Source.sha256)
    prompts: str | None = None  # optional unlabeled prompts (JSONL: a path, dvc:// or hf:// file) for learned merges

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, item: Any):
        if isinstance(item, str):
            item = {"source": item}
        if not isinstance(item, dict) or "source" not in item:
            raise ValueError("each entry needs a 'source' (a path, hf://org/name@rev or dvc://path)")
        item = dict(item)
        item["source"] = str(item["source"])
        item["name"] = str(item.get("name") or item["source"].rstrip("/").split("/")[-1].split("@")[0])
        return item

    @model_validator(mode="after")
    def _pin(self):
        if self.sha256 is not None:
            pin = str(self.sha256).lower().removeprefix("sha256:")
            if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
                raise ValueError(f"{self.name}: sha256 pin must be 64 hex digits, got {self.sha256!r}")
            if pin != self.sha256:
                self.sha256 = pin
        return self

    def to_dict(self) -> dict:
        return self.model_dump()


class Catalog(_Section):
    path: Path = Path(".")
    adapters: list[CatalogEntry] = Field(min_length=1)
    base: CatalogEntry | None = None  # the base model the adapters were trained on (for evaluation)
    baselines: list[CatalogEntry] = []  # evaluated for the leaderboard, never merged

    @model_validator(mode="after")
    def _unique(self):
        names = [a.name for a in self.adapters]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"adapter names must be unique; repeated: {', '.join(sorted(dup))}")
        return self


class Settings(BaseModel):
    """Everything one pipeline run needs to know, resolved against ``project`` and validated once."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    project: Path
    params_path: Path
    pipeline: PipelineSettings
    merge: dict  # the ``merge:`` section as written (plus overrides): what DVC's params and MLflow's params record
    space: SearchSpace  # the same, expanded and validated once: one candidate, or the search's candidates in order
    catalog: Catalog

    @property
    def search(self) -> bool:
        """``merge:`` is a search space: the night's recipe is chosen on the validation split (pipeline.search)."""
        return not self.space.single

    def path(self, key: Literal["work", "merged", "eval"]) -> Path:
        return self.resolve(getattr(self.pipeline.paths, key))

    def resolve(self, p: str | Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else self.project / p

    @property
    def work(self) -> Path:
        return self.path("work")

    @property
    def tracking_uri(self) -> str:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or self.pipeline.mlflow.tracking_uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(self.resolve(uri[len("sqlite:///"):]))  # relative to the project
        return uri

    @property
    def local_tracking(self) -> bool:
        return not self.tracking_uri.startswith(("http://", "https://", "databricks"))

    @property
    def model_name(self) -> str:
        return self.pipeline.mlflow.model_name


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class found at ``loc`` inside ``cls`` (list indices skipped), for naming known keys."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return None
        found = None
        for t in [field.annotation, *typing.get_args(field.annotation)]:
            for u in [t, *typing.get_args(t)]:
                if isinstance(u, type) and issubclass(u, BaseModel):
                    found = u
        if found is None:
            return None
        cls = found
    return cls


def _where(prefix: str, loc: tuple) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def config_error(file: str, prefix: str, model: type[BaseModel], exc: ValidationError) -> ConfigError:
    """One readable error from pydantic's: ``file: key.path: problem`` per problem, unknown keys named with the
    known ones."""
    unknown: dict[tuple, list[str]] = {}
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            msg = f"{msg}, got {err['input']!r}"
        where = _where(prefix, loc)
        lines.append(f"{file}: {where}: {msg}" if where else f"{file}: {msg}")
    for loc, keys in unknown.items():
        sub = _model_at(model, loc)
        known = f" (known: {', '.join(sub.model_fields)})" if sub is not None else ""
        lines.append(f"{file}: {_where(prefix, loc) or 'top level'}: unknown keys {', '.join(sorted(keys))}{known}")
    return ConfigError("; ".join(lines))


def load_catalog(path: Path) -> Catalog:
    if not path.is_file():
        raise ConfigError(f"adapter catalog {path} not found (params.yaml pipeline.catalog)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not data.get("adapters"):
        raise ConfigError(f"{path}: needs a non-empty 'adapters:' list")
    try:
        return Catalog.model_validate({**data, "path": path})
    except ValidationError as exc:
        raise config_error(path.name, "", Catalog, exc) from None


def load_settings(project: str | Path = ".", params: str | Path = "params.yaml",
                  overrides: dict | None = None) -> Settings:
    """Read params.yaml (``pipeline:`` and ``merge:``) and the catalog it names, and validate them. ``overrides``
    merge into ``pipeline:`` (and ``merge`` into the recipe), for ``--set``, flow parameters and tests."""
    project = Path(project).resolve()
    params_path = Path(params)
    if not params_path.is_absolute():
        params_path = project / params_path
    if not params_path.is_file():
        raise ConfigError(f"{params_path} not found")
    data = yaml.safe_load(params_path.read_text()) or {}
    overrides = copy.deepcopy(overrides or {})
    recipe_over = overrides.pop("merge", None)
    pipe = data.get("pipeline") or {}
    suite = overrides.get("suite", pipe.get("suite"))
    preset_merge = None
    if suite:  # the suite switch: params.yaml `suites: {name: {<pipeline keys>, merge: ...}}`
        presets = data.get("suites") or {}
        if suite not in presets:
            raise ConfigError(f"{params_path.name}: pipeline.suite: no preset {suite!r} under the top-level "
                              f"'suites:' (known: {sorted(presets) or 'none'})")
        preset = copy.deepcopy(presets[suite] or {})
        preset_merge = preset.pop("merge", None)
        pipe = deep_merge(pipe, preset)
    if work := os.environ.get("PICO_WORK_DIR"):  # this host's work folder, over params.yaml (--set still wins)
        if not Path(work).is_absolute():
            raise ConfigError(f"PICO_WORK_DIR must be an absolute path (it replaces pipeline.paths.work of "
                              f"{params_path.name}), got {work!r}")
        pipe = deep_merge(pipe, {"paths": {"work": work}})
    raw = deep_merge(pipe, overrides)  # --set wins over the preset
    try:
        pipeline = PipelineSettings.model_validate(raw)
    except ValidationError as exc:
        raise config_error(params_path.name, "pipeline", PipelineSettings, exc) from None
    merge = dict(preset_merge or data.get("merge") or pico.Recipe().to_dict())
    if recipe_over:
        merge.update(recipe_over)
    try:  # validated once: a bad recipe or search space stops the flow before any work
        space = expand(merge)
    except SearchError as exc:
        raise ConfigError(f"{params_path.name}: {exc}") from None
    catalog = load_catalog((project / pipeline.catalog) if not Path(pipeline.catalog).is_absolute()
                           else Path(pipeline.catalog))
    learned = [c for c in space.candidates if c.kind == "learned"]
    missing = [a.name for a in catalog.adapters if a.prompts is None]
    if learned and missing:
        raise ConfigError(f"{params_path.name}: merge: the learned candidate {learned[0].label!r} needs unlabeled "
                          f"prompts for every adapter; {catalog.path.name} gives none for {', '.join(missing)} (add "
                          "`prompts:` to those entries, or drop the method: tara grid)")
    for c in learned:  # the checks that need the number of adapters (a preference per adapter)
        try:
            c.tara_config().resolve(len(catalog.adapters))
        except (pico.PicoError, ValueError) as exc:
            raise ConfigError(f"{params_path.name}: merge: learned candidate {c.label!r}: {exc}") from None
    return Settings(project=project, params_path=params_path, pipeline=pipeline, merge=merge, space=space,
                    catalog=catalog)
