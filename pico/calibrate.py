"""Pico: pre-merge calibration of the output-side factors B (spec, section 6; official yixuantt/Pico pico.py).

Per module, with B_all = [B_1 | ... | B_T] = U diag(s) V^T:
    c_k     = s_k^2 / sum_j s_j^2                 (collision degree: share of the B energy in direction u_k)
    alpha_k = 1 / (1 + kappa c_k)                 (kappa = T - 1 officially, so alpha_k lies in [1/T, 1])
    B'_t    = B_t + U diag(alpha - 1) U^T B_t     (= P B_t with P = U diag(alpha) U^T; A_t unchanged)
Then one of two rescalings: "pre" keeps each adapter's own update norm, B''_t = B'_t ||B_t A_t|| / ||B'_t A_t||
(the official folder/CLI mode), or "post" pins the merged update's norm to mean_t ||B_t A_t|| (the official API mode,
applied by the merge driver after the merge).

Besides the official rule, the ablation controls of spec section 6 are calibration modes here, so the skills report
can run them through the same merge path. Each mode is one file in pico/calibrations/ that computes the alphas from
a :class:`~pico.calibrations.Spectrum`; this module is the general path that applies them to explicit factors (the
core space's Gram fast path, pico/factored.py, applies the same alphas in Gram form). ``gamma`` raises alpha to a
power (strength sweep).
"""

from __future__ import annotations

import torch

from .calibrations import Spectrum, get_calibration
from .linalg import energy_share, frob_norm_of_product, subspace_overlap, thin_svd


def _shrink(x_all: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """x + U diag(alpha - 1) U^T x, the official update form (exact for x in span(U))."""
    return x_all + u @ ((alpha - 1).unsqueeze(-1) * (u.mT @ x_all))


def calibrate(bs: list[torch.Tensor], as_: list[torch.Tensor], *, mode: str = "pico", kappa: float | None = None,
              gamma: float = 1.0, rescale_pre: bool = False, modules: list[str] | None = None, seed: int = 0,
              diagnostics: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor]]:
    """Calibrate one batch of modules: ``bs[t]`` is (L, m, r_t), ``as_[t]`` is (L, r_t, n).

    Returns the calibrated (B'_t, A'_t) and per-module diagnostics (tensors with leading dim L).
    """
    cal = get_calibration(mode)
    T = len(bs)
    kappa = float(T - 1) if kappa is None else float(kappa)
    ranks = [b.shape[-1] for b in bs]
    b_all = torch.cat(bs, dim=-1)
    u_b, s_b, _ = thin_svd(b_all)
    c_b = energy_share(s_b)
    diag: dict[str, torch.Tensor] = {}
    bs_new, as_new = list(bs), list(as_)
    if cal.side is not None:
        if cal.side == "A":  # the rows of the stacked A as columns: (L, n, R)
            parts = [a.mT for a in as_]
            x_all = torch.cat(as_, dim=-2).mT
            u, s, _ = thin_svd(x_all)
            share = energy_share(s)
        else:
            parts, x_all, u, share = bs, b_all, u_b, c_b
        spec = Spectrum(share, lambda: torch.stack([(u.mT @ x).square().sum(-1) for x in parts], dim=-1),
                        modules=modules, seed=seed)
        alpha, rotation = cal.alphas(spec, kappa, gamma)
        basis = u if rotation is None else u @ rotation.to(u)
        shrunk = _shrink(x_all, basis, alpha)
        if cal.side == "A":
            as_new = list(shrunk.mT.split(ranks, dim=-2))
        else:
            bs_new = list(shrunk.split(ranks, dim=-1))
        diag["alpha"] = alpha
    if rescale_pre:  # per-adapter norm preservation: ||B''_t A''_t|| = ||B_t A_t||
        for t in range(T):
            before = frob_norm_of_product(bs[t], as_[t])
            after = frob_norm_of_product(bs_new[t], as_new[t])
            factor = torch.where(after > 0, before / after.clamp_min(1e-30), torch.ones_like(after))
            bs_new[t] = bs_new[t] * factor[..., None, None]
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
