"""Helpers of the `stack` tests (no tests here): the stack's environment, credentials, S3 DVC remotes, MLflow."""

from __future__ import annotations

import base64
import functools
import importlib.util
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipeline"))  # pipeline_helpers

from pipeline_helpers import dvc, run  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STATE = REPO / "build" / "stack"
NEEDED = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_URL",
          "PREFECT_API_AUTH_STRING",
          "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PICO_DVC_REMOTE_URL", "PICO_DVC_REMOTE_ENDPOINT",
          "PICO_DASK_ADDRESS", "PICO_PREFECT_POOL", "PICO_REGISTRY_LIMIT")


def listening(url: str) -> bool:
    hostport = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.partition(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def stack_secrets() -> dict[str, str]:
    """Every credential of the stack (what must never appear in a log or a record)."""
    path = STATE / "secrets.env"
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    if auth := os.environ.get("PREFECT_API_AUTH_STRING"):  # as every Prefect request carries it, base64 (basic auth)
        values["PREFECT_API_AUTH_STRING (base64)"] = base64.b64encode(auth.encode()).decode()
    return {k: v for k, v in values.items() if len(v) >= 12}


def use_s3_remote(project: Path, prefix: str) -> None:
    """Make the stack's S3 bucket (under ``prefix``) the project's default DVC remote and push what DVC tracks."""
    url = f"{os.environ['PICO_DVC_REMOTE_URL'].rstrip('/')}/{prefix}"
    dvc(project, "remote", "add", "-f", "-d", "stack", url)
    dvc(project, "remote", "modify", "stack", "endpointurl", os.environ["PICO_DVC_REMOTE_ENDPOINT"])
    dvc(project, "remote", "remove", "local")
    dvc(project, "push", "-q")
    commit_all(project, "DVC remote: the team's S3")


def commit_all(project: Path, msg: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", msg], project)


def model_name(project: Path) -> str:
    import yaml

    return yaml.safe_load((project / "params.yaml").read_text())["pipeline"]["mlflow"]["model_name"]


def mlflow_client():
    """A client of the stack's MLflow as the pipeline user (credentials from the environment)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_TRACKING_URI"])


def versions(name: str) -> list[str]:
    return sorted(str(v.version) for v in mlflow_client().search_model_versions(f"name = '{name}'"))


def champion(name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow_client().get_model_version_by_alias(name, "champion").version)
    except MlflowException:
        return None


@functools.cache
def stack_script():
    """stack/stack.py as a module, to stop and start single services of the running stack: it knows where the
    cluster, the pid files and the logs are, and its ports (PICO_STACK_PORT_BASE, from build/stack/env.sh)."""
    spec = importlib.util.spec_from_file_location("pico_stack", REPO / "stack" / "stack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
