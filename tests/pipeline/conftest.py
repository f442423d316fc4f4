"""Fixtures of the pipeline tests: one real Prefect server per test session, an empty migrated MLflow store, a git +
DVC project template (copied per test), and the projects the tests run the flow in. Plain helpers are in
pipeline_helpers.py (tiny real PEFT adapters and the base come from tests/conftest.py)."""

from __future__ import annotations

import os
import shutil

import pytest
from pipeline_helpers import clone_project, make_project, set_env, start_prefect_server


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One real Prefect server per test process (PREFECT_API_URL): in-process flows and subprocesses share it."""
    url = start_prefect_server(tmp_path_factory.mktemp("prefect"))
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: os.environ["PREFECT_HOME"]}):
        yield url


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory):
    """An empty, migrated MLflow SQLite store: copied into each project (creating one costs ~10 s here)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(scope="session")
def dvc_template(tmp_path_factory, adapters, base):
    """A git + DVC project with the adapters pushed to a local remote (built once, copied per test)."""
    root = tmp_path_factory.mktemp("tpl")
    mp = pytest.MonkeyPatch()
    set_env(mp, root)
    make_project(root / "proj", adapters, base)
    mp.undo()
    return root / "proj"


@pytest.fixture
def project(tmp_path, monkeypatch, dvc_template, mlflow_template, prefect_api):
    set_env(monkeypatch, tmp_path)
    return clone_project(dvc_template, tmp_path / "proj", mlflow_template)


@pytest.fixture
def plain_project(tmp_path, monkeypatch, adapters, base, mlflow_template, prefect_api):
    """No DVC: local-path sources (the faults that stop before versioning)."""
    set_env(monkeypatch, tmp_path)
    root = make_project(tmp_path / "plain", adapters, base, dvc_init=False)
    (root / "build" / "mlflow").mkdir(parents=True)
    shutil.copyfile(mlflow_template, root / "build" / "mlflow" / "mlflow.db")
    return root
