"""Where a merged adapter came from: the lineage of a night (lineage.json of its run), the flat tags a model version
carries, and the identity that makes two nights the same version."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pico.writer import json_digest

from ..records import (
    DvcRecord,
    EvalResult,
    FetchedSource,
    GitInfo,
    Lineage,
    LineageBase,
    LineageEval,
    LineageOutput,
    LineageSource,
    MergeResult,
)
from ..settings import Settings


def _git(project: Path, *args: str) -> str | None:
    proc = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True)
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def git_remote_url(project: Path) -> str | None:
    """The project's ``origin`` remote (where another host clones it from), without credentials: an HTTP(S) URL
    loses its user part (``https://user:token@host/...`` -> ``https://host/...``), any other URL its password
    (``ssh://git@host/...`` keeps ``git@``). None without an origin."""
    url = _git(project, "remote", "get-url", "origin")
    if url and "://" in url:
        scheme, _, rest = url.partition("://")
        host, slash, path = rest.partition("/")
        user, at, host = host.rpartition("@")
        keep = "" if not at or scheme in ("http", "https") else user.partition(":")[0] + "@"
        url = f"{scheme}://{keep}{host}{slash}{path}"
    return url


def git_info(project: Path) -> GitInfo:
    commit = _git(project, "rev-parse", "HEAD")
    # the pipeline's own writes (dvc.lock, kept per night by `dvc exp save`) do not make the tree dirty
    dirty = bool(_git(project, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock")) \
        if commit else None
    return GitInfo(commit=commit, dirty=dirty)


def build_lineage(settings: Settings, fetched: list[FetchedSource], base: FetchedSource, merged: MergeResult,
                  benchmark: dict, result: EvalResult, dvc: DvcRecord) -> Lineage:
    manifest = merged.manifest
    output = LineageOutput(files=manifest["output"]["files"])
    if dvc.enabled:
        output.dvc = {"path": dvc.path, "md5": dvc.md5, "pushed": dvc.pushed, "exp": dvc.exp}
    return Lineage(
        pico_version=manifest["pico_version"], merge_key=merged.key, recipe=manifest["recipe"],
        recipe_hash=manifest["recipe_hash"],
        sources=[LineageSource(**f.model_dump(include={"name", "uri", "path", "revision", "sha256", "files", "dvc"}),
                               prompts=f.prompts if "inputs" in manifest else None)  # learned merges read them
                 for f in fetched],
        base=LineageBase(**base.model_dump(include={"name", "uri", "revision", "sha256"})),
        output=output, git=git_info(settings.project),
        eval=LineageEval(fingerprint=json_digest(benchmark), benchmark=benchmark, scores=result.scores,
                         mean=result.mean),
        project=str(settings.project), dvc_lock=dvc.lock if dvc.enabled else None)


def identity(lineage: Lineage | dict) -> str:
    """What makes two runs the same model version: the sources' bytes, the recipe, the output bytes, the benchmark.
    (Not the runner or the device: the same bytes computed elsewhere are the same version.)"""
    lin = lineage.to_json() if isinstance(lineage, Lineage) else lineage
    return json_digest({"sources": [s["sha256"] for s in lin["sources"]], "recipe": lin["recipe_hash"],
                        "output": lin["output"]["files"], "bench": lin["eval"]["fingerprint"]})


def lineage_tags(lineage: Lineage) -> dict[str, str]:
    """The model version's tags: flat, greppable, each under MLflow's 5000-character limit."""
    lin = lineage.to_json()
    tags = {
        "pico.version": lin["pico_version"],
        "pico.merge_key": lin["merge_key"],
        "pico.identity": identity(lin),
        "recipe.hash": lin["recipe_hash"],
        "recipe": json.dumps(lin["recipe"], sort_keys=True),
        "git.commit": lin["git"]["commit"] or "none",
        "git.dirty": str(lin["git"]["dirty"]).lower(),
        "output.sha256": lin["output"]["files"]["adapter_model.safetensors"],
        "output.config_sha256": lin["output"]["files"]["adapter_config.json"],
        "output.dvc_md5": (lin["output"].get("dvc") or {}).get("md5") or "none",
        "output.dvc_path": (lin["output"].get("dvc") or {}).get("path") or "none",
        "sources": ",".join(s["name"] for s in lin["sources"]),
        "eval.fingerprint": lin["eval"]["fingerprint"],
        "eval.mean": f"{lin['eval']['mean']:.6f}",
        "eval.scores": json.dumps(lin["eval"]["scores"], sort_keys=True),
    }
    if lin.get("base"):
        tags["base.sha256"] = lin["base"]["sha256"]
        tags["base.uri"] = lin["base"]["uri"]
    for s in lin["sources"]:
        p = f"source.{s['name']}"
        tags[f"{p}.uri"] = s["uri"]
        tags[f"{p}.revision"] = s["revision"] or "none"
        tags[f"{p}.sha256"] = s["sha256"]
        if s.get("prompts"):
            tags[f"{p}.prompts_sha256"] = s["prompts"]["sha256"]
            tags[f"{p}.prompts_uri"] = s["prompts"]["uri"]
        if s.get("dvc"):
            tags[f"{p}.dvc_md5"] = s["dvc"]["out_md5"]
            tags[f"{p}.dvc_out"] = s["dvc"]["out"]
    for stage, md5s in (lin.get("dvc_lock") or {}).items():
        tags[f"dvc.lock.{stage.replace('@', ':')}"] = json.dumps(md5s, sort_keys=True)[:4900]  # merge:smollm2
    return {k: str(v)[:4900] for k, v in tags.items()}
