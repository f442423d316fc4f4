import torch

from pico.linalg import polar, thin_svd
from pico.registry import Context, apply_weights, merge_method


@merge_method("tsv", spaces=("full", "core"), reference_url="https://arxiv.org/abs/2412.00081")
def tsv_m(taus, weights, ctx: Context):
    """TSV-M: keep each task's top singular triplets, orthogonalise the stacked U and V (polar), sum."""
    x = apply_weights(taus, weights)
    T = x.shape[1]
    p = min(x.shape[-2:])
    # Official: k = int(p / T) per task. Deviation: never more than the task's rank r_t, because the slots past r_t
    # hold zero singular values whose vectors are an arbitrary completion that still changes the polar factor
    # (spec, section 3). Identical to the official rule when k <= r_t (Core Space with equal ranks: k = r).
    keep = [min(int(p / T), r) for r in ctx.ranks]
    u, s, vh = thin_svd(x, top=max(keep))  # (L, T, p, k), (L, T, k), (L, T, k, q)
    u_cat = torch.cat([u[:, t, :, :k] for t, k in enumerate(keep)], dim=-1)
    s_cat = torch.cat([s[:, t, :k] for t, k in enumerate(keep)], dim=-1)
    vh_cat = torch.cat([vh[:, t, :k, :] for t, k in enumerate(keep)], dim=-2)
    return polar(u_cat) @ (s_cat.unsqueeze(-1) * polar(vh_cat.mT).mT)
