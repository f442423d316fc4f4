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
import time
from contextlib import contextmanager
from pathlib import Path

from . import benchmark
from .config import Settings, digest, export_env, mlflow_env
from .errors import PipelineError
from .gate import CANDIDATE, CHAMPION, decide  # noqa: F401  (re-exported: the alias names)
from .records import ChampionRecord, Decision, FetchedSource, Lineage, Registration


class RegistryUnavailable(PipelineError):
    """The MLflow tracking/registry server cannot be reached (transient) or refused the request (permanent)."""


class ChampionMoved(PipelineError):
    """A concurrent run moved the champion to a version scored on another benchmark: nothing to compare with."""

    permanent = True


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
    """The existing version with this identity (reruns reuse it instead of uploading and registering a duplicate):
    a registry search on the version tag, not a scan."""
    from mlflow.exceptions import MlflowException

    try:
        versions = c.search_model_versions(f"name = '{name}' AND tags.`pico.identity` = '{identity(lineage)}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return min(versions, key=lambda v: int(v.version)) if versions else None


def run_tags(lineage: Lineage) -> dict[str, str]:
    """The run's tags: MLflow's context providers (user, source name and type, git repo and commit of the code that
    runs) plus ours; the git commit is the project's, the one in the lineage, when it is known."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = {"pico.merge_key": lineage.merge_key}
    if lineage.git.commit:
        tags["mlflow.source.git.commit"] = lineage.git.commit
    return resolve_tags(tags)


def score_metrics(scores: dict[str, float], stderr: dict[str, float] | None = None) -> dict[str, float]:
    """``score.<task>``, ``score.mean`` and, when the benchmark reports them, ``score.<task>.stderr``."""
    out = {f"score.{k}": v for k, v in scores.items()}
    out["score.mean"] = sum(scores.values()) / len(scores)
    out.update({f"score.{k}.stderr": v for k, v in (stderr or {}).items()})
    return out


def serving_signature(generation: dict):
    """The pyfunc's signature: any input (plain prompts or chat requests, tasks/pyfunc_model.py), and per-request
    generation params whose defaults are the benchmark's own settings."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(inputs=None, outputs=None, params=ParamSchema([
        ParamSpec("max_new_tokens", "long", int(generation["max_new_tokens"])),
        ParamSpec("stop", "string", list(generation["stop"]), shape=(-1,)),
        ParamSpec("temperature", "double", 0.0)]))


def log_model(c, exp_id: str, run_id: str, store: Path, base: FetchedSource, lineage: Lineage,
              generation: dict) -> str:
    """The merged adapter as an MLflow logged model of the run: the pyfunc of tasks/pyfunc_model.py (model code plus
    the adapter files; the base is named in its config, never copied), generating as the benchmark did
    (``generation``: chat template, max new tokens, stop strings), with a signature of its per-request params and an
    input example. Client calls only: no global tracking URI, so runs against different stores in one process never
    cross. Returns the model id."""
    import importlib.metadata as md

    import mlflow
    from mlflow.models import Model

    # pinned as installed ("2.13.0+cpu" -> "2.13.0": a local label no index serves)
    reqs = [f"{p}=={md.version(p).partition('+')[0]}" for p in
            ("mlflow", "torch", "transformers", "peft", "safetensors")]
    recipe = lineage.recipe
    model = c.create_logged_model(
        exp_id, name="model", source_run_id=run_id,
        tags={"pico.identity": identity(lineage), "pico.merge_key": lineage.merge_key,
              "eval.fingerprint": lineage.eval.fingerprint,
              "output.sha256": lineage.output.files["adapter_model.safetensors"]},
        params={"method": recipe["method"], "space": recipe["space"], "calibrate": recipe["calibrate"],
                "recipe_hash": lineage.recipe_hash, "sources": ",".join(s.name for s in lineage.sources)})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pyfunc.save_model(
                Path(tmp) / "model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"adapter": str(store)}, pip_requirements=reqs,
                mlflow_model=Model(run_id=run_id, model_id=model.model_id, artifact_path=model.artifact_location),
                signature=serving_signature(generation),
                input_example=([generation.get("example") or "Hello!"],
                               {"max_new_tokens": int(generation["max_new_tokens"])}),
                model_config={"base_model": base.path, "base_uri": base.uri, "base_revision": base.revision,
                              "base_sha256": base.sha256, "dtype": "float32", "device": "auto",
                              **{k: generation[k] for k in ("apply_chat_template", "chat_template", "max_new_tokens",
                                                            "stop")}})
            c.log_model_artifacts(model.model_id, str(Path(tmp) / "model"))
    except BaseException:
        c.finalize_logged_model(model.model_id, "FAILED")
        raise
    c.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def _registry_sees(settings: Settings):
    """MLflow's SQL registry store resolves a ``models:/<model_id>`` source through the *global* tracking URI, not the
    client's (its own TODO in ``SqlAlchemyStore.create_model_version``, MLflow 3.17): with an embedded store, point
    the global URI at this store for that one call and put it back (MLflow's own helper for exactly this). A tracking
    server resolves it on its side. MLflow mirrors its global URI into the ``MLFLOW_TRACKING_URI`` environment
    variable (and unsets it when it restores "no URI"), which the pipeline's settings read: that variable is put back
    exactly as it was, so no later run in this process is pointed at this store (or loses a user's setting)."""
    import contextlib

    if not settings.local_tracking:
        return contextlib.nullcontext()
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    @contextlib.contextmanager
    def scoped():
        saved = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            with _use_tracking_uri(settings.tracking_uri):
                yield
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved

    return scoped()


def _upload(c, run_id: str, artifacts: dict[str, Path | dict | str]) -> None:
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


def register(settings: Settings, *, lineage: Lineage, store: Path, base: FetchedSource, params: dict,
             metrics: dict, stderr: dict[str, float] | None = None,
             artifacts: dict[str, Path | dict | str]) -> Registration:
    """Log the night as a run (system tags from MLflow's context providers, params, metrics, lineage tags); when no
    version with this identity exists yet, upload the artifacts, log the loadable model with its score metrics and
    register it; otherwise upload nothing and point the run at the existing version."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.model_name
    try:
        exp_id = ensure_experiment(c, settings)
        existing = find_version(c, name, lineage)
        run = c.create_run(exp_id, run_name=f"nightly-{lineage.merge_key[:8]}", tags=run_tags(lineage))
        run_id = run.info.run_id
    except Exception as exc:
        raise _unavailable(settings, exc, "creating the run") from exc
    tags = lineage_tags(lineage)
    scores = score_metrics(lineage.eval.scores, stderr)
    try:
        flat = _flatten("", params, {})
        items = [Param(k[:250], "null" if v is None else str(v)[:6000]) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):
            c.log_batch(run_id, params=items[i:i + 100])
        now = int(time.time() * 1000)
        run_only = {k: v for k, v in metrics.items() if k not in scores}
        c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(run_only.items())],
                    tags=[RunTag(k, v) for k, v in tags.items()])
        model_id = None
        if existing is None:
            _upload(c, run_id, artifacts)
            if settings.pipeline.mlflow.log_adapter:
                model_id = log_model(c, exp_id, run_id, store, base, lineage, benchmark.generation(settings, base.path))
                source = f"models:/{model_id}"
            else:
                source = Path(store).as_uri()
        # the scores: on the run, and on the logged model too (so the registry sorts its versions by them)
        c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0, model_id=model_id) for k, v in sorted(scores.items())])
        try:
            c.create_registered_model(name, description="Nightly pico merges of the team's adapters")
        except MlflowException:
            pass  # exists (possibly created by a concurrent run)
        recipe = lineage.recipe
        with registry_guard(settings):  # concurrent identical runs share one version
            existing = existing or find_version(c, name, lineage)
            if existing is not None:
                version, reused = existing, True
                c.set_tag(run_id, "pico.reused_version", existing.version)
            else:
                with _registry_sees(settings):
                    version = c.create_model_version(name, source=source, run_id=run_id, tags=tags,
                                                     model_id=model_id,
                                                     description=f"{recipe['method']} / {recipe['space']} / "
                                                                 f"calibrate={recipe['calibrate']} of "
                                                                 + ", ".join(s.name for s in lineage.sources))
                reused = False
        c.set_terminated(run_id, "FINISHED")
        artifact_uri = c.get_run(run_id).info.artifact_uri
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


@contextmanager
def registry_guard(settings: Settings):
    """Mutual exclusion for registering versions and moving aliases: a file lock (runs on this host) and, when
    ``pipeline.mlflow.registry_limit`` names one, the Prefect global concurrency limit (runs on every host that
    shares the Prefect API). ``strict``: a limit that does not exist is an error, never a silent no-lock."""
    from . import dvcio

    cfg = settings.pipeline.mlflow
    with dvcio.project_lock(settings.work, "registry"):
        if not cfg.registry_limit:
            yield
            return
        from prefect.concurrency.sync import concurrency

        with concurrency(cfg.registry_limit, occupy=1, timeout_seconds=cfg.registry_limit_timeout_s, strict=True):
            yield


def get_alias(c, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote(settings: Settings, version: str, scores: dict[str, float], fingerprint: str,
            champion: ChampionRecord | None, verdict=None) -> Decision:
    """Move ``champion`` to ``version`` if it passes the gate, else ``candidate``; record why on the version.

    ``champion`` is the champion as read earlier, with its scores on this benchmark (None: no champion). Under the
    lock the alias is read again: if a concurrent run moved it meanwhile, the gate compares against the new champion
    (its recorded scores, when it was scored on this same benchmark; otherwise the step fails and nothing moves).
    ``verdict``: the paired test against ``champion`` (:func:`tasks.gate.judge`), decisive instead of the means; it
    needs that champion's per-sample outcomes, so if the champion moved meanwhile the step fails and nothing moves."""
    c = client(settings)
    name = settings.model_name
    with registry_guard(settings):
        try:
            current = get_alias(c, name, CHAMPION)
            if current is None:
                champion = None
            elif champion is None or str(current.version) != champion.version:
                if verdict is not None and str(current.version) != str(version):
                    raise ChampionMoved(f"the champion of {name} moved to v{current.version} during this run; rerun "
                                        "to compare against it (no alias moved)")
                got = version_scores(current)
                if got is None or got[2] != fingerprint:
                    raise ChampionMoved(f"the champion of {name} moved to v{current.version} during this run and was "
                                        "scored on another benchmark; rerun to compare against it (no alias moved)")
                champion = ChampionRecord(version=str(current.version), scores=got[0], mean=got[1],
                                          fingerprint=got[2])
            decision = decide(version, scores, champion, settings.pipeline.gate, verdict)
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


def adapter_dir(local: Path) -> Path:
    """The adapter files inside a downloaded version: the pyfunc model's ``adapter`` artifact (its path from the
    MLmodel file), or, for versions registered before the model was logged, the folder itself."""
    import yaml

    local = Path(local)
    if not (local / "MLmodel").is_file():
        return local
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    return local / flavor["artifacts"]["adapter"]["path"]


def files_uri(c, source: str) -> str:
    """Where a version's files are: for a ``models:/<model_id>`` source its logged model's artifact location
    (resolved through this client, never through MLflow's global registry URI), else the source itself."""
    if str(source).startswith("models:/m-"):
        return c.get_logged_model(source[len("models:/"):]).artifact_location
    return source


def download_version(settings: Settings, source: str, dest: Path) -> Path:
    """The adapter files of a model version (its source), downloaded once into ``dest``."""
    import mlflow.artifacts

    if not (dest / "adapter_model.safetensors").is_file():
        uri = files_uri(client(settings), source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent))
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp),
                                                    tracking_uri=settings.tracking_uri)
        adapter_dir(Path(local)).rename(dest) if not dest.exists() else None
    return dest


MEAN_METRIC = "score.mean"


def model_id(version) -> str | None:
    """The logged model a version was registered from (the SQLite registry leaves ``model_id`` empty; the source
    ``models:/<model_id>`` names it)."""
    if getattr(version, "model_id", None):
        return version.model_id
    return version.source[len("models:/"):] if str(version.source).startswith("models:/m-") else None


def leaderboard(settings: Settings, limit: int = 10, fingerprint: str | None = None) -> list[dict]:
    """Registered versions by mean score (best first), with their aliases; only those scored on ``fingerprint``'s
    benchmark when given (scores on different benchmarks do not compare). Read through MLflow's searches: the logged
    models ordered by their ``score.mean`` metric, filtered on the benchmark tag, and the versions made from them."""
    c = client(settings)
    name = settings.model_name
    exp = c.get_experiment_by_name(settings.pipeline.mlflow.experiment)
    if exp is None:
        return []
    bench = f"tags.`eval.fingerprint` = '{fingerprint}'" if fingerprint else None
    models = c.search_logged_models([exp.experiment_id], filter_string=bench,
                                    order_by=[{"field_name": f"metrics.{MEAN_METRIC}", "ascending": False}])
    found = c.search_model_versions(f"name = '{name}'" + (f" AND {bench}" if bench else ""))
    versions = {model_id(v): v for v in found if model_id(v)}
    try:
        aliases = dict(c.get_registered_model(name).aliases or {})
    except Exception:
        aliases = {}
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for m in models:
        v = versions.get(m.model_id)
        metrics = {x.key: x.value for x in m.metrics or []}
        if v is None or MEAN_METRIC not in metrics:
            continue
        scores = {k[len("score."):]: val for k, val in metrics.items()
                  if k.startswith("score.") and k != MEAN_METRIC and not k.endswith(".stderr")}
        rows.append({"version": str(v.version), "mean": metrics[MEAN_METRIC], "scores": scores,
                     "aliases": sorted(by_version.get(str(v.version), [])),
                     "recipe": json.loads(v.tags.get("recipe", "{}")), "fingerprint": v.tags.get("eval.fingerprint"),
                     "mean_stderr": metrics.get(f"{MEAN_METRIC}.stderr", v.tags.get("eval.mean_stderr")),
                     "label": v.tags.get("search.chosen")})
    rows.sort(key=lambda r: (-r["mean"], int(r["version"])))
    return rows[:limit]
