"""Where a merge happens: full space, Core Space or KnOTS space (spec sections 1 and 2).

``project`` turns one batch of factor pairs into task matrices (L, T, p, q) for a method; ``reconstruct`` turns the
merged (L, p, q) back into LoRA factors B' (L, m, k), A' (L, k, n). Core and KnOTS are exact and never form an
m x n matrix; full space forms the dense deltas and truncates the merge by SVD to the requested rank.
"""

from __future__ import annotations

import torch

from .linalg import small_svd, thin_svd


def project(space: str, bs: list[torch.Tensor], as_: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    if space == "full":
        return torch.stack([b @ a for b, a in zip(bs, as_)], dim=1), {}
    if space == "core":
        # Reference bases: U_B of the stacked B's and V_A of the stacked A's, no truncation. Cores are computed as
        # (U_B^T B_t)(A_t V_A) at O((m + n) R r) cost; U_B M_t V_A^T == B_t A_t exactly.
        u_b = thin_svd(torch.cat(bs, dim=-1))[0]
        v_a = thin_svd(torch.cat(as_, dim=-2).mT)[0]
        cores = torch.stack([(u_b.mT @ b) @ (a @ v_a) for b, a in zip(bs, as_)], dim=1)
        return cores, {"u_b": u_b, "v_a": v_a}
    if space == "knots":
        # [B_1 A_1 | ... | B_T A_T] = B_all blockdiag(A_t). With B_all = Q R_b and Z = R_b blockdiag(A_t) (R x Tn),
        # the SVD of Z gives the SVD of the concatenation without forming any m x Tn matrix.
        ranks = [b.shape[-1] for b in bs]
        q, r_b = torch.linalg.qr(torch.cat(bs, dim=-1))
        blocks = [r_b[..., i:i + r] @ a for i, r, a in zip(_offsets(ranks), ranks, as_)]
        u_z, s, vh = thin_svd(torch.cat(blocks, dim=-1))  # vh: (L, k, T n)
        u = q @ u_z
        # Components with s <= 1e-5 are dropped (official threshold); in a batch they are zeroed and cut at write.
        keep = s > 1e-5
        s = s * keep
        n = as_[0].shape[-1]
        coords = torch.stack([s.unsqueeze(-1) * vh[..., t * n:(t + 1) * n] for t in range(len(bs))], dim=1)
        return coords, {"u": u, "keep": keep}
    raise ValueError(f"unknown space {space!r}")


def reconstruct(space: str, merged: torch.Tensor, state: dict, rank: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor, torch.Tensor]:
    """Factors (B', A') with B' A' = the merged update, plus the per-module output rank and kept energy fraction."""
    L = merged.shape[0]
    if space == "core":
        b, a = state["u_b"] @ merged, state["v_a"].mT
        return b, a, torch.full((L,), a.shape[-2]), torch.ones(L)
    if space == "knots":
        return state["u"], merged, state["keep"].sum(-1).cpu(), torch.ones(L)
    # full space: truncated SVD, S folded into B as PEFT's svd combination does.
    u, s, vh = _dense_svd(merged)
    k = min(rank, s.shape[-1])
    energy = s.square()
    kept = energy[..., :k].sum(-1) / energy.sum(-1).clamp_min(1e-30)
    return u[..., :k] * s[..., None, :k], vh[..., :k, :], torch.full((L,), k), kept.cpu()


def merged_norm(space: str, merged: torch.Tensor) -> torch.Tensor:
    """||dW_merged||_F: the bases of Core and KnOTS space are orthonormal, so the norm is that of the merged matrix."""
    return torch.linalg.matrix_norm(merged)


def _dense_svd(x: torch.Tensor):
    m, n = x.shape[-2:]
    if min(m, n) <= 1024:
        return small_svd(x)  # float64: exact truncation for the baseline
    return torch.linalg.svd(x, full_matrices=False)


def _offsets(ranks: list[int]) -> list[int]:
    out, acc = [], 0
    for r in ranks:
        out.append(acc)
        acc += r
    return out
