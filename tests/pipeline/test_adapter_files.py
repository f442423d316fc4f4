"""A pin copied from a merge manifest (or `pico lineage`) must match what fetch computes: pico (Source.files) and
the pipeline (pipeline/sources.adapter_files) hash the same files of an adapter directory."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from pico.adapters import load_adapter
from pipeline.sources import adapter_files


@pytest.mark.parametrize("layout", ["safetensors", "safetensors+pickle", "pickle"])
def test_fetch_and_pico_hash_the_same_adapter_files(adapters, tmp_path, layout):
    d = tmp_path / "adapter"
    shutil.copytree(adapters[0], d)
    if "pickle" in layout:
        torch.save(load_file(d / "adapter_model.safetensors"), d / "adapter_model.bin")
    if layout == "pickle":
        (d / "adapter_model.safetensors").unlink()
    (d / "README.md").write_text("not part of the adapter's identity\n")
    weights = "adapter_model.bin" if layout == "pickle" else "adapter_model.safetensors"
    fetched = adapter_files(d)
    assert sorted(fetched) == ["adapter_config.json", weights]
    source = load_adapter(d, allow_pickle=True).source
    assert source.hash_files() == fetched
