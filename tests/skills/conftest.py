"""Fixtures of the suite tests (tests/skills/): the miniature SmolLM2-suite build, shared by its tests."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def mini_smollm2(tmp_path_factory):
    """The SmolLM2 suite's stages (base save-and-check, data, adapters) on a tiny random Llama; returns paths."""
    from skills.smollm2.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("mini_smollm2"))
