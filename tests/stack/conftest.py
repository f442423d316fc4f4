"""Fixtures of the `stack` lane: the pipeline against the started team stack (./dev stack up; ./dev test-stack).

Each test gets its own throw-away git + DVC project whose default DVC remote is a fresh prefix of the stack's S3
bucket (endpoint in .dvc/config, committed: a clone knows where its data lives; credentials only from the
environment), and its own MLflow experiment and registered model name on the shared MLflow server.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from stack_support import NEEDED, listening, use_s3_remote  # first: it puts tests/pipeline on sys.path
from pipeline_helpers import ENV, PY, make_project


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def stack() -> dict[str, str]:
    """The stack's environment (from build/stack/env.sh, exported by ./dev test-stack); fails if it is not up."""
    missing = [k for k in NEEDED if not os.environ.get(k)]
    if missing:
        pytest.fail(f"the stack environment is not set ({', '.join(missing)}): run `./dev stack up`, then "
                    "`./dev test-stack`", pytrace=False)
    down = [k for k in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PICO_DVC_REMOTE_ENDPOINT", "PICO_DASK_ADDRESS")
            if not listening(os.environ[k])]
    if down:
        pytest.fail(f"stack services down: {', '.join(f'{k}={os.environ[k]}' for k in down)} (`./dev stack status`)",
                    pytrace=False)
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    os.environ["PATH"] = f"{Path(PY).parent}{os.pathsep}{os.environ['PATH']}"
    return {k: os.environ[k] for k in NEEDED}


@pytest.fixture
def stack_project(stack, tmp_path, adapters, base) -> Path:
    """A project on the stack: S3 DVC remote, its own experiment and model name on the stack's MLflow."""
    tag = uuid.uuid4().hex[:10]
    project = make_project(tmp_path / "proj", adapters, base,
                           pipeline={"mlflow": {"experiment": f"stack-{tag}", "model_name": f"stack-{tag}",
                                                "registry_limit": os.environ["PICO_REGISTRY_LIMIT"]}})
    use_s3_remote(project, f"tests/{tag}")
    return project
