"""The night's MLflow run: params, metrics, tags and artifacts, the registered model version (no re-upload of an
identical one), one nested child run per search candidate, the per-sample outcomes table and the gate's statistics.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import yaml

from ..evaluation import generation
from ..merging import diagnostics, plot_diagnostics
from ..records import EvalResult, Evaluation, FetchedSource, Lineage, MergeResult, Registration, SearchResult
from ..render import recipe_summary
from ..settings import Settings
from .client import client, ensure_experiment, params, registry_errors, registry_guard
from .lineage import lineage_tags
from .models import find_version, log_model, registry_sees


def score_metrics(result: EvalResult) -> dict[str, float]:
    """``score.<task>``, ``score.mean`` and, when the benchmark reports them, ``score.<task>.stderr``: on the run and
    on the logged model (so the registry sorts its versions by them)."""
    out = {f"score.{k}": v for k, v in result.scores.items()}
    out["score.mean"] = result.mean
    out.update({f"score.{k}.stderr": v for k, v in result.stderr.items() if v == v})
    return out


def run_metrics(ev: Evaluation, found: SearchResult | None, timings: dict[str, float]) -> dict[str, float]:
    """The run's own metrics: the mean's stderr, the baselines, the champion, the search, the gate, the timings."""
    metrics = {} if ev.merged.mean_stderr is None else {"score.mean.stderr": ev.merged.mean_stderr}
    metrics.update({f"baseline.{b.label}.mean": b.mean for b in ev.baselines})
    if ev.champion is not None:
        metrics["champion.mean"] = ev.champion.mean
    metrics.update({f"time.{k}_s": v for k, v in timings.items()})
    if found is not None:
        metrics.update({"search.candidates": len(found.records), "search.cached": found.cached,
                        "search.validation_mean": found.chosen.validation.mean})
        if found.margin is not None:
            metrics["search.runner_up_margin"] = found.margin
    if ev.verdict is not None and ev.verdict.comparison is not None:
        c = ev.verdict.comparison
        metrics.update({"gate.gain": c.gain, "gate.gain_stderr": c.gain_stderr, "gate.p_gain": c.p_gain})
        if c.ci_low is not None and c.ci_high is not None:
            metrics.update({"gate.gain_ci_low": c.ci_low, "gate.gain_ci_high": c.ci_high})
    return metrics


# settings never sent to the tracking server: where notifications go (a block's name; a URL would carry a token)
REDACTED = ("notify",)


def redacted(obj):
    """``obj`` (params.yaml as read) without any key named in :data:`REDACTED`, at any depth."""
    if isinstance(obj, dict):
        return {k: redacted(v) for k, v in obj.items() if k not in REDACTED}
    if isinstance(obj, list):
        return [redacted(v) for v in obj]
    return obj


def params_artifact(path: Path) -> str:
    """config/params.yaml of the run: the file the night read, less its notify settings (:func:`redacted`)."""
    data = redacted(yaml.safe_load(path.read_text()) or {})
    return (f"# {path.name} as the night read it, less its notification settings (pipeline/tracking/runs.py)\n"
            + yaml.safe_dump(data, sort_keys=False))


def run_params(settings: Settings, merged: MergeResult) -> dict:
    """The run's params (flattened): the recipe, the catalog, the benchmark and gate settings; never the notify
    settings (:data:`REDACTED`)."""
    p = settings.pipeline
    return redacted({"merge": settings.merge, "recipe_hash": merged.manifest["recipe_hash"],
                     "catalog": [e.to_dict() for e in settings.catalog.adapters], "eval": p.eval.model_dump(),
                     "gate": p.gate.model_dump(), "task_runner": p.task_runner.kind, "dtype": p.dtype,
                     "merge_key": merged.key})


def run_artifacts(settings: Settings, merged: MergeResult, ev: Evaluation,
                  lineage: Lineage) -> dict[str, Path | dict | str]:
    """The run's artifacts: the manifest, per-layer diagnostics (JSON and a plot), evaluations, lineage, config."""
    plot = plot_diagnostics(merged.manifest, settings.work / "plots" / f"{merged.key[:16]}.png")
    return {"merge_manifest.json": Path(merged.store) / "merge_manifest.json",
            "diagnostics.json": diagnostics(merged.manifest), "plots/diagnostics.png": plot,
            "eval.json": {"merged": ev.merged.model_dump(), "baselines": [b.model_dump() for b in ev.baselines],
                          "champion": ev.champion.model_dump() if ev.champion else None},
            "lineage.json": lineage.to_json(), "config/params.yaml": params_artifact(settings.params_path),
            "config/catalog.yaml": settings.catalog.path,
            **({"plots/loss_curve.png": Path(merged.store) / "loss_curve.png"}  # a learned merge's training curve
               if (Path(merged.store) / "loss_curve.png").is_file() else {})}


def run_tags(lineage: Lineage) -> dict[str, str]:
    """The run's tags: MLflow's context providers (user, source name and type, git repo and commit of the code that
    runs) plus ours; the git commit is the project's, the one in the lineage, when it is known."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = {"pico.merge_key": lineage.merge_key}
    if lineage.git.commit:
        tags["mlflow.source.git.commit"] = lineage.git.commit
    return resolve_tags(tags)


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


def register(settings: Settings, lineage: Lineage, merged: MergeResult, base: FetchedSource, ev: Evaluation,
             found: SearchResult | None, timings: dict[str, float]) -> Registration:
    """Log the night as a run (system tags from MLflow's context providers, params, metrics, lineage tags); when no
    version with this identity exists yet, upload the artifacts, log the loadable model with its score metrics and
    register it; otherwise upload nothing and point the run at the existing version."""
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.model_name
    with registry_errors(settings, "creating the run"):
        exp_id = ensure_experiment(c, settings)
        existing = find_version(c, name, lineage)
        run_id = c.create_run(exp_id, run_name=f"nightly-{lineage.merge_key[:8]}", tags=run_tags(lineage)).info.run_id
    tags = lineage_tags(lineage)
    try:
        with registry_errors(settings, "registering"):
            items = params(run_params(settings, merged))
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
                c.log_batch(run_id, params=items[i:i + 100])
            now = int(time.time() * 1000)
            c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in
                                         sorted(run_metrics(ev, found, timings).items())],
                        tags=[RunTag(k, v) for k, v in tags.items()])
            model_id = None
            if existing is None:
                _upload(c, run_id, run_artifacts(settings, merged, ev, lineage))
                if settings.pipeline.mlflow.log_adapter:
                    model_id = log_model(c, exp_id, run_id, Path(merged.store), base, lineage,
                                         generation(settings, base.path), settings.pipeline.mlflow.torch_index)
                    source = f"models:/{model_id}"
                else:
                    source = Path(merged.store).as_uri()
            c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0, model_id=model_id)
                                         for k, v in sorted(score_metrics(ev.merged).items())])
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
                    with registry_sees(settings):
                        version = c.create_model_version(
                            name, source=source, run_id=run_id, tags=tags, model_id=model_id,
                            description=f"{recipe_summary(recipe)} of "
                                        + ", ".join(s.name for s in lineage.sources))
                    reused = False
            c.set_terminated(run_id, "FINISHED")
            artifact_uri = c.get_run(run_id).info.artifact_uri
    except BaseException:
        try:
            c.set_terminated(run_id, "FAILED")
        except Exception:
            pass
        raise
    return Registration(run_id=run_id, experiment_id=exp_id, model=name, version=str(version.version),
                        reused=reused, artifact_uri=artifact_uri)


def log_candidates(settings: Settings, parent_run_id: str, found: SearchResult) -> list[str]:
    """One child run per candidate under the night's run. Returns the child run ids (candidate order)."""
    from mlflow.entities import Metric, RunTag

    c = client(settings)
    ids = []
    with registry_errors(settings, "logging the candidates"):
        exp_id = ensure_experiment(c, settings)
        now = int(time.time() * 1000)
        for r in sorted(found.records, key=lambda r: r.index):
            run = c.create_run(exp_id, run_name=f"candidate-{r.index:02d} {r.label}"[:250],
                               tags={"mlflow.parentRunId": parent_run_id, "pico.candidate": r.label,
                                     "pico.merge_key": r.merge_key,
                                     "pico.chosen": str(r.key == found.chosen.key).lower(),
                                     "mlflow.source.name": "flows.nightly"})
            v = r.validation
            metrics = {f"val.{t}": s for t, s in v.scores.items()}
            metrics.update({f"val.{t}_stderr": s for t, s in v.stderr.items() if s == s})
            metrics["val.mean"] = v.mean
            if v.mean_stderr is not None:
                metrics["val.mean_stderr"] = v.mean_stderr
            metrics.update({"time.merge_s": r.merge_s, "time.score_s": r.score_s})
            curve = []
            if r.training:  # a learned merge: its training cost and curve (the loss per step)
                metrics.update({"time.learn_prepare_s": r.training["seconds_prepare"],
                                "time.learn_train_s": r.training["seconds_train"],
                                "learn.steps": r.training["steps"]})
                curve = [Metric("learn.loss", float(x), now, i) for i, x in enumerate(r.training["loss"])]
            c.log_batch(run.info.run_id, metrics=[Metric(k, float(x), now, 0) for k, x in sorted(metrics.items())]
                        + curve, params=params(r.recipe, "recipe"),
                        tags=[RunTag("pico.candidate_index", str(r.index)), RunTag("pico.kind", r.kind)])
            plot = Path(r.store) / "loss_curve.png"
            if r.training and plot.is_file():
                c.log_artifact(run.info.run_id, str(plot), "plots")
            c.set_terminated(run.info.run_id, "FINISHED")
            ids.append(run.info.run_id)
    return ids


def outcomes_table(models: dict[str, EvalResult]) -> dict[str, list]:
    """Per-sample outcomes of several models as one column-oriented table (for ``mlflow.log_table``)."""
    cols: dict[str, list] = {"model": [], "task": [], "item": [], "outcome": []}
    for model, rec in models.items():
        for task, items in sorted((rec.outcomes or {}).items()):
            for item, value in sorted(items.items()):
                cols["model"].append(model)
                cols["task"].append(task)
                cols["item"].append(item)
                cols["outcome"].append(value)
    return cols


def search_tags(found: SearchResult | None, test: EvalResult) -> dict[str, str]:
    """The registered version's record of why this recipe: chosen on validation, the runner-up and the margin."""
    tags = {}
    if found is not None:
        tags = {"search.chosen": found.chosen.label, "search.why": found.why,
                "search.candidates": str(len(found.records)),
                "search.validation_mean": f"{found.chosen.validation.mean:.6f}"}
        if found.runner_up is not None:
            tags["search.runner_up"] = found.runner_up.label
            tags["search.runner_up_margin"] = f"{found.margin:.6f}"
    if test.mean_stderr is not None:
        tags["eval.mean_stderr"] = f"{test.mean_stderr:.6f}"
        tags["eval.stderr"] = json.dumps(test.stderr, sort_keys=True)
    return tags


def record_search_and_gate(settings: Settings, registered: Registration, ev: Evaluation,
                           found: SearchResult | None) -> None:
    """Child runs per candidate; the outcomes table, the search summary and the gate's statistics on the night's
    run; the search's tags on the version (on a reused version only those it lacks: the night that registered it
    may have died before writing them, e.g. SIGKILLed right after registering)."""
    if found is not None:
        log_candidates(settings, registered.run_id, found)
    models = {"merged": ev.merged}
    if ev.champion is not None and ev.champion_eval is not None:
        models[f"champion v{ev.champion.version}"] = ev.champion_eval
    table = outcomes_table(models)
    c = client(settings)
    with registry_errors(settings, "logging the search and gate records"):
        if table["item"]:
            # through the client: mlflow.set_tracking_uri would also set MLFLOW_TRACKING_URI for the whole process
            c.log_table(registered.run_id, data=table, artifact_file="outcomes.json")
        if found is not None:
            c.log_dict(registered.run_id, {
                "chosen": found.chosen.label, "why": found.why, "margin": found.margin,
                "runner_up": found.runner_up.label if found.runner_up else None,
                "candidates": [{"index": r.index, "label": r.label, "recipe": r.recipe,
                                "validation": r.validation.model_dump(exclude={"outcomes"})}
                               for r in sorted(found.records, key=lambda r: r.index)]}, "search.json")
        if ev.verdict is not None:
            c.log_dict(registered.run_id, ev.verdict.model_dump(), "gate.json")
        tags = search_tags(found, ev.merged)
        if tags and registered.reused:  # its own night's record stands; what that night never wrote is added
            have = c.get_model_version(settings.model_name, registered.version).tags
            tags = {k: v for k, v in tags.items() if k not in have}
        for k, v in tags.items():
            c.set_model_version_tag(settings.model_name, registered.version, k, str(v)[:4900])


def run_url(settings: Settings, experiment_id: str, run_id: str) -> str:
    """A link to the run in the MLflow UI (a local store: where `mlflow ui` serves it by default)."""
    uri = settings.tracking_uri
    ui = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"
