"""Seeded randomness that does not depend on batching, worker or device."""

from __future__ import annotations

import hashlib

import torch


def module_generator(seed: int, module: str, salt: str) -> torch.Generator:
    """A CPU generator that depends only on (seed, module, salt): random draws do not depend on batching/device."""
    digest = hashlib.sha256(f"{seed}:{module}:{salt}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
