"""Batched linear-algebra primitives shared by the spaces, Pico and the methods.

Every function takes a leading batch of modules with equal shapes (..., m, k). Tall-and-skinny SVDs go through a
QR first and a small k x k SVD in float64 (spec hint: the SVD of stacked LoRA factors is cheap through its R factor),
so the cost is O(m k^2) in the working dtype plus a float64 problem of size k that is exact to float64 precision.
"""

from __future__ import annotations

import torch


def small_svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of small matrices in float64 (k x k after a QR), returned in the input dtype."""
    u, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return u.to(x.dtype), s.to(x.dtype), vh.to(x.dtype)


def thin_svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD X = U diag(S) Vh of a batch of matrices (..., m, k), via QR when X is tall."""
    m, k = x.shape[-2:]
    if m > k:
        q, r = torch.linalg.qr(x)
        u, s, vh = small_svd(r)
        return q @ u, s, vh
    if k > m:
        u, s, vh = thin_svd(x.mT)
        return vh.mT, s, u.mT
    return small_svd(x)


def polar(x: torch.Tensor) -> torch.Tensor:
    """Nearest matrix with orthonormal columns (Procrustes): U Vh of the thin SVD."""
    u, _, vh = thin_svd(x)
    return u @ vh


def frob_norm_of_product(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """||B A||_F without forming B A: sqrt(<B^T B, A A^T>), batched over leading dims."""
    gram = ((b.mT @ b) * (a @ a.mT)).sum((-2, -1))
    return gram.clamp_min(0).sqrt()


def energy_share(s: torch.Tensor) -> torch.Tensor:
    """c_k = s_k^2 / sum_j s_j^2 (denominator clamped at 1e-12, as in the official Pico code)."""
    energy = s.square()
    return energy / energy.sum(-1, keepdim=True).clamp_min(1e-12)


def subspace_overlap(bases: list[torch.Tensor]) -> torch.Tensor:
    """Mean over task pairs of ||Q_t^T Q_u||_F^2 / min(r_t, r_u): 1 = same subspace, ~r/m = unrelated.

    ``bases`` are orthonormal column bases (..., m, r_t); returns one value per batch entry.
    """
    pairs = [(t, u) for t in range(len(bases)) for u in range(t + 1, len(bases))]
    if not pairs:
        return torch.ones(bases[0].shape[:-2], dtype=bases[0].dtype, device=bases[0].device)
    total = 0
    for t, u in pairs:
        total = total + (bases[t].mT @ bases[u]).square().sum((-2, -1)) / min(bases[t].shape[-1], bases[u].shape[-1])
    return total / len(pairs)
