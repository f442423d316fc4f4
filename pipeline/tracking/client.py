"""The MLflow client of a night, and the one error context every MLflow call of the pipeline runs in.

Embedded default: a SQLite backend store and a local artifact folder under build/mlflow (``pipeline.mlflow``);
``MLFLOW_TRACKING_URI`` points everything at any tracking server instead. HTTP retries are capped
(``pipeline.mlflow.http_retries``) so an unreachable server fails the step in seconds with a clear message instead of
retrying for minutes. An MLflow failure becomes :class:`RegistryUnavailable`, classified by exception type along the
``__cause__``/``__context__`` chain and by ``error_code`` (never by message text): unreachable is transient, a
refusal permanent unless its code says temporary.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from ..environ import export_env, mlflow_env
from ..errors import PipelineError
from ..files import project_lock
from ..settings import Settings


class RegistryUnavailable(PipelineError):
    """The MLflow tracking/registry server cannot be reached (transient) or refused the request (permanent)."""


def configure(settings: Settings) -> str:
    export_env(mlflow_env(settings.pipeline.mlflow))
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def client(settings: Settings):
    from mlflow.tracking import MlflowClient

    uri = configure(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def unreachable(exc: BaseException) -> bool:
    """The server could not be reached at all (connection refused or reset, DNS, timeout): by exception type, along
    the chain MLflow raises from (``MlflowException`` raised while handling ``requests``' error)."""
    import requests

    return any(isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                              TimeoutError)) for e in _chain(exc))


def unavailable(settings: Settings, exc: Exception, what: str) -> RegistryUnavailable:
    from mlflow.exceptions import MlflowException

    text = " ".join(str(exc).split())[:400] if str(exc) else type(exc).__name__
    down = unreachable(exc)
    code = exc.error_code if isinstance(exc, MlflowException) else None
    state = "is unreachable" if down else "refused the request"
    return RegistryUnavailable(f"MLflow at {settings.tracking_uri} {state} ({what}): {text}. Nothing was "
                               "promoted and no alias moved" + ("; start the server or fix MLFLOW_TRACKING_URI, then "
                                                                "rerun (whatever was merged and scored is cached)" if down
                                                                else ""),
                               permanent=not down and code not in _TRANSIENT_CODES)


@contextmanager
def registry_errors(settings: Settings, what: str):
    """Run MLflow calls: a failure becomes :class:`RegistryUnavailable` naming ``what`` was being done (the
    pipeline's own errors pass through as they are)."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        raise unavailable(settings, exc, what) from exc


def ensure_experiment(c, settings: Settings) -> str:
    from mlflow.exceptions import MlflowException

    name = settings.pipeline.mlflow.experiment
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if settings.local_tracking:
        location = (settings.resolve(settings.pipeline.mlflow.artifact_root) / name).as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:  # created by a concurrent run meanwhile
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def preflight(settings: Settings) -> str:
    """Fail fast, before the merge, when the tracking server is down. Returns the experiment id."""
    with registry_errors(settings, "connecting"):
        return ensure_experiment(client(settings), settings)


def flatten(prefix: str, obj, out: dict | None = None) -> dict:
    """Nested params as MLflow's flat ``a.b.c`` keys (non-scalars as JSON)."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj if isinstance(obj, (int, float, str, bool)) or obj is None else json.dumps(obj)
    return out


def params(obj: dict, prefix: str = "") -> list:
    """MLflow ``Param`` entities of a nested dict, within MLflow's key and value limits (sorted)."""
    from mlflow.entities import Param

    return [Param(k[:250], "null" if v is None else str(v)[:6000]) for k, v in sorted(flatten(prefix, obj).items())]


@contextmanager
def registry_guard(settings: Settings):
    """Mutual exclusion for registering versions and moving aliases: a file lock (runs on this host) and, when
    ``pipeline.mlflow.registry_limit`` names one, the Prefect global concurrency limit (runs on every host that
    shares the Prefect API). ``strict``: a limit that does not exist is an error, never a silent no-lock."""
    cfg = settings.pipeline.mlflow
    with project_lock(settings.work, "registry"):
        if not cfg.registry_limit:
            yield
            return
        from prefect.concurrency.sync import concurrency

        with concurrency(cfg.registry_limit, occupy=1, timeout_seconds=cfg.registry_limit_timeout_s, strict=True):
            yield
