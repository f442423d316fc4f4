"""DVC, read and driven from the pipeline: what DVC recorded for a path, its cache, and the CLI for writes.

Reads (dvc.lock, ``*.dvc`` files, the ``.dir`` manifests in the cache) are plain file reads: cheap, and safe from
threads.  Writes (commit, push, pull, get) run the real ``dvc`` CLI of this interpreter in a subprocess with the
project as its working directory (DVC resolves dvc.yaml from the cwd, which a threaded flow must not change), under
a project-wide file lock so concurrent pipeline runs never interleave DVC writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import PipelineError


class DvcError(PipelineError):
    pass


def md5_file(path: Path) -> str:
    """DVC 3's file hash (``hash: md5``): the md5 of the raw bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def is_dvc_repo(project: Path) -> bool:
    return (project / ".dvc").is_dir()


def cache_dir(project: Path) -> Path:
    """The local DVC cache (``cache.dir`` from .dvc/config(.local) when set, else .dvc/cache)."""
    import configparser

    for name in ("config.local", "config"):
        cfg = project / ".dvc" / name
        if cfg.is_file():
            parser = configparser.ConfigParser()
            try:
                parser.read_string(cfg.read_text())
            except configparser.Error:
                continue
            if parser.has_option("cache", "dir"):
                p = Path(parser.get("cache", "dir"))
                return p if p.is_absolute() else (project / ".dvc" / p).resolve()
    return project / ".dvc" / "cache"


def cache_path(project: Path, md5: str) -> Path:
    return cache_dir(project) / "files" / "md5" / md5[:2] / md5[2:]


@dataclass
class TrackedOut:
    """One DVC output (a stage out in dvc.lock or a .dvc file's out) and its recorded md5."""

    path: str  # relative to the project, posix
    md5: str  # file md5, or "<md5>.dir" for a directory
    origin: str  # "dvc.lock:<stage>" or "<file>.dvc"

    def listing(self, project: Path) -> dict[str, str] | None:
        """relpath -> md5 of every file of a directory out, from the cache's .dir object (None if not cached)."""
        if not self.md5.endswith(".dir"):
            return None
        obj = cache_path(project, self.md5)
        if not obj.is_file():
            return None
        return {e["relpath"]: e["md5"] for e in json.loads(obj.read_text())}


def tracked_outs(project: Path) -> list[TrackedOut]:
    outs = []
    lock = project / "dvc.lock"
    if lock.is_file():
        data = yaml.safe_load(lock.read_text()) or {}
        for stage, info in (data.get("stages") or {}).items():
            for out in info.get("outs") or []:
                if out.get("md5"):
                    outs.append(TrackedOut(out["path"], out["md5"], f"dvc.lock:{stage}"))
    for dirpath, dirnames, filenames in os.walk(project):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("node_modules", "__pycache__")]
        for fname in filenames:
            if not fname.endswith(".dvc"):
                continue
            dvcfile = Path(dirpath) / fname
            data = yaml.safe_load(dvcfile.read_text()) or {}
            wdir = dvcfile.parent.relative_to(project)
            for out in data.get("outs") or []:
                if out.get("md5"):
                    outs.append(TrackedOut((wdir / out["path"]).as_posix(), out["md5"],
                                           dvcfile.relative_to(project).as_posix()))
    return outs


def find_out(project: Path, path: str | Path) -> tuple[TrackedOut, str] | None:
    """The tracked out holding ``path`` and the path's position inside it ("" for the out itself)."""
    rel = Path(os.path.relpath(Path(project) / path, project)).as_posix()
    best = None
    for out in tracked_outs(project):
        if rel == out.path or rel.startswith(out.path.rstrip("/") + "/"):
            if best is None or len(out.path) > len(best.path):
                best = out
    if best is None:
        return None
    return best, rel[len(best.path):].lstrip("/")


def recorded_files(project: Path, path: str | Path) -> dict | None:
    """What DVC recorded for ``path`` (a file or a folder inside a tracked out): the out and per-file md5s."""
    found = find_out(project, path)
    if found is None:
        return None
    out, inner = found
    listing = out.listing(project)
    files = None
    if listing is not None:
        prefix = inner + "/" if inner else ""
        files = {k[len(prefix):]: v for k, v in listing.items() if k.startswith(prefix)}
    elif not out.md5.endswith(".dir") and not inner:
        files = {Path(out.path).name: out.md5}
    return {"out": out.path, "out_md5": out.md5, "origin": out.origin, "inner": inner, "files": files}


def venv_env() -> dict:
    """The environment for DVC and its stage commands: this interpreter's bin first on PATH, so a stage's
    `python -m ...` runs in the same virtualenv even when it was not activated."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def dvc_cmd(project: Path, *args: str, timeout: float = 600) -> str:
    """Run ``dvc ARGS`` in ``project``; raise DvcError with DVC's own message on failure."""
    env = venv_env()
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise DvcError(f"dvc {' '.join(args)} failed in {project}: " + " | ".join(msg[-6:]))
    return proc.stdout


@contextmanager
def project_lock(work: Path, name: str = "dvc", timeout: float = 900):
    """A cross-process lock (flock) under the work folder: serialises DVC writes and registry promotion."""
    from filelock import FileLock

    lock_dir = work / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f"{name}.lock"), timeout=timeout):
        yield


def local_remote(project: Path) -> Path | None:
    """The default remote's folder when it is a local directory remote (else None)."""
    import configparser

    parser = configparser.ConfigParser()
    for name in ("config", "config.local"):
        cfg = project / ".dvc" / name
        if cfg.is_file():
            try:
                parser.read_string(cfg.read_text())
            except configparser.Error:
                pass
    if not parser.has_option("core", "remote"):
        return None
    section = f"'remote \"{parser.get('core', 'remote')}\"'"
    if not parser.has_option(section, "url"):
        return None
    url = parser.get(section, "url")
    if "://" in url and not url.startswith("file://"):
        return None
    p = Path(url.removeprefix("file://"))
    return p if p.is_absolute() else (project / ".dvc" / p).resolve()


def object_path(project: Path, md5: str) -> tuple[Path, str] | None:
    """Where DVC holds the object ``md5``: the local cache, else a local directory remote."""
    p = cache_path(project, md5)
    if p.is_file():
        return p, "cache"
    remote = local_remote(project)
    if remote is not None:
        p = remote / "files" / "md5" / md5[:2] / md5[2:]
        if p.is_file():
            return p, f"remote {remote}"
    return None


def has_remote(project: Path) -> bool:
    for name in ("config", "config.local"):
        cfg = project / ".dvc" / name
        if cfg.is_file() and "remote =" in cfg.read_text().replace("remote=", "remote ="):
            return True
    return False
