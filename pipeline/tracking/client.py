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
import logging
from contextlib import contextmanager
from pathlib import Path

from ..environ import export_env, mlflow_env
from ..errors import PipelineError
from ..files import project_lock
from ..settings import Settings

log = logging.getLogger("pico.registry")


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


def prefect_server() -> str | None:
    """The Prefect API this process talks to when it is a configured server (``PREFECT_API_URL``), None for the
    embedded ephemeral API (one process, one host)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def guard_limit(settings: Settings) -> str | None:
    """The Prefect global concurrency limit guarding the aliases: ``pipeline.mlflow.registry_limit`` whenever a
    Prefect server is configured (runs on several hosts can share it); None with the embedded API or when set null."""
    return settings.pipeline.mlflow.registry_limit if prefect_server() else None


class GuardMissing(PipelineError):
    """The Prefect server has no global concurrency limit for the alias guard: nothing registered, never retried."""

    permanent = True


def check_guard(settings: Settings) -> str | None:
    """Preflight of the cross-host alias guard: the limit exists on the configured Prefect server. Returns its name
    (None: no guard needed); raises :class:`GuardMissing` with the command that creates it."""
    name = guard_limit(settings)
    if name is None:
        return None
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as c:
        try:
            limit = c.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            raise GuardMissing(
                f"the Prefect server {prefect_server()} has no global concurrency limit {name!r}, which guards the "
                f"registry's aliases across hosts: create it with `prefect global-concurrency-limit create {name} "
                "--limit 1`, or set pipeline.mlflow.registry_limit: null (one host only: a file lock)") from None
    if limit.limit != 1 or not limit.active:
        raise GuardMissing(f"the Prefect global concurrency limit {name!r} must be active with limit 1 (it is "
                           f"{'active' if limit.active else 'inactive'}, limit {limit.limit}): two hosts could move "
                           "the aliases at once")
    return name


class GuardUnavailable(PipelineError):
    """The alias guard could not be taken (the Prefect server is unreachable or refused, or another run held it past
    the timeout): nothing was registered or moved under it; a rerun can succeed."""


# how long the Prefect server keeps a slot whose holder never released it (prefect's concurrency() default)
GUARD_LEASE_S = 300


@contextmanager
def _guard_slot(name: str, timeout_s: float):
    """One slot of the Prefect global concurrency limit ``name``, held while the body runs. A slot that cannot be
    taken raises :class:`GuardUnavailable` before the body runs. A slot that cannot be given back (the server went
    away meanwhile) is logged, never raised: raising would replace the body's own error (a registry failure would
    read as Prefect's) or fail a body that did its work under the guard; the server frees the slot when its lease
    expires (``GUARD_LEASE_S``)."""
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    held = concurrency(name, occupy=1, timeout_seconds=timeout_s, lease_duration=GUARD_LEASE_S, strict=True)
    try:
        held.__enter__()
    except (ConcurrencySlotAcquisitionError, TimeoutError) as exc:
        cause = " ".join(f"{e!s} ({type(e).__name__})" for e in (exc, exc.__cause__) if e is not None)
        raise GuardUnavailable(
            f"the alias guard, the Prefect global concurrency limit {name!r} on {prefect_server()}, could not be "
            f"taken: {cause[:400]}: nothing was registered or promoted and no alias moved; rerun when the Prefect "
            "server answers (whatever was merged and scored is cached)") from exc
    failed: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        failed = exc
        raise
    finally:
        try:
            held.__exit__(type(failed) if failed else None, failed, failed.__traceback__ if failed else None)
        except Exception as exc:
            if exc is not failed:
                log.warning("the alias guard's slot of %r was not given back (%s: %s); the Prefect server frees it "
                            "when its lease expires, within %d s", name, type(exc).__name__, exc, GUARD_LEASE_S)


@contextmanager
def registry_guard(settings: Settings):
    """Mutual exclusion for registering versions and moving aliases: a file lock (runs on this host) and, whenever a
    Prefect server is configured, its global concurrency limit ``pipeline.mlflow.registry_limit`` (runs on every host
    that shares the Prefect API; :func:`_guard_slot`). ``strict``: a limit that does not exist is an error, never a
    silent no-lock."""
    cfg = settings.pipeline.mlflow
    name = guard_limit(settings)
    with project_lock(settings.work, "registry"):
        if not name:
            yield
            return
        with _guard_slot(name, cfg.registry_limit_timeout_s):
            yield
