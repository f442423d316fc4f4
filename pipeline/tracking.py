"""MLflow records of the search and the statistical gate, beside the night's run (``pipeline.registry.register``).

* one nested child run per candidate (``mlflow.parentRunId``): its recipe as params, validation scores and their
  stderr as metrics, the merge key and whether it was chosen as tags;
* on the night's run: the per-sample test outcomes of the chosen merge and of the champion as an MLflow table
  (``outcomes.json``, one row per model, task and item), the search summary, the gate's statistics;
* on the registered version: the chosen recipe's label, why it was chosen, the runner-up and the margin.
"""

from __future__ import annotations

import json
import time

from .settings import Settings
from .promotion import _flatten, _unavailable, client, ensure_experiment


def log_candidates(settings: Settings, parent_run_id: str, search: dict) -> list[str]:
    """One child run per candidate under the night's run. Returns the child run ids (candidate order)."""
    from mlflow.entities import Metric, Param, RunTag

    c = client(settings)
    ids = []
    try:
        exp_id = ensure_experiment(c, settings)
        now = int(time.time() * 1000)
        chosen = search["chosen"]["key"]
        for r in sorted(search["records"], key=lambda r: r["index"]):
            run = c.create_run(exp_id, run_name=f"candidate-{r['index']:02d} {r['label']}"[:250],
                               tags={"mlflow.parentRunId": parent_run_id, "pico.candidate": r["label"],
                                     "pico.merge_key": r["merge_key"], "pico.chosen": str(r["key"] == chosen).lower(),
                                     "mlflow.source.name": "flows.search"})
            v = r["validation"]
            metrics = {f"val.{t}": s for t, s in v["scores"].items()}
            metrics.update({f"val.{t}_stderr": s for t, s in (v.get("stderr") or {}).items() if s == s})
            metrics["val.mean"] = v["mean"]
            if v.get("mean_stderr") is not None:
                metrics["val.mean_stderr"] = v["mean_stderr"]
            metrics.update({"time.merge_s": r.get("merge_s", 0.0), "time.score_s": r.get("score_s", 0.0)})
            params = _flatten("recipe", r["recipe"], {})
            c.log_batch(run.info.run_id, metrics=[Metric(k, float(x), now, 0) for k, x in sorted(metrics.items())],
                        params=[Param(k[:250], "null" if x is None else str(x)[:6000])
                                for k, x in sorted(params.items())],
                        tags=[RunTag("pico.candidate_index", str(r["index"]))])
            c.set_terminated(run.info.run_id, "FINISHED")
            ids.append(run.info.run_id)
    except Exception as exc:
        raise _unavailable(settings, exc, "logging the candidates") from exc
    return ids


def log_night(settings: Settings, run_id: str, *, outcomes_table: dict | None, search: dict | None,
              gate: dict | None) -> None:
    """The outcomes table, the search summary and the gate's statistics on the night's run."""

    from .promotion import configure

    configure(settings)
    c = client(settings)
    try:
        if outcomes_table and outcomes_table.get("item"):
            # through the client: mlflow.set_tracking_uri would also set MLFLOW_TRACKING_URI for the whole process
            c.log_table(run_id, data=outcomes_table, artifact_file="outcomes.json")
        if search is not None:
            summary = {"chosen": search["chosen"]["label"], "why": search["why"], "margin": search["margin"],
                       "runner_up": search["runner_up"]["label"] if search["runner_up"] else None,
                       "candidates": [{"index": r["index"], "label": r["label"], "recipe": r["recipe"],
                                       "validation": {k: r["validation"][k] for k in
                                                      ("scores", "stderr", "mean", "mean_stderr", "n")}}
                                      for r in sorted(search["records"], key=lambda r: r["index"])]}
            c.log_dict(run_id, summary, "search.json")
        if gate is not None:
            c.log_dict(run_id, gate, "gate.json")
    except Exception as exc:
        raise _unavailable(settings, exc, "logging the search and gate records") from exc


def tag_version(settings: Settings, version: str, tags: dict[str, str]) -> None:
    c = client(settings)
    name = settings.model_name
    try:
        for k, v in tags.items():
            c.set_model_version_tag(name, version, k, str(v)[:4900])
    except Exception as exc:
        raise _unavailable(settings, exc, "tagging the version") from exc


def search_tags(search: dict | None, test) -> dict[str, str]:
    """The registered version's record of why this recipe: chosen on validation, the runner-up and the margin."""
    tags = {}
    if search is not None:
        tags = {"search.chosen": search["chosen"]["label"], "search.why": search["why"],
                "search.candidates": str(len(search["records"])),
                "search.validation_mean": f"{search['chosen']['validation']['mean']:.6f}"}
        if search["runner_up"] is not None:
            tags["search.runner_up"] = search["runner_up"]["label"]
            tags["search.runner_up_margin"] = f"{search['margin']:.6f}"
    if test.mean_stderr is not None:
        tags["eval.mean_stderr"] = f"{test.mean_stderr:.6f}"
        tags["eval.stderr"] = json.dumps(test.stderr, sort_keys=True)
    return tags


def run_url(settings: Settings, experiment_id: str, run_id: str) -> str:
    """A link to the run in the MLflow UI (a local store: where `mlflow ui` serves it by default)."""
    uri = settings.tracking_uri
    ui = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"
