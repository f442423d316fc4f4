import torch

from pico.linalg import lowrank_svd, polar, thin_svd
from pico.registry import Context, apply_weights, merge_method

# The devices on which TSV takes each task's SVD from the task's factors where the space has them (core and full
# space): two thin QRs and an r_t x r_t SVD instead of the SVD of a rank-r_t p x q matrix (which cuSOLVER's fast
# gesvda driver fails on). Not the CPU by default: its output bytes stay those of the dense route (the two routes
# agree to float64 rounding, not bit for bit).
FACTOR_SVD_DEVICES: tuple[str, ...] = ("cuda",)


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
    if ctx.factors is not None and x.device.type in FACTOR_SVD_DEVICES:
        triplets = _task_svds(ctx.factors, weights, keep, x.dtype)
    else:  # the dense route: the SVD of each p x q task matrix
        u, s, vh = thin_svd(x, top=max(keep))  # (L, T, p, k), (L, T, k), (L, T, k, q)
        triplets = [(u[:, t, :, :k], s[:, t, :k], vh[:, t, :k, :]) for t, k in enumerate(keep)]
    u_cat = torch.cat([u for u, _, _ in triplets], dim=-1)
    s_cat = torch.cat([s for _, s, _ in triplets], dim=-1)
    vh_cat = torch.cat([vh for _, _, vh in triplets], dim=-2)
    return polar(u_cat) @ (s_cat.unsqueeze(-1) * polar(vh_cat.mT).mT)


def _task_svds(factors, weights, keep, dtype) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each task's leading keep_t singular triplets of w_t P_t Q_t from its rank-r_t factors (``lowrank_svd``: two
    thin QRs and an r_t x r_t SVD, never the SVD of a rank-deficient p x q matrix); tasks of equal rank in one
    batch."""
    groups: dict[int, list[int]] = {}
    for t, (left, _) in enumerate(factors):
        groups.setdefault(left.shape[-1], []).append(t)
    out: list = [None] * len(factors)
    for tasks in groups.values():
        left = torch.stack([factors[t][0] * float(weights[t]) for t in tasks], dim=1)
        right = torch.stack([factors[t][1] for t in tasks], dim=1)
        u, s, vh = lowrank_svd(left.to(dtype), right.to(dtype), top=max(keep[t] for t in tasks))
        for i, t in enumerate(tasks):
            out[t] = (u[:, i, :, :keep[t]], s[:, i, :keep[t]], vh[:, i, :keep[t], :])
    return out
