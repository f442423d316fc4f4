"""Fetch and the catalog: hf://id@rev through the hub cache (offline), local paths, pins, catalog errors."""

from __future__ import annotations

import shutil

import pytest
import yaml
from pipeline_helpers import make_project, set_env


def fake_hub_snapshot(cache, repo: str, revision: str, adapter) -> None:
    """The layout huggingface_hub keeps for a downloaded snapshot (so the offline hub resolves it)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(adapter / f, snap / f)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)


def test_hf_local_and_pinned_sources(tmp_path, monkeypatch, adapters, base):
    import huggingface_hub.constants as hub

    from pipeline.settings import CatalogEntry, load_settings
    from pipeline.sources import PinMismatch, SourceError, fetch_entry

    set_env(monkeypatch, tmp_path)
    cache = tmp_path / "hub"
    rev = "0123456789abcdef0123456789abcdef01234567"
    fake_hub_snapshot(cache, "team/math-lora", rev, adapters[0])
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    project = make_project(tmp_path / "p", adapters, base, dvc_init=False)
    settings = load_settings(project)

    local = fetch_entry(settings, CatalogEntry(name="math", source="adapters/math"))
    hf = fetch_entry(settings, CatalogEntry(name="math", source=f"hf://team/math-lora@{rev}"))
    assert hf.sha256 == local.sha256 and hf.revision == rev and rev in hf.path
    pinned = CatalogEntry(name="math", source=f"hf://team/math-lora@{rev}", sha256=hf.sha256)
    assert fetch_entry(settings, pinned).pinned
    with pytest.raises(PinMismatch, match="math: sha256 pin mismatch"):
        fetch_entry(settings, CatalogEntry(name="math", source=f"hf://team/math-lora@{rev}", sha256="f" * 64))
    with pytest.raises(SourceError, match="pin a revision"):
        fetch_entry(settings, CatalogEntry(name="x", source="hf://team/math-lora"))
    with pytest.raises(SourceError, match="no such adapter directory"):
        fetch_entry(settings, CatalogEntry(name="x", source="adapters/nope"))

    # the merge of hub + local sources records the hub revision and the catalog names
    from pipeline import merging

    aset = merging.load_set([hf, fetch_entry(settings, CatalogEntry(name="code", source="adapters/code"))])
    assert [s.name for s in aset.sources] == ["math", "code"] and aset.sources[0].revision == rev


def test_catalog_and_params_errors_are_named(tmp_path, monkeypatch, adapters, base):
    from pipeline.settings import ConfigError, load_settings

    set_env(monkeypatch, tmp_path)
    project = make_project(tmp_path / "p", adapters, base, dvc_init=False)
    cat = project / "adapters.yaml"
    good = cat.read_text()
    data = yaml.safe_load(good)
    data["adapters"][0]["sha256"] = "abc"
    cat.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"adapters\[0\]: math: sha256 pin must be 64 hex digits"):
        load_settings(project)
    data = yaml.safe_load(good)
    data["adapters"].append(dict(data["adapters"][0]))
    cat.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="names must be unique; repeated: math"):
        load_settings(project)
    cat.write_text(good)
    params = project / "params.yaml"
    p = yaml.safe_load(params.read_text())
    p["merge"]["method"] = "nope"
    params.write_text(yaml.safe_dump(p))
    with pytest.raises(ConfigError, match="params.yaml: merge: unknown merge method|params.yaml: merge: .*nope"):
        load_settings(project)
