"""DVC, driven through its Python API: what DVC recorded for a path, its objects (cache or any remote), writes.

Everything goes through ``dvc.repo.Repo`` (``find_outs_by_path``, ``index``, ``config``, ``commit``, ``push``,
``pull``, ``reproduce``, ``experiments.save``), its object databases (the local cache, and the configured remote
whatever its kind: a folder, S3, SSH, ...) and ``dvc.api.DVCFileSystem``: no ``dvc`` subprocess, no hand-read
dvc.lock, ``.dvc/config`` or cache layout. So config from every level (system, global, repo, local) and
``.dvcignore`` apply as DVC applies them, and an audit on a fresh clone reads what only the remote holds.

Writes run under a project-wide file lock (pipeline.files.project_lock) so concurrent pipeline runs never interleave
DVC writes (DVC's own repo lock fails fast instead of waiting).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from .errors import PipelineError


class DvcError(PipelineError):
    pass


def md5_file(path: Path) -> str:
    """DVC 3's file hash (``hash: md5``): the md5 of the raw bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def is_dvc_repo(project: Path) -> bool:
    return (Path(project) / ".dvc").is_dir()


_CWD = threading.RLock()


@contextmanager
def repo(project: Path, write: bool = False) -> Iterator:
    """An open ``dvc.repo.Repo`` of the project (closed after use); DVC's errors become :class:`DvcError`.

    ``write``: DVC's writes still resolve some paths from the process's cwd (the stage cache builds stages from a
    relative ``dvc.yaml``), so they run with the cwd at the project, under a process-wide lock, and it is restored
    afterwards. Reads need neither."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    project = Path(project).resolve()
    with _CWD if write else nullcontext():
        cwd = os.getcwd() if write else None
        try:
            if write:
                os.chdir(project)
            try:
                r = Repo(str(project))
            except DvcException as exc:
                raise DvcError(f"{project}: not a usable DVC repository: {exc}") from exc
            try:
                yield r
            finally:
                r.close()
        finally:
            if cwd is not None:
                os.chdir(cwd)


def _wrap(what: str, project: Path, fn, *args, **kw):
    """DVC's exceptions, and the storage client's own (an unreachable S3/SSH remote raises botocore/asyncssh
    errors through DVC), become one DvcError naming the operation."""
    try:
        return fn(*args, **kw)
    except DvcError:
        raise
    except Exception as exc:
        raise DvcError(f"dvc {what} failed in {project}: {type(exc).__name__}: "
                       f"{' '.join(str(exc).split())[:600]}") from exc


@dataclass
class TrackedOut:
    """One DVC output (a stage out in dvc.lock or a .dvc file's out) and its recorded md5."""

    path: str  # relative to the project, posix
    md5: str  # file md5, or "<md5>.dir" for a directory
    origin: str  # "dvc.lock:<stage>" or "<file>.dvc"


def _origin(stage, project: Path) -> str:
    from dvc.stage import PipelineStage

    if isinstance(stage, PipelineStage):
        return f"dvc.lock:{stage.name}"
    return Path(os.path.relpath(stage.path, project)).as_posix()


def find_out(project: Path, path: str | Path) -> tuple[TrackedOut, str] | None:
    """The tracked out holding ``path`` and the path's position inside it ("" for the out itself)."""
    project = Path(project).resolve()
    target = (project / path).resolve()
    from dvc.exceptions import OutputNotFoundError

    with repo(project) as r:
        try:
            outs = r.find_outs_by_path(str(target), strict=False)
        except OutputNotFoundError:
            return None
        outs = [o for o in outs if o.hash_info and o.hash_info.value]
        if not outs:
            return None
        out = max(outs, key=lambda o: len(str(o.fs_path)))
        rel = Path(os.path.relpath(out.fs_path, project)).as_posix()
        tracked = TrackedOut(rel, out.hash_info.value, _origin(out.stage, project))
    inner = Path(os.path.relpath(target, project / rel)).as_posix()
    return tracked, "" if inner == "." else inner


def remote_name(project: Path) -> str | None:
    """The default remote (``core.remote``, from whichever config level sets it)."""
    with repo(project) as r:
        return r.config["core"].get("remote")


def has_remote(project: Path) -> bool:
    return remote_name(project) is not None


def remote_url(project: Path) -> str | None:
    with repo(project) as r:
        name = r.config["core"].get("remote")
        return r.config["remote"][name]["url"] if name else None


@contextmanager
def open_object(project: Path, md5: str) -> Iterator[tuple[IO[bytes], str]]:
    """Stream the object ``md5`` (a file md5 or ``<md5>.dir``) from the local cache, else from the default remote,
    whatever its kind. Yields (binary stream, where). FileNotFoundError when neither holds it."""
    with repo(project) as r:
        odbs = [("cache", r.cache.local)]
        if r.config["core"].get("remote"):
            try:
                odbs.append((f"remote {r.config['core']['remote']}", r.cloud.get_remote_odb()))
            except Exception as exc:  # a misconfigured remote: say so instead of "missing"
                raise DvcError(f"{project}: the DVC remote cannot be used: {' '.join(str(exc).split())[:300]}") \
                    from exc
        for where, odb in odbs:
            path = odb.oid_to_path(md5)
            try:
                f = odb.fs.open(path, mode="rb")
            except FileNotFoundError:
                continue
            try:
                yield f, where
            finally:
                f.close()
            return
    raise FileNotFoundError(f"object {md5} is in neither the DVC cache nor the default remote")


def hash_object(project: Path, md5: str) -> tuple[str, str, str]:
    """(md5, sha256, where) of the object's bytes, streamed once from the cache or the remote."""
    m, s = hashlib.md5(), hashlib.sha256()
    with open_object(project, md5) as (f, where):
        while chunk := f.read(1 << 20):
            m.update(chunk)
            s.update(chunk)
    return m.hexdigest(), s.hexdigest(), where


def dir_listing(project: Path, dir_md5: str) -> tuple[dict[str, str], str]:
    """relpath -> md5 of every file of a directory object, read from the cache or the remote (md5 verified)."""
    with open_object(project, dir_md5) as (f, where):
        raw = f.read()
    if hashlib.md5(raw).hexdigest() != dir_md5.removesuffix(".dir"):
        raise DvcError(f".dir object {dir_md5} in the {where} is corrupt")
    return {e["relpath"]: e["md5"] for e in json.loads(raw)}, where


def recorded_files(project: Path, path: str | Path) -> dict | None:
    """What DVC recorded for ``path`` (a file or a folder inside a tracked out): the out and per-file md5s."""
    found = find_out(project, path)
    if found is None:
        return None
    out, inner = found
    files = None
    if out.md5.endswith(".dir"):
        try:
            listing, _ = dir_listing(project, out.md5)
        except FileNotFoundError:
            listing = None  # neither cached nor pushed yet: the caller pulls, then asks again
        if listing is not None and inner in listing:  # one file of a tracked folder: "" is the file itself
            files = {"": listing[inner]}
        elif listing is not None:
            prefix = inner + "/" if inner else ""
            files = {k[len(prefix):]: v for k, v in listing.items() if k.startswith(prefix)}
    elif not inner:
        files = {Path(out.path).name: out.md5}
    return {"out": out.path, "out_md5": out.md5, "origin": out.origin, "inner": inner, "files": files}


def stage_names(project: Path) -> set[str]:
    with repo(project) as r:
        return {s.name for s in r.index.stages if hasattr(s, "name") and s.name}


def stages_producing(project: Path, paths: list[str]) -> set[str]:
    """The pipeline stages (dvc.yaml) whose outputs hold any of ``paths`` (relative to the project)."""
    from dvc.stage import PipelineStage

    found = set()
    with repo(project) as r:
        for stage in r.index.stages:
            if not isinstance(stage, PipelineStage):
                continue
            for out in stage.outs:
                o = Path(os.path.relpath(out.fs_path, r.root_dir)).as_posix()
                if any(p == o or p.startswith(o.rstrip("/") + "/") for p in paths):
                    found.add(stage.name)
    return found


def lock_entries(project: Path, stages: list[str]) -> dict[str, dict[str, str]]:
    """For each stage as recorded in dvc.lock: path -> md5 of its deps and outs (what the lineage records)."""
    from dvc.stage import PipelineStage

    out: dict[str, dict[str, str]] = {}
    with repo(project) as r:
        for stage in r.index.stages:
            if isinstance(stage, PipelineStage) and stage.name in stages:
                entries = {}
                for item in [*stage.deps, *stage.outs]:
                    hi = getattr(item, "hash_info", None)
                    if hi is not None and hi.name == "md5" and hi.value:  # (params deps hash as "params")
                        entries[Path(os.path.relpath(item.fs_path, r.root_dir)).as_posix()] = item.hash_info.value
                if entries:
                    out[stage.name] = entries
    return {s: out[s] for s in stages if s in out}


@contextmanager
def _venv_path():
    """Stage commands call ``python``: this interpreter's bin first on PATH while DVC runs them."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), old])
    try:
        yield
    finally:
        os.environ["PATH"] = old


def stage_target(project: Path, stage: str) -> str:
    """A stage's full address: DVC resolves bare stage names and relative paths from the process's cwd, which a
    threaded flow must neither depend on nor change."""
    return f"{Path(project).resolve() / 'dvc.yaml'}:{stage}"


def path_target(project: Path, path: str) -> str:
    return str(Path(project).resolve() / path)


def commit(project: Path, stages: list[str]) -> None:
    with repo(project, write=True) as r:
        for stage in stages:
            _wrap("commit", project, r.commit, stage_target(project, stage), force=True)


def push(project: Path, stages: list[str]) -> int:
    with repo(project, write=True) as r:
        return _wrap("push", project, r.push, [stage_target(project, s) for s in stages])


def pull(project: Path, paths: list[str]) -> None:
    with repo(project, write=True) as r:
        _wrap("pull", project, r.pull, [path_target(project, p) for p in paths])


def fetch(project: Path, paths: list[str] | None = None) -> int:
    with repo(project, write=True) as r:
        return _wrap("fetch", project, r.fetch, [path_target(project, p) for p in paths] if paths else None)


def reproduce(project: Path, stages: list[str], jobs: int = 1, log=print) -> None:
    """``dvc repro`` of ``stages`` and what they depend on.

    ``jobs`` > 1: stages that do not depend on each other (a ``foreach``'s items, say) run their commands that many
    at once. Everything else is DVC's, as ``dvc repro`` does it, one stage at a time in this thread: its plan
    (``plan_repro``), what changed, outputs removed, the run cache restored when it has the run, deps saved, and
    after the command the outputs hashed, cached and written to dvc.lock. Only DVC's ``cmd_run`` runs in worker
    threads. The repository stays locked throughout (a stage command cannot call ``dvc`` itself)."""
    with repo(project, write=True) as r, _venv_path():
        if jobs > 1:
            _wrap("repro", project, _reproduce_waves, r, [stage_target(project, s) for s in stages], jobs, log)
            return
        for stage in stages:
            _wrap("repro", project, r.reproduce, stage_target(project, stage))


def _reproduce_waves(r, targets: list[str], jobs: int, log) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from dvc.repo import lock_repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro
    from dvc.stage.cache import RunCacheNotFoundError
    from dvc.stage.run import cmd_run

    with lock_repo(r):
        graph = get_active_graph(r.index.graph)  # edges point from a stage to the stages it depends on
        plan = plan_repro(graph, collect_stages(r, targets))
        order = {s: i for i, s in enumerate(r.index.stages)}
        while plan:  # each wave: what depends on nothing left to run, in dvc.yaml's order (foreach: params order)
            wave = sorted((s for s in plan if not any(u in plan for u in graph.successors(s))),
                          key=lambda s: order.get(s, len(order)))
            plan = [s for s in plan if s not in wave]
            to_run = []
            for stage in wave:
                if not stage.changed(False, list(graph.successors(stage))):
                    log(f"stage {stage.addressing}: unchanged, skipped")
                    continue
                stage.remove_outs(ignore_remove=False, force=False)
                try:
                    r.stage_cache.restore(stage)
                    log(f"stage {stage.addressing}: restored from DVC's run cache")
                except RunCacheNotFoundError:
                    stage.save_deps()
                    to_run.append(stage)
                else:
                    _record(stage)
            if len(to_run) > 1:
                log(f"running {len(to_run)} stages, {min(jobs, len(to_run))} at a time: "
                    + ", ".join(s.addressing for s in to_run))
            with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(to_run)))) as pool:
                futures = {s: pool.submit(cmd_run, s) for s in to_run}
            failed = []
            for stage, fut in futures.items():
                if fut.exception() is not None:
                    failed.append(f"{stage.addressing}: {fut.exception()}")
                else:
                    _record(stage)  # a finished stage is recorded even when its neighbour failed
            if failed:
                raise RuntimeError("failed to reproduce " + "; ".join(failed))


def _record(stage) -> None:
    """What ``Stage.run`` and ``dvc repro`` do after a stage's command: hash, cache, write dvc.lock."""
    stage.save(allow_missing=False, run_cache=True)
    stage.commit(allow_missing=False)
    stage.dump(update_pipeline=False)


def get_at_rev(project: Path, path: str, rev: str, dest: Path) -> None:
    """``path`` as of git revision ``rev`` (``dvc.api.DVCFileSystem``: from the cache or the remote)."""
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(str(project), rev=rev)
    try:
        if not fs.exists(path):
            raise DvcError(f"dvc://{path}@{rev}: no such path at that revision")
        _wrap("get", project, fs.get, path, str(dest), recursive=True)
    finally:
        fs.close() if hasattr(fs, "close") else None


def exp_save(project: Path, name: str, stages: list[str], include: list[str]) -> str:
    """Save the workspace as a DVC experiment (``dvc exp save``): a git commit under refs/exps that records
    dvc.lock, params and ``include`` (the metrics), so ``dvc exp show`` / ``dvc metrics diff`` compare nights.
    HEAD, the branch and the working tree are left as they are. Returns the experiment's commit sha."""
    with repo(project, write=True) as r:  # (DVC's executor changes the cwd too; `repo` restores it)
        sha = _wrap("exp save", project, r.experiments.save,
                    targets=[stage_target(project, st) for st in stages], name=name, force=True,
                    include_untracked=list(include))
    return sha


def exp_push(project: Path, git_remote: str, name: str) -> None:
    """``dvc exp push GIT_REMOTE NAME``: the night's experiment ref to the team's git remote, with its DVC objects
    (``push_cache``: to the default DVC remote), so the history outlives the worker."""
    with repo(project, write=True) as r:
        _wrap("exp push", project, r.experiments.push, git_remote, [name], force=True, push_cache=True)


def exp_prune(project: Path, keep: int, git_remote: str | None = None) -> list[str]:
    """Retention: remove the nightly experiments (``nightly-*``, named by time) older than the newest ``keep``, here
    and on ``git_remote`` when given. Returns the removed names (oldest first). Other experiments are left alone."""
    with repo(project, write=True) as r:
        listing = _wrap("exp ls", project, r.experiments.ls, all_commits=True)
        names = sorted({n for exps in listing.values() for n, _ in exps if n and n.startswith("nightly-")})
        old = names[:-keep] if keep < len(names) else []
        if old:
            _wrap("exp remove", project, r.experiments.remove, exp_names=old)
        if git_remote:
            remote = _wrap("exp ls", project, r.experiments.ls, all_commits=True, git_remote=git_remote)
            gone = sorted({n for exps in remote.values() for n, _ in exps if n and n.startswith("nightly-")})
            gone = gone[:-keep] if keep < len(gone) else []
            if gone:
                _wrap("exp remove", project, r.experiments.remove, exp_names=gone, git_remote=git_remote)
            old = sorted(set(old) | set(gone))
    return old


def exp_name(stamp: str, md5: str | None) -> str:
    """A valid experiment name per night: nightly-YYYYMMDD-HHMMSS-<md5 prefix>."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"nightly-{stamp}-{(md5 or 'none')[:8]}")


def cache_path(project: Path, md5: str) -> Path:
    """Where the local cache holds (or would hold) the object ``md5``."""
    with repo(project) as r:
        return Path(r.cache.local.oid_to_path(md5))
