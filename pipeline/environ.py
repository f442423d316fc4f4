"""The environment variables the pipeline exports for its libraries, each written as the library parses it (strings
of ints/booleans; tests/pipeline/test_env_exports.py runs every value through the library's own parser). A variable
the user set wins; one this process exported earlier is replaced, so one run's settings never leak into the next."""

from __future__ import annotations

import os

from .settings import MlflowSettings

QUIET_ENV = {  # keep the embedded components offline, quiet and quick
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
}


def mlflow_env(cfg: MlflowSettings) -> dict[str, str]:
    """MLflow's HTTP client settings from ``pipeline.mlflow`` (ints, as MLflow parses them)."""
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(int(cfg.http_retries)),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(int(cfg.http_backoff_factor)),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(cfg.http_timeout_s)),
            "MLFLOW_DISABLE_TELEMETRY": "true"}


_EXPORTED: dict[str, str] = {}  # what export_env wrote, so a later call may replace it


def export_env(values: dict[str, str]) -> None:
    """Export defaults for the libraries: a variable the user set wins; one this process exported earlier is replaced
    (``os.environ.setdefault`` would keep the first settings' value for every later run in the process, so a test's
    settings leaked into the next test's run)."""
    for key, value in values.items():
        if key not in os.environ or os.environ[key] == _EXPORTED.get(key):
            os.environ[key] = _EXPORTED[key] = value


def quiet_env() -> None:
    """Defaults that keep the embedded components offline, quiet and quick (explicit settings win)."""
    export_env(QUIET_ENV)
