"""``pico lineage MODEL [VERSION|ALIAS]``: walk a registered version back to its sources and recipe, recompute the
hashes of what MLflow and DVC hold, and say plainly whether everything still matches.

Checks (each OK, MISMATCH or MISSING; INFO lines never fail the verdict):
- the registry's tags against the run's lineage.json and merge_manifest.json;
- the recipe hash, recomputed from the recipe in the manifest;
- the merged adapter in MLflow (the version's source), re-hashed;
- the merged adapter in DVC (cache, else the configured remote of any kind), every object's md5 and sha256
  recomputed;
- every source adapter: from DVC's objects when it came from a DVC-tracked path, else from its path / hub cache;
- the git commit the run was made from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pico import Recipe
from pico.adapters import Source, resolve_source
from pico.writer import json_digest, sha256_file

from . import dvcio
from .environ import quiet_env
from .render import recipe_summary
from .settings import Settings, load_settings
from .sources import adapter_files
from .tracking.client import client
from .tracking.models import adapter_dir, files_uri


@dataclass
class Check:
    what: str
    status: str  # OK | MISMATCH | MISSING | INFO
    detail: str


def _short(h: str | None) -> str:
    return (h or "none")[:16]


Shas = dict[str, str | None]  # file -> sha256, as pico's Source takes them


def _hash_objects(project: Path, files_md5: dict[str, str]) -> tuple[Shas | None, list[str], str]:
    """sha256 per file of DVC objects (streamed from the cache, else the remote), after checking each object's md5;
    problems listed; where the objects were read."""
    out: Shas = {}
    problems: list[str] = []
    where: set[str] = set()
    for rel, md5 in sorted(files_md5.items()):
        try:
            got, sha, at = dvcio.hash_object(project, md5)
        except FileNotFoundError:
            problems.append(f"{rel}: object {md5} is in neither the DVC cache nor the remote")
            continue
        where.add(at)
        if got != md5:
            problems.append(f"{rel}: DVC object {md5} in the {at} is corrupt (its md5 is {got})")
            continue
        out[rel] = sha
    return (out if not problems else None), problems, ", ".join(sorted(where))


def _dir_listing(project: Path, dir_md5: str) -> tuple[dict[str, str] | None, str]:
    try:
        return dvcio.dir_listing(project, dir_md5)
    except FileNotFoundError:
        return None, f"DVC holds no .dir object {dir_md5} (neither the cache nor the remote)"
    except dvcio.DvcError as exc:
        return None, str(exc)


def check_source(project: Path, src: dict) -> Check:
    what = f"source {src['name']}"
    dvc = src.get("dvc")
    if dvc and dvc.get("out_md5", "").endswith(".dir"):
        listing, where = _dir_listing(project, dvc["out_md5"])
        if listing is None:
            return Check(what, "MISSING", where)
        prefix = dvc["inner"] + "/" if dvc.get("inner") else ""
        files_md5 = {k[len(prefix):]: v for k, v in listing.items() if k.startswith(prefix)}
        wanted = {k: v for k, v in files_md5.items() if k in src["files"]}
        if set(wanted) != set(src["files"]):
            return Check(what, "MISMATCH", f"DVC's {dvc['out']} ({dvc['out_md5']}) lacks "
                         f"{sorted(set(src['files']) - set(wanted))}")
        shas, problems, where = _hash_objects(project, wanted)
        if shas is None:
            return Check(what, "MISSING", "; ".join(problems))
        digest = Source(src["name"], src["uri"], Path("."), src["revision"], shas).sha256
        ok = digest == src["sha256"]
        return Check(what, "OK" if ok else "MISMATCH",
                     f"{src['uri']}: sha256 {_short(digest)} recomputed from DVC objects of {dvc['out']} "
                     f"({dvc['out_md5']}, {where})" + ("" if ok else f" != registered {_short(src['sha256'])}"))
    if src["uri"].startswith("hf://"):
        try:
            path = resolve_source(src["uri"]).path
        except Exception as exc:  # offline and not cached
            return Check(what, "MISSING", f"{src['uri']}: not in the local hub cache ({exc})")
    else:
        path = Path(src.get("path") or src["uri"])
        if not path.is_absolute():
            path = project / path
    if not path.exists():
        return Check(what, "MISSING", f"{src['uri']}: {path} no longer exists")
    digest = Source(src["name"], src["uri"], path, src["revision"], adapter_files(path)).sha256
    ok = digest == src["sha256"]
    return Check(what, "OK" if ok else "MISMATCH", f"{src['uri']}: sha256 {_short(digest)} recomputed from {path}"
                 + ("" if ok else f" != registered {_short(src['sha256'])} (changed since the merge)"))


def check_recipe(manifest: dict) -> Check:
    """The recipe's hash recomputed: a pico merge's through ``pico.Recipe``, a learned merge's (``pico tara``) as the
    digest of its config."""
    r = manifest["recipe"]
    try:
        # pico tara: the recipe is its TaraConfig with the variant as method, hashed as it is
        recomputed = json_digest(r) if "objective" in r else Recipe.from_dict(r).hash()
        what = recipe_summary(r)
    except (ValueError, KeyError) as exc:
        return Check("recipe", "MISMATCH", f"cannot rebuild the recipe: {exc}")
    ok = recomputed == manifest["recipe_hash"]
    return Check("recipe", "OK" if ok else "MISMATCH", f"{what}: hash {_short(recomputed)} recomputed"
                 + ("" if ok else f" != {_short(manifest['recipe_hash'])}"))


def check_prompts(project: Path, src: dict) -> Check:
    """A learned merge's prompts file: its sha256 recomputed from the file the URI names in this checkout (a
    ``dvc://`` path from the workspace; not fetched from a remote here)."""
    p = src["prompts"]
    what = f"prompts of {src['name']}"
    uri = p["uri"]
    rel = uri[len("dvc://"):].partition("@")[0] if uri.startswith("dvc://") else None if uri.startswith("hf://") \
        else uri
    path = (project / rel) if rel is not None and not Path(rel).is_absolute() else Path(rel or p["path"])
    if not path.is_file():
        return Check(what, "INFO", f"{uri}: not in this checkout; registered sha256 {_short(p['sha256'])} "
                                   f"({p['n']} prompts)")
    digest = sha256_file(path)
    ok = digest == p["sha256"]
    return Check(what, "OK" if ok else "MISMATCH", f"{uri}: sha256 {_short(digest)} recomputed ({p['n']} prompts)"
                 + ("" if ok else f" != registered {_short(p['sha256'])} (changed since the merge)"))


def check_dvc_output(project: Path, dvc_md5: str, manifest: dict) -> Check:
    listing, where = _dir_listing(project, dvc_md5)
    if listing is None:
        return Check("merged adapter in DVC", "MISSING", where)
    shas, problems, where = _hash_objects(project, listing)
    if shas is None:
        return Check("merged adapter in DVC", "MISSING", "; ".join(problems))
    bad = [n for n, sha in manifest["output"]["files"].items() if shas.get(n) != sha]
    if bad:
        return Check("merged adapter in DVC", "MISMATCH", f"{dvc_md5}: {', '.join(bad)} differ from the manifest")
    return Check("merged adapter in DVC", "OK", f"{dvc_md5} ({where}): every object's md5 and the adapter's sha256 "
                 "recomputed and equal to the manifest")


def resolve_version(c, name: str, ref: str):
    from mlflow.exceptions import MlflowException

    try:
        if ref.isdigit():
            return c.get_model_version(name, ref)
        return c.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        raise LookupError(f"{name} has no version or alias {ref!r} ({' '.join(str(exc).split())[:200]})") from None


def walk(settings: Settings, model: str | None = None, ref: str = "champion") -> tuple[bool, list[str]]:
    """The lineage report of one registered version: (everything matches, printable lines)."""
    c = client(settings)
    name = model or settings.model_name
    v = resolve_version(c, name, str(ref))
    tags = v.tags
    checks: list[Check] = []
    with tempfile.TemporaryDirectory() as tmp:
        import mlflow.artifacts

        def fetch_artifact(path):
            try:
                return Path(mlflow.artifacts.download_artifacts(run_id=v.run_id, artifact_path=path, dst_path=tmp,
                                                                tracking_uri=settings.tracking_uri))
            except Exception:
                return None

        lin_path, man_path = fetch_artifact("lineage.json"), fetch_artifact("merge_manifest.json")
        if lin_path is None or man_path is None:
            return False, [f"{name} v{v.version}: run {v.run_id} has no lineage.json/merge_manifest.json artifacts "
                           "(not registered by the nightly pipeline?)"]
        lineage, manifest = json.loads(lin_path.read_text()), json.loads(man_path.read_text())
        project = settings.project  # the checkout asked about (a fresh clone reads DVC objects from its remote)
        if not dvcio.is_dvc_repo(project) and Path(lineage.get("project") or "").is_dir():
            project = Path(lineage["project"])

        # 1. registry tags == run artifacts
        pairs = [("recipe.hash", lineage["recipe_hash"]), ("recipe.hash", manifest["recipe_hash"]),
                 ("output.sha256", manifest["output"]["files"]["adapter_model.safetensors"]),
                 ("pico.merge_key", lineage["merge_key"])]
        pairs += [(f"source.{s['name']}.sha256", s["sha256"]) for s in lineage["sources"]]
        pairs += [(f"source.{s['name']}.sha256", s["sha256"]) for s in manifest["sources"]]
        pairs += [(f"source.{s['name']}.prompts_sha256", s["prompts"]["sha256"]) for s in lineage["sources"]
                  if s.get("prompts")]
        pairs += [(f"source.{i['adapter']}.prompts_sha256", i["sha256"]) for i in manifest.get("inputs", [])]
        bad = sorted({k for k, val in pairs if tags.get(k) != val})
        checks.append(Check("registry tags", "MISMATCH" if bad else "OK",
                            f"differ from the run's lineage/manifest: {', '.join(bad)}" if bad else
                            "equal to the run's lineage.json and merge_manifest.json"))
        # 2. recipe hash recomputed
        checks.append(check_recipe(manifest))
        # 3. the MLflow copy of the merged adapter
        try:
            uri = files_uri(c, v.source)  # a logged model: where its files live
            local = adapter_dir(Path(mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(Path(tmp) / "src"), tracking_uri=settings.tracking_uri)))
            bad = [n for n, sha in manifest["output"]["files"].items()
                   if not (local / n).is_file() or sha256_file(local / n) != sha]
            where = v.source if uri == v.source else f"{v.source} ({uri})"
            checks.append(Check("merged adapter in MLflow", "MISMATCH" if bad else "OK",
                                f"{where}: " + (f"{', '.join(bad)} differ from the manifest" if bad else
                                                "sha256 of adapter files recomputed, equal to the manifest")))
        except Exception as exc:
            checks.append(Check("merged adapter in MLflow", "MISSING", f"{v.source}: {exc}"))
    # 4. the DVC copy of the merged adapter
    dvc_md5 = tags.get("output.dvc_md5")
    if dvc_md5 and dvc_md5 != "none":
        checks.append(check_dvc_output(project, dvc_md5, manifest))
    else:
        checks.append(Check("merged adapter in DVC", "INFO", "not versioned with DVC (no DVC repo or skipped)"))
    # 5. sources (and a learned merge's prompts)
    for src in lineage["sources"]:
        checks.append(check_source(project, src))
        if src.get("prompts"):
            checks.append(check_prompts(project, src))
    # 6. git commit
    commit = lineage.get("git", {}).get("commit")
    if commit:
        proc = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=project, capture_output=True)
        dirty = lineage["git"].get("dirty")
        checks.append(Check("git commit", "OK" if proc.returncode == 0 else "MISSING",
                            f"{commit[:12]}" + (" (working tree had uncommitted changes)" if dirty else "")
                            + ("" if proc.returncode == 0 else " is not in this repository")))
    # 7. where dvc.lock stands now (informational)
    if lineage.get("dvc_lock") and dvc_md5 and dvc_md5 != "none":
        now = dvcio.lock_entries(project, list(lineage["dvc_lock"]))
        out_path = tags.get("output.dvc_path")
        current = next((e.get(out_path) for e in now.values() if out_path in e), None)
        checks.append(Check("dvc.lock", "INFO", f"{out_path} is this version ({dvc_md5})" if current == dvc_md5 else
                            f"{out_path} now records {current} (a later merge); this version stays in the DVC "
                            "cache/remote"))
    failed = [ch for ch in checks if ch.status in ("MISMATCH", "MISSING")]
    aliases = ", ".join(a for a in (v.aliases or [])) or "none"
    lines = [f"{name} version {v.version} (aliases: {aliases}; promotion: {tags.get('promotion', '?')}: "
             f"{tags.get('promotion.reason', '')})",
             f"  run {v.run_id}; merge key {_short(lineage['merge_key'])}; pico {lineage['pico_version']}; "
             f"eval mean {float(tags.get('eval.mean', 'nan')):.4f}"]
    width = max(len(ch.what) for ch in checks)
    lines += [f"  {ch.status:<8} {ch.what:<{width}}  {ch.detail}" for ch in checks]
    if failed:
        lines.append(f"MISMATCH: {len(failed)} of {len(checks)} checks failed ("
                     + ", ".join(ch.what for ch in failed) + "); this version can no longer be fully traced")
    else:
        lines.append(f"ALL MATCH: every hash recomputed from what MLflow and DVC hold equals the registered lineage "
                     f"({sum(ch.status == 'OK' for ch in checks)} checks)")
    return not failed, lines


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pico lineage`` (and ``python -m pipeline.audit``)."""
    quiet_env()
    ap = argparse.ArgumentParser(prog="pico lineage", description="Walk a registered merge back to its sources and "
                                 "recipe, recompute every hash from what MLflow and DVC hold, say whether all match.")
    ap.add_argument("model", nargs="?", help="registered model name (default: pipeline.mlflow.model_name)")
    ap.add_argument("ref", nargs="?", default="champion", help="version number or alias (default: champion)")
    ap.add_argument("--project", default=".", help="project directory with params.yaml (default: .)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        settings = load_settings(args.project, args.params)
        ok, lines = walk(settings, args.model, args.ref)
    except (LookupError, ValueError, RuntimeError) as exc:
        print(f"pico lineage: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
