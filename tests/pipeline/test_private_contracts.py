"""The private DVC, MLflow and lm-eval symbols the pipeline relies on still exist with the parameters it passes (issue 25 item 6).

DVC has no public API for a parallel `repro` (the pipeline's DVC I/O module walks DVC's own plan and runs only
``cmd_run`` concurrently), and MLflow's SQL registry store resolves a ``models:/`` source through the global tracking
URI (the tracking module scopes it with ``_use_tracking_uri``). pyproject.toml bounds both packages to the minor
versions tested; this test fails loudly, naming the symbol, when an upgrade inside or past those bounds moves one.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

# (module, attribute path, parameters the pipeline passes by name or position)
CONTRACTS = [
    ("dvc.repo.reproduce", "plan_repro", ["graph", "stages"]),
    ("dvc.repo.reproduce", "collect_stages", ["repo", "targets"]),
    ("dvc.repo.reproduce", "get_active_graph", ["graph"]),
    ("dvc.repo", "lock_repo", ["repo"]),
    ("dvc.stage.run", "cmd_run", ["stage"]),
    ("dvc.stage.cache", "RunCacheNotFoundError", []),
    ("dvc.stage.cache", "StageCache.restore", ["stage"]),
    ("dvc.stage", "Stage.save", ["allow_missing", "run_cache"]),
    ("dvc.stage", "Stage.commit", ["allow_missing"]),
    ("dvc.stage", "Stage.dump", []),
    ("mlflow.tracking._tracking_service.utils", "_use_tracking_uri", ["uri"]),
    ("mlflow.environment_variables", "_MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT", []),
    ("mlflow.environment_variables", "_MLFLOW_HTTP_REQUEST_MAX_BACKOFF_FACTOR_LIMIT", []),
    # the task YAMLs' generation_kwargs for the served model (pipeline.evaluation.generation): lm-eval's own reader
    ("lm_eval.tasks._yaml_loader", "load_yaml", ["path", "resolve_func"]),
    # groups and tags expanded to their leaf tasks (pipeline.evaluation.expand_tasks): TaskManager.load's flat
    # {"tasks": {leaf: Task}} (lm-eval 0.4.13; older versions only had the nested load_task_or_group)
    ("lm_eval.tasks", "TaskManager.load", ["task_list"]),
    ("lm_eval.tasks", "TaskManager.all_subtasks", []),
]


@pytest.mark.parametrize("module, path, params", CONTRACTS, ids=[f"{m}.{p}" for m, p, _ in CONTRACTS])
def test_private_symbol_is_there_with_its_parameters(module, path, params):
    obj = importlib.import_module(module)
    for part in path.split("."):
        assert hasattr(obj, part), f"{module}.{path}: {part!r} is gone (the pinned version changed it)"
        obj = getattr(obj, part)
    if params:
        names = list(inspect.signature(obj).parameters)
        missing = [p for p in params if p not in names and "kwargs" not in names]
        assert not missing, f"{module}.{path}{inspect.signature(obj)} lacks {missing}"


def test_the_bounds_in_pyproject_cover_the_installed_versions():
    """The extras pin DVC and MLflow below the next minor version: the contracts above were read on these."""
    import importlib.metadata as md
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    for dist in ("mlflow", "dvc"):
        m = re.search(rf'"{dist}>=([\d.]+),<([\d.]+)"', text)
        assert m, f"pyproject.toml: {dist} has no upper bound"
        have = tuple(int(x) for x in md.version(dist).split(".")[:2])
        lo, hi = (tuple(int(x) for x in v.split(".")[:2]) for v in m.groups())
        assert lo <= have < hi, f"installed {dist} {md.version(dist)} outside {m.group(0)}"
