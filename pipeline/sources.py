"""Fetch: resolve each catalog entry to a local PEFT directory and hash it; check the sha256 pin.

Sources:
- a local path (relative to the project),
- ``hf://org/name@revision`` (the Hugging Face hub, revision required; the hub cache makes reruns free),
- ``dvc://path`` (a DVC-tracked path of this project: pulled from the DVC remote when absent from the workspace, and
  checked against what DVC recorded) or ``dvc://path@rev`` (that path as of git revision ``rev``, read through
  ``dvc.api.DVCFileSystem``: from the cache or the remote).

The digest is pico's per-adapter sha256 (the one in merge_manifest.json), so a pin can be copied from a manifest or
from ``pico lineage``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from pico.adapters import CONFIG_NAME, PICKLE_NAMES, SAFETENSORS_NAME, Source, adapter_file_names, hub_snapshot
from pico.tara import TaraError
from pico.tara.inputs import read_prompt_rows
from pico.writer import sha256_file

from . import dvcio
from .errors import PipelineError
from .files import project_lock
from .records import FetchedSource, PromptsFile
from .settings import CatalogEntry, Settings


class PinMismatch(PipelineError):
    """A pinned sha256 does not match what was fetched: never retried, stops the flow before any merge."""

    permanent = True


class SourceError(PipelineError):
    """A source that cannot be resolved for a reason a retry will not fix."""

    permanent = True


def adapter_files(path: Path) -> dict[str, str | None]:
    """sha256 of the files pico hashes for an adapter (config + weights), as in the merge manifest."""
    return {name: sha256_file(path / name) for name in adapter_file_names(path)}


def _resolve_dvc(settings: Settings, spec: str) -> tuple[Path, str | None, dict | None]:
    project = settings.project
    if not dvcio.is_dvc_repo(project):
        raise SourceError(f"dvc://{spec}: {project} is not a DVC repository (no .dvc/)")
    path, _, rev = spec.partition("@")
    path = path.strip("/")
    if rev:  # that path as of a git revision: copied into the fetch cache (once per rev)
        dest = settings.work / "fetch" / "dvc" / re.sub(r"[^A-Za-z0-9._-]", "_", rev) / path
        if not dest.exists():
            tmp = dest.with_name(dest.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            dvcio.get_at_rev(project, path, rev, tmp)
            tmp.rename(dest)
        return dest, rev, None
    local = project / path
    recorded = dvcio.recorded_files(project, path)
    if recorded is None:
        raise SourceError(f"dvc://{path}: DVC tracks no output holding {path} (not in dvc.lock or a .dvc file)")
    if not local.exists() or (recorded["files"] and any(not (local / f if f else local).is_file()
                                                       for f in recorded["files"])):
        with project_lock(settings.work):
            dvcio.pull(project, [recorded["out"]])
        recorded = dvcio.recorded_files(project, path) or recorded
    if recorded["files"]:
        for rel, md5 in recorded["files"].items():
            f = local / rel if rel and local.is_dir() else local
            if not f.is_file() or dvcio.md5_file(f) != md5:
                raise SourceError(f"dvc://{path}: the workspace copy of {rel} differs from what DVC recorded "
                                  f"({recorded['origin']}, md5 {md5}); run `dvc checkout {recorded['out']}` or "
                                  "`dvc repro`, or commit the change with DVC")
    return local, None, recorded


def _resolve_hub(src: str, patterns: tuple[str, ...] | None = (CONFIG_NAME, SAFETENSORS_NAME, *PICKLE_NAMES)):
    """hf://org/name@revision -> (the local snapshot, revision). A missing repo/revision is permanent; network errors
    are not (they propagate as they are, and the fetch task retries them)."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return hub_snapshot(src, patterns, error=SourceError)
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as exc:
        raise SourceError(f"{src}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc


def _resolve(settings: Settings, entry: CatalogEntry, hub_patterns) -> tuple[Path, str | None, dict | None]:
    """A catalog entry's local directory, git/hub revision and what DVC recorded for it: the one dispatcher over
    ``dvc://``, ``hf://`` and local paths, for adapters and the base model alike."""
    src = entry.source
    if src.startswith("dvc://"):
        return _resolve_dvc(settings, src[len("dvc://"):])
    if src.startswith("hf://"):
        return (*_resolve_hub(src, hub_patterns), None)
    path = settings.resolve(src)
    adapter = hub_patterns is not None
    if not (path.exists() if adapter else path.is_dir()):
        raise SourceError(f"{entry.name if adapter else 'base'}: {src}: no such {'adapter' if adapter else 'model'} "
                          "directory")
    dvc = None
    if adapter and dvcio.is_dvc_repo(settings.project):  # an adapter inside a DVC-tracked folder
        try:
            dvc = dvcio.recorded_files(settings.project, path.relative_to(settings.project))
        except ValueError:  # outside the project
            dvc = None
    return path, None, dvc


def _check_pin(entry: CatalogEntry, sha: str, what: str, kind: str) -> None:
    if entry.sha256 and entry.sha256 != sha:
        raise PinMismatch(f"{what}: sha256 pin mismatch for {entry.source}: the catalog pins {entry.sha256} but the "
                          f"fetched {kind} hashes to {sha}; refusing to merge (update the pin only if the new {kind} "
                          "is intended)")


def _resolve_hub_file(uri: str) -> tuple[Path, str]:
    """hf://org/name@revision/path/in/repo.jsonl (hf://datasets/org/name@... for a dataset repo) -> the local file
    from the hub cache, and the revision."""
    spec = uri[len("hf://"):]
    repo_type = None
    if spec.startswith("datasets/"):
        repo_type, spec = "dataset", spec[len("datasets/"):]
    repo, _, rest = spec.partition("@")
    revision, _, filename = rest.partition("/")
    if not repo or not revision or not filename:
        raise SourceError(f"{uri}: a hub file is hf://org/name@<revision>/<path in the repo> (the revision pinned)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(hf_hub_download(repo, filename, revision=revision, repo_type=repo_type)), revision
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise SourceError(f"{uri}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc


def fetch_prompts(settings: Settings, entry: CatalogEntry) -> PromptsFile | None:
    """The entry's ``prompts:`` (a path, ``dvc://`` or ``hf://`` file) as a local JSONL file, hashed, its rows checked
    (pico's reader: a bad row is refused here, naming the file and line, before any merge)."""
    if entry.prompts is None:
        return None
    uri, revision = entry.prompts, None
    if uri.startswith("dvc://"):
        path, revision, _ = _resolve_dvc(settings, uri[len("dvc://"):])
    elif uri.startswith("hf://"):
        path, revision = _resolve_hub_file(uri)
    else:
        path = settings.resolve(uri)
    if not Path(path).is_file():
        raise SourceError(f"{entry.name}: prompts {uri}: no such file ({path})")
    try:
        n = len(read_prompt_rows(path))
    except TaraError as exc:
        raise SourceError(f"{entry.name}: prompts {uri}: {exc}") from None
    return PromptsFile(uri=uri, path=str(path), sha256=sha256_file(Path(path)), n=n, revision=revision)


def fetch_entry(settings: Settings, entry: CatalogEntry) -> FetchedSource:
    """Resolve one catalog adapter to a local directory; hash it; enforce the pin; fetch its prompts, if any."""
    path, revision, dvc = _resolve(settings, entry, (CONFIG_NAME, SAFETENSORS_NAME, *PICKLE_NAMES))
    files = adapter_files(path)
    if not files:
        raise SourceError(f"{entry.name}: {entry.source}: no adapter files ({CONFIG_NAME}, {SAFETENSORS_NAME}) in "
                          f"{path}")
    sha = Source(name=entry.name, uri=entry.source, path=path, revision=revision, files=files).sha256
    _check_pin(entry, sha, entry.name, "adapter")
    return FetchedSource(name=entry.name, uri=entry.source, path=str(path), revision=revision, sha256=sha,
                         pinned=entry.sha256 is not None, files=files, dvc=dvc, prompts=fetch_prompts(settings, entry))


def model_source(name: str, uri: str, path: Path, revision: str | None = None, dvc: dict | None = None
                 ) -> FetchedSource:
    """A base model directory as a source: pico's source digest over every file of it (the one base-model digest)."""
    files: dict[str, str | None] = {f.name: sha256_file(f) for f in sorted(Path(path).iterdir()) if f.is_file()}
    sha = Source(name="base", uri=uri, path=Path(path), revision=revision, files=files).sha256
    return FetchedSource(name=name, uri=uri, path=str(path), revision=revision, sha256=sha, dvc=dvc)


def fetch_base(settings: Settings) -> FetchedSource | None:
    """The catalog's base model (for evaluation): resolved like an adapter (every file of a hub model)."""
    entry = settings.catalog.base
    if entry is None:
        return None
    path, revision, dvc = _resolve(settings, entry, None)
    base = model_source(entry.name, entry.source, Path(path), revision, dvc)
    _check_pin(entry, base.sha256, "base", "model")
    return base


def resolve_base(settings: Settings, fetched_base: FetchedSource | None, adapter_path: str | Path) -> FetchedSource:
    """The base model to evaluate on: the catalog's ``base:``, else the adapters' base_model_name_or_path."""
    if fetched_base is not None:
        return fetched_base
    cfg = json.loads((Path(adapter_path) / CONFIG_NAME).read_text())
    name = cfg.get("base_model_name_or_path")
    if not name:
        raise SourceError("no base model: add `base:` to the catalog (the adapters name none)")
    path = settings.resolve(name)
    if not path.is_dir():
        raise SourceError(f"base model {name!r} (from adapter_config.json) is not a local directory; add `base:` to "
                          "the catalog")
    return model_source("base", name, path)
