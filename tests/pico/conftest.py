"""Fixtures of the library tests (tests/pico): the shared tiny models and adapters come from tests/conftest.py."""

from __future__ import annotations

import pytest
import torch


def _random_factors(T=3, m=24, n=20, ranks=(3, 5, 2), L=2, dtype=torch.float64, seed=0):
    """Random LoRA factors bs[t] (L, m, r_t), as_[t] (L, r_t, n)."""
    g = torch.Generator().manual_seed(seed)
    bs = [torch.randn(L, m, r, generator=g, dtype=dtype) for r in ranks]
    as_ = [torch.randn(L, r, n, generator=g, dtype=dtype) for r in ranks]
    return bs, as_


@pytest.fixture(scope="session")
def random_factors():
    return _random_factors
