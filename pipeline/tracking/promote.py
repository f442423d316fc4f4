"""The champion, gated promotion and the leaderboard, read and moved through MLflow's registry.

Aliases move only in :func:`promote`, under the registry guard, after every earlier step succeeded: a failed step
never moves an alias. The decision itself is :func:`pipeline.gate.decide` (pure).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PipelineError
from ..gate import CHAMPION, decide
from ..merging import store_dir, verify_dir
from ..records import ChampionRecord, Decision, Verdict
from ..settings import Settings
from .client import client, registry_errors, registry_guard
from .models import download_version, model_id

MEAN_METRIC = "score.mean"


class ChampionMoved(PipelineError):
    """A concurrent run moved the champion to a version scored on another benchmark: nothing to compare with."""

    permanent = True


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


def champion_record(settings: Settings) -> ChampionRecord | None:
    """The current champion: version, scores and benchmark fingerprint from its tags, and its artifact source."""
    c = client(settings)
    with registry_errors(settings, "reading the champion"):
        v = get_alias(c, settings.model_name, CHAMPION)
    if v is None:
        return None
    got = version_scores(v)
    scores, mean, fingerprint = got if got else ({}, float("nan"), "")
    return ChampionRecord(version=str(v.version), scores=scores, mean=mean, fingerprint=fingerprint,
                          source=v.source, run_id=v.run_id, merge_key=v.tags.get("pico.merge_key"))


def champion_adapter(settings: Settings, champ: ChampionRecord) -> Path:
    """The champion's merged adapter: from the local store (same merge key, verified) or from MLflow."""
    if champ.merge_key:
        local = store_dir(settings, champ.merge_key)
        if verify_dir(local) is not None:
            return local
    dest = settings.work / "registry-cache" / f"v{champ.version}-{(champ.merge_key or 'x')[:12]}"
    return download_version(settings, str(champ.source), dest)


def promote(settings: Settings, version: str, scores: dict[str, float], fingerprint: str,
            champion: ChampionRecord | None, verdict: Verdict | None = None) -> Decision:
    """Move ``champion`` to ``version`` if it passes the gate, else ``candidate``; record why on the version.

    ``champion`` is the champion as read earlier, with its scores on this benchmark (None: no champion). Under the
    lock the alias is read again: if a concurrent run moved it meanwhile, the gate compares against the new champion
    (its recorded scores, when it was scored on this same benchmark; otherwise the step fails and nothing moves).
    ``verdict``: the paired test against ``champion`` (:func:`pipeline.gate.judge`), decisive instead of the means; it
    needs that champion's per-sample outcomes, so if the champion moved meanwhile the step fails and nothing moves."""
    c = client(settings)
    name = settings.model_name
    with registry_guard(settings), registry_errors(settings, "promoting"):
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
            champion = ChampionRecord(version=str(current.version), scores=got[0], mean=got[1], fingerprint=got[2])
        decision = decide(version, scores, champion, settings.pipeline.gate, verdict)
        if not decision.unchanged:  # a rerun keeps the original decision's record
            c.set_registered_model_alias(name, decision.alias, version)
            c.set_model_version_tag(name, version, "promotion", decision.alias)
            c.set_model_version_tag(name, version, "promotion.reason", "; ".join(decision.reasons)[:4900])
    return decision


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
