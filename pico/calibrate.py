"""Pico: pre-merge calibration of the output-side factors B (spec, section 6; official yixuantt/Pico pico.py).

Per module, with B_all = [B_1 | ... | B_T] = U diag(s) V^T:
    c_k     = s_k^2 / sum_j s_j^2                 (collision degree: share of the B energy in direction u_k)
    alpha_k = 1 / (1 + kappa c_k)                 (kappa = T - 1 officially, so alpha_k lies in [1/T, 1])
    B'_t    = B_t + U diag(alpha - 1) U^T B_t     (= P B_t with P = U diag(alpha) U^T; A_t unchanged)
Then one of two rescalings: "pre" keeps each adapter's own update norm, B''_t = B'_t ||B_t A_t|| / ||B'_t A_t||
(the official folder/CLI mode), or "post" pins the merged update's norm to mean_t ||B_t A_t|| (the official API mode,
applied by the merge driver after the merge).

Besides the official rule, the ablation controls of spec section 6 are calibration modes here, so the skills report
can run them through the same merge path: "pico-random" (same alphas on a random orthonormal basis of col(B_all)),
"pico-uniform" (every alpha_k = mean(alpha)), "pico-a" (the same rule on the row space of the stacked A's) and
"pico-sharing" (alpha_k = 1 / e_k, e_k the effective number of tasks using direction k). ``gamma`` raises alpha to
a power (strength sweep).
"""

from __future__ import annotations

import hashlib

import torch

from .linalg import energy_share, frob_norm_of_product, subspace_overlap, thin_svd

MODES = {
    "none": "no calibration",
    "pico": "Pico: shrink shared B directions by 1/(1+kappa c_k) (official rule)",
    "pico-random": "control: Pico's alphas on a random orthonormal basis of col(B_all)",
    "pico-uniform": "control: every direction shrunk by the mean Pico alpha",
    "pico-a": "control: the Pico rule applied to the row space of the stacked A's instead of B",
    "pico-sharing": "variant: alpha_k = 1/e_k, e_k = effective number of tasks sharing direction k",
}


def module_generator(seed: int, module: str, salt: str) -> torch.Generator:
    """A CPU generator that depends only on (seed, module, salt): random draws do not depend on batching/device."""
    digest = hashlib.sha256(f"{seed}:{module}:{salt}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _haar(k: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(k, dtype=torch.float64))


def pico_alphas(c: torch.Tensor, kappa: float, gamma: float = 1.0) -> torch.Tensor:
    return (1.0 / (1.0 + kappa * c)) ** gamma


def _shrink(x_all: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """x + U diag(alpha - 1) U^T x, the official update form (exact for x in span(U))."""
    return x_all + u @ ((alpha - 1).unsqueeze(-1) * (u.mT @ x_all))


def calibrate(bs: list[torch.Tensor], as_: list[torch.Tensor], *, mode: str = "pico", kappa: float | None = None,
              gamma: float = 1.0, rescale_pre: bool = False, modules: list[str] | None = None, seed: int = 0,
              diagnostics: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor]]:
    """Calibrate one batch of modules: ``bs[t]`` is (L, m, r_t), ``as_[t]`` is (L, r_t, n).

    Returns the calibrated (B'_t, A'_t) and per-module diagnostics (tensors with leading dim L).
    """
    T = len(bs)
    kappa = float(T - 1) if kappa is None else float(kappa)
    ranks = [b.shape[-1] for b in bs]
    b_all = torch.cat(bs, dim=-1)
    u_b, s_b, _ = thin_svd(b_all)
    c_b = energy_share(s_b)
    diag: dict[str, torch.Tensor] = {}

    if mode == "pico-a":
        a_all_t = torch.cat(as_, dim=-2).mT  # (L, n, R): the rows of the stacked A as columns
        v_a, s_a, _ = thin_svd(a_all_t)
        alpha = pico_alphas(energy_share(s_a), kappa, gamma)
        as_new = _shrink(a_all_t, v_a, alpha).mT.split(ranks, dim=-2)
        bs_new = list(bs)
        as_new = list(as_new)
    else:
        if mode == "pico":
            alpha, basis = pico_alphas(c_b, kappa, gamma), u_b
        elif mode == "pico-uniform":
            alpha, basis = pico_alphas(c_b, kappa, gamma).mean(-1, keepdim=True).expand_as(c_b), u_b
        elif mode == "pico-random":
            alpha = pico_alphas(c_b, kappa, gamma)
            k = u_b.shape[-1]
            names = modules or [str(i) for i in range(u_b.shape[0])]
            rot = torch.stack([_haar(k, module_generator(seed, name, "pico-random")) for name in names])
            basis = u_b @ rot.to(u_b)
        elif mode == "pico-sharing":
            # participation p_{k,t} = ||u_k^T B_t||^2 / sum_t (.), e_k = exp(entropy of p_k)
            proj = torch.stack([(u_b.mT @ b).square().sum(-1) for b in bs], dim=-1)  # (L, k, T)
            p = proj / proj.sum(-1, keepdim=True).clamp_min(1e-30)
            entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
            alpha, basis = torch.exp(-entropy) ** gamma, u_b
        else:
            raise ValueError(f"unknown calibration mode {mode!r}; choose from {', '.join(MODES)}")
        bs_new = list(_shrink(b_all, basis, alpha).split(ranks, dim=-1))
        as_new = list(as_)
    if rescale_pre:  # per-adapter norm preservation: ||B''_t A''_t|| = ||B_t A_t||
        for t in range(T):
            before = frob_norm_of_product(bs[t], as_[t])
            after = frob_norm_of_product(bs_new[t], as_new[t])
            factor = torch.where(after > 0, before / after.clamp_min(1e-30), torch.ones_like(after))
            bs_new[t] = bs_new[t] * factor[..., None, None]
    diag["alpha"] = alpha
    if diagnostics:
        diag.update(overlap_diagnostics(bs, as_, c_b=c_b))
    return bs_new, as_new, diag


def overlap_diagnostics(bs: list[torch.Tensor], as_: list[torch.Tensor],
                        c_b: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The paper's B-versus-A picture per module: collision spectra of the stacked B and A, and the mean pairwise
    overlap of the tasks' B column spaces against their A row spaces."""
    if c_b is None:
        c_b = energy_share(thin_svd(torch.cat(bs, dim=-1))[1])
    c_a = energy_share(thin_svd(torch.cat(as_, dim=-2).mT)[1])
    q_b = [torch.linalg.qr(b)[0] for b in bs]
    q_a = [torch.linalg.qr(a.mT)[0] for a in as_]
    return {"collision_B": c_b, "collision_A": c_a, "overlap_B": subspace_overlap(q_b),
            "overlap_A": subspace_overlap(q_a)}
