"""MLflow I/O of the nightly run: the run record, the registered model version with its lineage, the champion, and
gated promotion (the policy itself is :mod:`tasks.gate`, pure).

Embedded default: a SQLite backend store and a local artifact folder under build/mlflow (``pipeline.mlflow``);
``MLFLOW_TRACKING_URI`` points everything at any tracking server instead.  HTTP retries are capped
(``pipeline.mlflow.http_retries``) so an unreachable server fails the step in seconds with a clear message instead of
retrying for minutes.  Aliases move only in :func:`promote`, under a project lock, after every earlier step
succeeded: a failed step never moves an alias.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .config import Settings, digest
from .errors import PipelineError
from .gate import CANDIDATE, CHAMPION, decide  # noqa: F401  (re-exported: the alias names)
from .records import ChampionRecord, Decision, Lineage, Registration


class RegistryUnavailable(PipelineError):
    """The MLflow tracking/registry server cannot be reached (transient) or refused the request (permanent)."""


class ChampionMoved(PipelineError):
    """A concurrent run moved the champion to a version scored on another benchmark: nothing to compare with."""

    permanent = True


def configure(settings: Settings) -> str:
    mcfg = settings.pipeline.mlflow
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(mcfg.http_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(mcfg.http_timeout_s))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def client(settings: Settings):
    from mlflow.tracking import MlflowClient

    uri = configure(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}


def _chain(exc: BaseException):
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


def _unavailable(settings: Settings, exc: Exception, what: str) -> RegistryUnavailable:
    from mlflow.exceptions import MlflowException

    text = " ".join(str(exc).split())[:400] if str(exc) else type(exc).__name__
    down = unreachable(exc)
    code = exc.error_code if isinstance(exc, MlflowException) else None
    state = "is unreachable" if down else "refused the request"
    return RegistryUnavailable(f"MLflow at {settings.tracking_uri} {state} ({what}): {text}. Nothing was "
                               "promoted and no alias moved" + ("; start the server or fix MLFLOW_TRACKING_URI, then "
                                                                "rerun (merge and eval results are cached)" if down
                                                                else ""),
                               permanent=not down and code not in _TRANSIENT_CODES)


def preflight(settings: Settings) -> str:
    """Fail fast, before the merge, when the tracking server is down. Returns the experiment id."""
    try:
        return ensure_experiment(client(settings), settings)
    except RegistryUnavailable:
        raise
    except Exception as exc:
        raise _unavailable(settings, exc, "connecting") from exc


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

def _flatten(prefix: str, obj, out: dict) -> dict:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj if isinstance(obj, (int, float, str, bool)) or obj is None else json.dumps(obj)
    return out


def lineage_tags(lineage: Lineage) -> dict[str, str]:
    """The model version's tags: flat, greppable, each under MLflow's 5000-character limit."""
    lineage = lineage.to_json()
    tags = {
        "pico.version": lineage["pico_version"],
        "pico.merge_key": lineage["merge_key"],
        "pico.identity": _identity(lineage),
        "recipe.hash": lineage["recipe_hash"],
        "recipe": json.dumps(lineage["recipe"], sort_keys=True),
        "git.commit": lineage["git"]["commit"] or "none",
        "git.dirty": str(lineage["git"]["dirty"]).lower(),
        "output.sha256": lineage["output"]["files"]["adapter_model.safetensors"],
        "output.config_sha256": lineage["output"]["files"]["adapter_config.json"],
        "output.dvc_md5": (lineage["output"].get("dvc") or {}).get("md5") or "none",
        "output.dvc_path": (lineage["output"].get("dvc") or {}).get("path") or "none",
        "sources": ",".join(s["name"] for s in lineage["sources"]),
        "eval.fingerprint": lineage["eval"]["fingerprint"],
        "eval.mean": f"{lineage['eval']['mean']:.6f}",
        "eval.scores": json.dumps(lineage["eval"]["scores"], sort_keys=True),
    }
    if lineage.get("base"):
        tags["base.sha256"] = lineage["base"]["sha256"]
        tags["base.uri"] = lineage["base"]["uri"]
    for s in lineage["sources"]:
        p = f"source.{s['name']}"
        tags[f"{p}.uri"] = s["uri"]
        tags[f"{p}.revision"] = s["revision"] or "none"
        tags[f"{p}.sha256"] = s["sha256"]
        if s.get("dvc"):
            tags[f"{p}.dvc_md5"] = s["dvc"]["out_md5"]
            tags[f"{p}.dvc_out"] = s["dvc"]["out"]
    for stage, md5s in (lineage.get("dvc_lock") or {}).items():
        tags[f"dvc.lock.{stage}"] = json.dumps(md5s, sort_keys=True)[:4900]
    return {k: str(v)[:4900] for k, v in tags.items()}


def identity(lineage: Lineage) -> str:
    """What makes two runs the same model version: the sources' bytes, the recipe, the output bytes, the benchmark.
    (Not the runner or the device: the same bytes computed elsewhere are the same version.)"""
    return _identity(lineage.to_json())


def _identity(lineage: dict) -> str:
    return digest({"sources": [s["sha256"] for s in lineage["sources"]], "recipe": lineage["recipe_hash"],
                   "output": lineage["output"]["files"], "bench": lineage["eval"]["fingerprint"]})


def find_version(c, name: str, lineage: Lineage):
    """An existing version with this identity (reruns reuse it instead of registering a duplicate)."""
    from mlflow.exceptions import MlflowException

    want = identity(lineage)
    try:
        versions = c.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for v in sorted(versions, key=lambda v: int(v.version)):
        if v.tags.get("pico.identity") == want:
            return v
    return None


def register(settings: Settings, *, lineage: Lineage, store: Path, params: dict, metrics: dict,
             artifacts: dict[str, Path | dict | str]) -> Registration:
    """Log the run (params, metrics, artifacts, the adapter) and create (or reuse) the model version."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.model_name
    try:
        exp_id = ensure_experiment(c, settings)
        run = c.create_run(exp_id, run_name=f"nightly-{lineage.merge_key[:8]}",
                           tags={"pico.merge_key": lineage.merge_key, "mlflow.source.name": "flows.nightly"})
        run_id = run.info.run_id
    except Exception as exc:
        raise _unavailable(settings, exc, "creating the run") from exc
    tags = lineage_tags(lineage)
    try:
        flat = _flatten("", params, {})
        items = [Param(k[:250], "null" if v is None else str(v)[:6000]) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):
            c.log_batch(run_id, params=items[i:i + 100])
        import time

        now = int(time.time() * 1000)
        c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())])
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        with tempfile.TemporaryDirectory() as tmp:
            for rel, content in artifacts.items():
                dest = Path(tmp) / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, Path):
                    dest.write_bytes(content.read_bytes())
                elif isinstance(content, dict):
                    dest.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
                else:
                    dest.write_text(str(content))
            c.log_artifacts(run_id, tmp)
        if settings.pipeline.mlflow.log_adapter:
            c.log_artifacts(run_id, str(store), "adapter")
        artifact_uri = c.get_run(run_id).info.artifact_uri
        try:
            c.create_registered_model(name, description="Nightly pico merges of the team's adapters")
        except MlflowException:
            pass  # exists (possibly created by a concurrent run)
        from . import dvcio

        recipe = lineage.recipe
        with dvcio.project_lock(settings.work, "registry"):  # concurrent identical runs share one version
            existing = find_version(c, name, lineage)
            if existing is not None:
                version, reused = existing, True
                c.set_tag(run_id, "pico.reused_version", existing.version)
            else:
                version = c.create_model_version(name, source=f"{artifact_uri}/adapter", run_id=run_id, tags=tags,
                                                 description=f"{recipe['method']} / {recipe['space']} / calibrate="
                                                             f"{recipe['calibrate']} of "
                                                             + ", ".join(s.name for s in lineage.sources))
                reused = False
        c.set_terminated(run_id, "FINISHED")
    except Exception as exc:
        try:
            c.set_terminated(run_id, "FAILED")
        except Exception:
            pass
        raise _unavailable(settings, exc, "registering") from exc
    return Registration(run_id=run_id, experiment_id=exp_id, model=name, version=str(version.version),
                        reused=reused, artifact_uri=artifact_uri)


def version_scores(v) -> tuple[dict, float, str] | None:
    try:
        return json.loads(v.tags["eval.scores"]), float(v.tags["eval.mean"]), v.tags["eval.fingerprint"]
    except (KeyError, ValueError):
        return None


def get_alias(c, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote(settings: Settings, version: str, scores: dict[str, float], fingerprint: str,
            champion: ChampionRecord | None) -> Decision:
    """Move ``champion`` to ``version`` if it passes the gate, else ``candidate``; record why on the version.

    ``champion`` is the champion as read earlier, with its scores on this benchmark (None: no champion). Under the
    lock the alias is read again: if a concurrent run moved it meanwhile, the gate compares against the new champion
    (its recorded scores, when it was scored on this same benchmark; otherwise the step fails and nothing moves)."""
    from . import dvcio

    c = client(settings)
    name = settings.model_name
    with dvcio.project_lock(settings.work, "registry"):
        try:
            current = get_alias(c, name, CHAMPION)
            if current is None:
                champion = None
            elif champion is None or str(current.version) != champion.version:
                got = version_scores(current)
                if got is None or got[2] != fingerprint:
                    raise ChampionMoved(f"the champion of {name} moved to v{current.version} during this run and was "
                                        "scored on another benchmark; rerun to compare against it (no alias moved)")
                champion = ChampionRecord(version=str(current.version), scores=got[0], mean=got[1],
                                          fingerprint=got[2])
            decision = decide(version, scores, champion, settings.pipeline.gate)
            if not decision.unchanged:  # a rerun keeps the original decision's record
                c.set_registered_model_alias(name, decision.alias, version)
                c.set_model_version_tag(name, version, "promotion", decision.alias)
                c.set_model_version_tag(name, version, "promotion.reason", "; ".join(decision.reasons)[:4900])
        except PipelineError:
            raise
        except Exception as exc:
            raise _unavailable(settings, exc, "promoting") from exc
    return decision


def champion_record(settings: Settings) -> ChampionRecord | None:
    """The current champion: version, scores and benchmark fingerprint from its tags, and its artifact source."""
    c = client(settings)
    try:
        v = get_alias(c, settings.model_name, CHAMPION)
    except Exception as exc:
        raise _unavailable(settings, exc, "reading the champion") from exc
    if v is None:
        return None
    got = version_scores(v)
    scores, mean, fingerprint = got if got else ({}, float("nan"), "")
    return ChampionRecord(version=str(v.version), scores=scores, mean=mean, fingerprint=fingerprint,
                          source=v.source, run_id=v.run_id, merge_key=v.tags.get("pico.merge_key"))


def download_version(settings: Settings, source: str, dest: Path) -> Path:
    """The adapter files of a model version (its artifact source), downloaded once into ``dest``."""
    import mlflow.artifacts

    configure(settings)
    if not (dest / "adapter_model.safetensors").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent))
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp),
                                                    tracking_uri=settings.tracking_uri)
        Path(local).rename(dest) if not dest.exists() else None
    return dest


def leaderboard(settings: Settings, limit: int = 10, fingerprint: str | None = None) -> list[dict]:
    """Registered versions by mean score (best first), with their aliases; only those scored on ``fingerprint``'s
    benchmark when given (scores on different benchmarks do not compare)."""
    c = client(settings)
    name = settings.model_name
    rows = []
    try:
        aliases = dict(c.get_registered_model(name).aliases or {})
    except Exception:
        aliases = {}
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    for v in c.search_model_versions(f"name = '{name}'"):
        got = version_scores(v)
        if got is None or (fingerprint and got[2] != fingerprint):
            continue
        rows.append({"version": str(v.version), "mean": got[1], "scores": got[0],
                     "aliases": sorted(by_version.get(str(v.version), [])),
                     "recipe": json.loads(v.tags.get("recipe", "{}")), "fingerprint": got[2]})
    rows.sort(key=lambda r: (-r["mean"], int(r["version"])))
    return rows[:limit]
