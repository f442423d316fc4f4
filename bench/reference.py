"""A slow, straightforward float64 reference of core-space Pico + TIES, module by module (spec sections 0, 1, 6).

Written from the spec, independently of pico's code paths: per module, plain ``torch.linalg.svd`` on the stacked
factors, Pico's B' = B + U diag(alpha - 1) U^T B, the Core Space bases of the calibrated factors, TIES on the R x R
cores (trim per task, elect by mass, disjoint mean), lambda, the post-merge rescale to the mean source-update norm,
and the merged update's factors (U_B M, V_A^T).
"""

from __future__ import annotations

import torch


def ties_cores(cores: torch.Tensor, density: float) -> torch.Tensor:
    """TIES on (T, p, q): TRIM (keep |x| >= the (d - int(d K))-th smallest |x| per task), ELECT by mass (zero signs
    to the majority sign), DISJOINT-MEAN."""
    T = cores.shape[0]
    flat = cores.reshape(T, -1)
    d = flat.shape[1]
    k = d - int(d * density)
    if density < 1 and k >= 1:
        kth = flat.abs().kthvalue(k, dim=1, keepdim=True).values
        flat = torch.where(flat.abs() >= kth, flat, torch.zeros_like(flat))
    gamma = flat.sum(0).sign()
    gamma[gamma == 0] = gamma.sum().sign()
    agree = torch.where(gamma > 0, flat > 0, flat < 0)
    merged = (flat * agree).sum(0) / agree.sum(0).clamp_min(1)
    return merged.reshape(cores.shape[1:])


def pico_ties_module(pairs: list[tuple[torch.Tensor, torch.Tensor]], density: float = 0.7, lam: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``pairs`` = [(B_t * s_t, A_t)] of one module. Returns the merged update's factors (B', A') in float64."""
    bs = [b.double() for b, _ in pairs]
    as_ = [a.double() for _, a in pairs]
    T = len(bs)
    b_all = torch.cat(bs, dim=1)
    u, s, _ = torch.linalg.svd(b_all, full_matrices=False)
    energy = s.square()
    c = energy / energy.sum().clamp_min(1e-12)
    alpha = 1.0 / (1.0 + (T - 1) * c)
    bs_cal = [b + u @ ((alpha - 1)[:, None] * (u.T @ b)) for b in bs]
    u_b = torch.linalg.svd(torch.cat(bs_cal, dim=1), full_matrices=False)[0]
    v_a = torch.linalg.svd(torch.cat(as_, dim=0).T, full_matrices=False)[0]
    cores = torch.stack([(u_b.T @ b) @ (a @ v_a) for b, a in zip(bs_cal, as_)])
    merged = ties_cores(cores, density) * lam
    target = torch.stack([frob_product(b, a) for b, a in zip(bs, as_)]).mean()
    norm = merged.norm()
    if norm > 0:
        merged = merged * (target / norm)
    return u_b @ merged, v_a.T


def frob_product(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """||B A||_F without forming B A."""
    return ((b.T @ b) * (a @ a.T)).sum().clamp_min(0).sqrt()


def relative_difference(b1: torch.Tensor, a1: torch.Tensor, b2: torch.Tensor, a2: torch.Tensor) -> float:
    """||B1 A1 - B2 A2||_F / ||B2 A2||_F in float64, through QRs of the stacked factors (never forms m x n)."""
    b = torch.cat([b1.double(), -b2.double()], dim=1)
    a = torch.cat([a1.double(), a2.double()], dim=0)
    diff = torch.linalg.qr(b)[1] @ torch.linalg.qr(a.T)[1].T
    ref = torch.linalg.qr(b2.double())[1] @ torch.linalg.qr(a2.double().T)[1].T
    return float(diff.norm() / ref.norm().clamp_min(1e-300))
