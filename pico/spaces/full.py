import torch

from pico.linalg import small_svd
from pico.spaces import Space, space


@space("full")
class Full(Space):
    """dense m x n deltas B_t A_t (baseline; result truncated by SVD to --rank)"""

    def bytes_per_module(self, m, n, ranks):
        return 4 * (4 * len(ranks) * m * n)

    def rank_bound(self, m, n, ranks, rank):
        return min(rank or sum(ranks), m, n)

    def project_factors(self, bs, as_):
        return torch.stack([b @ a for b, a in zip(bs, as_)], dim=1), None

    def task_factors(self, cal, state):
        return list(zip(cal.bs, cal.as_))

    def reconstruct(self, merged, state, rank):
        # truncated SVD, S folded into B as PEFT's svd combination does
        L = merged.shape[0]
        k = min(rank, *merged.shape[-2:])
        u, s, vh = _dense_svd(merged, k)
        energy = s.square()
        kept = energy[..., :k].sum(-1) / energy.sum(-1).clamp_min(1e-30)
        return u[..., :k] * s[..., None, :k], vh[..., :k, :], torch.full((L,), k), kept.cpu()


def _dense_svd(x: torch.Tensor, top: int):
    m, n = x.shape[-2:]
    if min(m, n) <= 1024:
        return small_svd(x, top)  # float64: exact truncation for the baseline
    return torch.linalg.svd(x, full_matrices=False)
