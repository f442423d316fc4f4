"""How the registered pyfunc finds its base model on any host (pipeline/tracking/pyfunc_model.py ``resolve_base``):
the night's directory when it verifies, else a verified cached copy, else the recorded source (a path, or
``dvc://`` read from a clone of the project at the night's commit) fetched into the cache; always checked against the
recorded digest, which is the pipeline's own (pipeline/sources.py), and refused with both digests when it differs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pipeline_helpers import dvc, run

from pipeline import sources
from pipeline.tracking import pyfunc_model as pm


def tamper(path: Path) -> None:
    cfg = path / "config.json"
    cfg.write_text(cfg.read_text() + " ")  # still valid JSON, other bytes


def test_the_digest_is_the_pipelines(base, tmp_path):
    copy = shutil.copytree(base, tmp_path / "base")
    (copy / "sub").mkdir()
    (copy / "sub" / "x.txt").write_text("nested files are outside the digest in both")
    want = sources.model_source("base", "base", copy).sha256
    assert pm.base_digest(copy) == want == pm.base_digest(base)
    tamper(copy)
    assert pm.base_digest(copy) == sources.model_source("base", "base", copy).sha256 != want


def test_the_nights_directory_when_it_verifies_else_refused_with_both_digests(base, tmp_path, monkeypatch):
    monkeypatch.setenv("PICO_BASE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PICO_BASE_MODEL", raising=False)
    copy = shutil.copytree(base, tmp_path / "night" / "base")
    sha = pm.base_digest(base)
    cfg = {"base_model": str(copy), "base_uri": str(copy), "base_sha256": sha}
    assert pm.resolve_base(cfg) == copy
    tamper(copy)
    with pytest.raises(pm.BaseModelError) as err:
        pm.resolve_base(cfg)
    assert f"sha256 {pm.base_digest(copy)}, expected {sha}" in str(err.value) and str(copy) in str(err.value)

    monkeypatch.setenv("PICO_BASE_MODEL", str(copy))  # named explicitly: verified too, and no fallback
    cfg["base_model"] = str(base)
    with pytest.raises(pm.BaseModelError, match=f"PICO_BASE_MODEL {copy}: sha256 .*, expected {sha}"):
        pm.resolve_base(cfg)
    monkeypatch.setenv("PICO_BASE_MODEL", str(base))
    assert pm.resolve_base(cfg) == base
    with pytest.raises(pm.BaseModelError, match="no base_sha256"):
        pm.resolve_base({**cfg, "base_sha256": None})


def test_a_relative_path_source_is_read_from_the_current_directory(base, tmp_path, monkeypatch):
    """The night's checkout is gone; a clone of the project at another path holds the base at the same relative
    path: the pyfunc, started in that clone, finds and verifies it."""
    monkeypatch.setenv("PICO_BASE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PICO_BASE_MODEL", raising=False)
    clone = tmp_path / "clone"
    shutil.copytree(base, clone / "models" / "base")
    cfg = {"base_model": str(tmp_path / "gone" / "models" / "base"), "base_uri": "models/base",
           "base_project": str(tmp_path / "gone"), "base_sha256": pm.base_digest(base)}
    monkeypatch.chdir(clone)
    assert pm.resolve_base(cfg) == clone / "models" / "base"
    tamper(clone / "models" / "base")
    with pytest.raises(pm.BaseModelError, match="the recorded path .*: sha256 .*, expected"):
        pm.resolve_base(cfg)


@pytest.fixture
def dvc_clone(base, tmp_path, monkeypatch):
    """A git + DVC project whose base is DVC-tracked (pushed to a folder remote), cloned elsewhere; then the
    original checkout is moved away, as if it were on another host. Returns (clone, remote, config of the night)."""
    from pipeline_helpers import set_env

    set_env(monkeypatch, tmp_path)
    proj = tmp_path / "proj"
    shutil.copytree(base, proj / "base")
    run(["git", "init", "-q"], proj)
    dvc(proj, "init", "-q")
    dvc(proj, "remote", "add", "-d", "store", str(tmp_path / "remote"))
    dvc(proj, "add", "-q", "base")
    dvc(proj, "push", "-q")
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-qm", "base"], proj)
    commit = run(["git", "rev-parse", "HEAD"], proj).stdout.strip()
    run(["git", "clone", "-q", str(proj), str(tmp_path / "clone")], tmp_path)
    proj.rename(tmp_path / "elsewhere")
    cfg = {"base_model": str(proj / "base"), "base_uri": "dvc://base", "base_revision": None,
           "base_project": str(proj), "base_git_url": None, "base_git_commit": commit,
           "base_sha256": pm.base_digest(base)}
    monkeypatch.setenv("PICO_BASE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PICO_BASE_MODEL", raising=False)
    return tmp_path / "clone", tmp_path / "remote", cfg


def test_a_dvc_source_is_fetched_from_a_clone_at_the_nights_commit_into_the_cache(dvc_clone, base, tmp_path,
                                                                                  monkeypatch):
    clone, _, cfg = dvc_clone
    assert not (clone / "base").exists() and not (clone / ".dvc" / "cache").exists()
    monkeypatch.chdir(clone)
    got = pm.resolve_base(cfg)
    assert got == tmp_path / "cache" / cfg["base_sha256"] and pm.base_digest(got) == cfg["base_sha256"]
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in base.iterdir())

    fetches = []
    monkeypatch.setattr(pm, "_dvc_get", lambda *a: fetches.append(a))
    assert pm.resolve_base(cfg) == got and fetches == []  # verified in the cache: not fetched again
    monkeypatch.undo()
    monkeypatch.chdir(clone)
    monkeypatch.setenv("PICO_BASE_CACHE", str(tmp_path / "cache"))
    tamper(got)  # a damaged cached copy is dropped and fetched again
    assert pm.resolve_base(cfg) == got and pm.base_digest(got) == cfg["base_sha256"]

    monkeypatch.chdir(tmp_path)  # neither the night's checkout nor a clone: nowhere to read dvc://base from
    shutil.rmtree(got)
    with pytest.raises(pm.BaseModelError, match="dvc://base: no repository to read it from"):
        pm.resolve_base(cfg)


def test_a_tampered_dvc_object_is_refused(dvc_clone, monkeypatch):
    """The remote's copy of a base file was changed after the night: DVC hands it over, the digest refuses it."""
    clone, remote, cfg = dvc_clone
    weights = max((p for p in remote.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    monkeypatch.chdir(clone)
    with pytest.raises(pm.BaseModelError) as err:
        pm.resolve_base(cfg)
    msg = str(err.value)
    assert f"dvc://base from {clone} at {cfg['base_git_commit']}" in msg and f"expected {cfg['base_sha256']}" in msg
    assert not (Path(pm.cache_root()) / cfg["base_sha256"]).exists()  # nothing unverified is cached


def test_a_hub_source_is_downloaded_at_its_pinned_revision_and_verified(base, tmp_path, monkeypatch):
    """``hf://org/name@rev``: huggingface_hub's snapshot_download at that revision (its own cache; stood in for here
    by a local copy, as the tests have no network); a snapshot with other bytes is refused."""
    import huggingface_hub

    monkeypatch.setenv("PICO_BASE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PICO_BASE_MODEL", raising=False)
    snapshot = shutil.copytree(base, tmp_path / "hub" / "snapshot")
    calls = []

    def snapshot_download(repo_id, revision=None, **kw):
        calls.append((repo_id, revision, kw))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    cfg = {"base_model": str(tmp_path / "gone"), "base_uri": "hf://org/tiny-llama@0123abc",
           "base_revision": "0123abc", "base_sha256": pm.base_digest(base)}
    assert pm.resolve_base(cfg) == snapshot and calls == [("org/tiny-llama", "0123abc", {})]
    tamper(snapshot)
    with pytest.raises(pm.BaseModelError, match=f"hf://org/tiny-llama@0123abc {snapshot}: sha256 .*, expected"):
        pm.resolve_base(cfg)


def test_the_recorded_git_remote_carries_no_credentials(tmp_path):
    from pipeline.tracking.lineage import git_remote_url

    run(["git", "init", "-q"], tmp_path)
    assert git_remote_url(tmp_path) is None
    for url, recorded in [("https://user:ghp_token@github.example/org/proj.git", "https://github.example/org/proj.git"),
                          ("https://ghp_token@github.example/org/proj.git", "https://github.example/org/proj.git"),
                          ("ssh://git:secret@git.example/org/proj.git", "ssh://git@git.example/org/proj.git"),
                          ("git@git.example:org/proj.git", "git@git.example:org/proj.git")]:
        run(["git", "remote", "remove", "origin"], tmp_path, check=False)
        run(["git", "remote", "add", "origin", url], tmp_path)
        assert git_remote_url(tmp_path) == recorded


def test_the_requirements_name_what_fetches_the_base_and_the_torch_build():
    import importlib.metadata as md

    from pipeline.tracking.models import model_requirements

    torch = md.version("torch")
    plain = model_requirements("base")
    assert f"torch=={torch.partition('+')[0]}" in plain and f"mlflow=={md.version('mlflow')}" in plain
    assert not any(r.startswith(("dvc", "huggingface_hub", "--")) for r in plain)
    assert f"huggingface_hub=={md.version('huggingface_hub')}" in model_requirements("hf://org/x@rev")
    assert f"dvc=={md.version('dvc')}" in model_requirements("dvc://base")
    indexed = model_requirements("base", "https://download.pytorch.org/whl/cpu")
    assert indexed[:2] == ["--extra-index-url https://download.pytorch.org/whl/cpu", f"torch=={torch}"]
