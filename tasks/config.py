"""The pipeline's settings: ``pipeline:`` and ``merge:`` in params.yaml, and the adapter catalog they name.

Plain Python (no Prefect, MLflow or DVC imports): the DVC stages, the flow and ``pico lineage`` all read settings
through here, so every entry point resolves paths and defaults the same way.  Relative paths are relative to the
project directory (the one holding params.yaml).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Defaults of every ``pipeline:`` key; params.yaml overrides them key by key (nested dicts merge).
DEFAULTS: dict = {
    "catalog": "adapters.yaml",
    "paths": {
        "work": "build/pipeline",  # content-addressed merge store, eval cache, locks, fetched sources
        "merged": "build/pipeline/merged",  # DVC 'merge' stage output: the latest merged adapter
        "eval": "build/pipeline/eval",  # DVC 'eval' stage output: metrics.json of the latest merge
    },
    "dtype": "float32",
    "device": "auto",  # where calibration runs: auto (CUDA when the worker has one), cpu, cuda
    # layers_per_group: None: the library's shape batches; N: split them N layers a task.
    # threads: torch intra-op threads of each calibrate/merge task, the same on every runner (same bytes).
    "calibrate": {"layers_per_group": None, "threads": 1},
    "task_runner": {
        "kind": "threads",  # threads | dask
        "max_workers": 2,  # threads
        "address": None,  # dask: scheduler address of an existing cluster; None: a LocalCluster
        "n_workers": 2,  # dask LocalCluster
        "processes": True,  # dask LocalCluster
        "gpu_resource": None,  # dask: e.g. "GPU": calibration tasks ask workers for one unit of it
    },
    "fetch": {"retries": 3, "retry_delay_s": 2.0},
    "eval": {
        "suite": "skills",  # skills: the embedded skills suite; lm-eval: the tasks below; callable: a function
        "callable": None,  # suite: callable: "module:function"(base_dir, adapter_dir, split, limit) -> {task: score}
        "skills": None,  # skills suite: which skills (None: all)
        "split": "test",
        "limit": None,  # items per task (None: all)
        "tasks": [],  # lm-eval task names, for suite: lm-eval
        "include_path": None,  # lm-eval: a folder of task YAMLs
        "metric": "exact_match",  # lm-eval: the metric read from each task's results
        "batch_size": 64,
        # lm-eval model settings (suite: lm-eval), from params so the same path serves a user's model on a GPU
        "device": "cpu",
        "dtype": "float32",
        "model_args": "",  # extra HF model_args, e.g. "attn_implementation=sdpa"
        "apply_chat_template": False,  # instruct models: score through their chat template
        "num_fewshot": 0,
        "baselines": True,  # also evaluate the catalog's baselines and the base model (cached by content hash)
    },
    "mlflow": {
        "tracking_uri": "sqlite:///build/mlflow/mlflow.db",  # MLFLOW_TRACKING_URI overrides
        "artifact_root": "build/mlflow/artifacts",  # for a file/sqlite store; a server manages its own
        "experiment": "pico-nightly",
        "model_name": "pico-merged",
        "http_retries": 2,  # MLFLOW_HTTP_REQUEST_MAX_RETRIES unless set: fail in seconds, not minutes
        "http_timeout_s": 20,
        "log_adapter": True,  # the merged adapter as run artifacts (the model version's source)
    },
    "gate": {
        "metric": "mean",  # the aggregate compared with the champion
        "min_delta": 0.0,  # promote when mean >= champion mean + min_delta
        "floor": 0.0,  # ... and no skill below this accuracy
        "floors": {},  # per-skill floors, overriding `floor`
    },
    "schedule": {"cron": "0 2 * * *", "timezone": "UTC", "deployment": "nightly", "concurrency_limit": 1},
    "dvc": {"enabled": True, "push": True, "stages": ["merge", "eval"]},
}

DEFAULT_RECIPE: dict = {"method": "ta", "space": "core", "calibrate": "none"}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class CatalogEntry:
    name: str
    source: str  # local path, hf://org/name@rev, dvc://path[@rev]
    sha256: str | None = None  # optional pin: pico's per-adapter digest (Source.sha256)

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "sha256": self.sha256}


@dataclass
class Catalog:
    path: Path
    adapters: list[CatalogEntry]
    base: CatalogEntry | None = None  # the base model the adapters were trained on (for evaluation)
    baselines: list[CatalogEntry] = field(default_factory=list)  # evaluated for the leaderboard, never merged


class ConfigError(ValueError):
    """A problem in params.yaml or the catalog, named by file and key."""


def _entry(item, where: str) -> CatalogEntry:
    if isinstance(item, str):
        item = {"source": item}
    if not isinstance(item, dict) or "source" not in item:
        raise ConfigError(f"{where}: each entry needs a 'source' (a path, hf://org/name@rev or dvc://path)")
    unknown = set(item) - {"name", "source", "sha256"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))} (known: name, source, sha256)")
    source = str(item["source"])
    name = item.get("name") or source.rstrip("/").split("/")[-1].split("@")[0]
    pin = item.get("sha256")
    if pin is not None:
        pin = str(pin).lower().removeprefix("sha256:")
        if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
            raise ConfigError(f"{where}: {name}: sha256 pin must be 64 hex digits, got {item['sha256']!r}")
    return CatalogEntry(name=str(name), source=source, sha256=pin)


def load_catalog(path: Path) -> Catalog:
    if not path.is_file():
        raise ConfigError(f"adapter catalog {path} not found (params.yaml pipeline.catalog)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not data.get("adapters"):
        raise ConfigError(f"{path}: needs a non-empty 'adapters:' list")
    adapters = [_entry(x, f"{path.name}: adapters[{i}]") for i, x in enumerate(data["adapters"])]
    names = [a.name for a in adapters]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{path.name}: adapter names must be unique; repeated: {', '.join(sorted(dup))}")
    base = _entry(data["base"], f"{path.name}: base") if data.get("base") else None
    baselines = [_entry(x, f"{path.name}: baselines[{i}]") for i, x in enumerate(data.get("baselines") or [])]
    return Catalog(path=path, adapters=adapters, base=base, baselines=baselines)


@dataclass
class Settings:
    """Everything one pipeline run needs to know, resolved against ``project``."""

    project: Path
    params_path: Path
    pipeline: dict
    recipe: dict
    catalog: Catalog

    def path(self, key: str) -> Path:
        return self.resolve(self.pipeline["paths"][key])

    def resolve(self, p: str | Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else self.project / p

    @property
    def work(self) -> Path:
        return self.path("work")

    @property
    def tracking_uri(self) -> str:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or self.pipeline["mlflow"]["tracking_uri"]
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(self.resolve(uri[len("sqlite:///"):]))  # relative to the project
        return uri

    @property
    def local_tracking(self) -> bool:
        return not self.tracking_uri.startswith(("http://", "https://", "databricks"))

    def recipe_obj(self):
        from pico import Recipe

        try:
            return Recipe.from_dict(self.recipe)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.params_path.name}: merge: {exc}") from exc

    def eval_config(self) -> dict:
        return dict(self.pipeline["eval"])


def load_settings(project: str | Path = ".", params: str | Path = "params.yaml",
                  overrides: dict | None = None) -> Settings:
    """Read params.yaml (``pipeline:`` and ``merge:``) and the catalog it names. ``overrides`` merge into
    ``pipeline:`` (and ``merge`` into the recipe), for flow parameters and tests."""
    project = Path(project).resolve()
    params_path = Path(params)
    if not params_path.is_absolute():
        params_path = project / params_path
    if not params_path.is_file():
        raise ConfigError(f"{params_path} not found")
    data = yaml.safe_load(params_path.read_text()) or {}
    overrides = copy.deepcopy(overrides or {})
    recipe_over = overrides.pop("merge", None)
    pipeline = deep_merge(DEFAULTS, data.get("pipeline") or {})
    pipeline = deep_merge(pipeline, overrides)
    unknown = set(pipeline) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"{params_path.name}: pipeline: unknown keys {', '.join(sorted(unknown))}")
    recipe = dict(data.get("merge") or DEFAULT_RECIPE)
    if recipe_over:
        recipe.update(recipe_over)
    settings = Settings(project=project, params_path=params_path, pipeline=pipeline, recipe=recipe,
                        catalog=Catalog(path=project, adapters=[]))
    settings.catalog = load_catalog(settings.resolve(pipeline["catalog"]))
    settings.recipe_obj()  # validate early: a bad recipe stops the flow before any work
    return settings


def digest(obj) -> str:
    """sha256 of a JSON-able object (sorted keys): the content keys of caches and lineage."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def quiet_env() -> None:
    """Defaults that keep the embedded components offline, quiet and quick (explicit settings win)."""
    for key, value in {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # the first start on a busy 2-core box is slow
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TQDM_DISABLE": "1",  # a nightly job's log, not a terminal: no progress bars
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "GIT_PYTHON_REFRESH": "quiet",
    }.items():
        os.environ.setdefault(key, value)
