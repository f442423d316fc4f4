import torch

from pico.linalg import thin_svd
from pico.spaces import Space, space


@space("knots")
class Knots(Space):
    """KnOTS: shared left singular basis of [dW_1 ... dW_T], per-task coordinates (exact, rank <= R)

    The basis comes from a QR of the stacked B, never forming the m x Tn concatenation; the per-task coordinates are
    diag(s) V_t^T, so KnOTS-TA, -TIES and -DARE-TIES are the methods run on them.
    """

    def bytes_per_module(self, m, n, ranks):
        R, T = sum(ranks), len(ranks)
        return 4 * (8 * (m + n) * R + 4 * T * R * R)

    def rank_bound(self, m, n, ranks, rank):
        return min(sum(ranks), m)

    def project_factors(self, bs, as_):
        # [B_1 A_1 | ... | B_T A_T] = B_all blockdiag(A_t). With B_all = Q R_b and Z = R_b blockdiag(A_t) (R x Tn),
        # the SVD of Z gives the SVD of the concatenation without forming any m x Tn matrix.
        ranks = [b.shape[-1] for b in bs]
        q, r_b = torch.linalg.qr(torch.cat(bs, dim=-1))
        offsets = [sum(ranks[:t]) for t in range(len(ranks))]
        blocks = [r_b[..., i:i + r] @ a for i, r, a in zip(offsets, ranks, as_)]
        u_z, s, vh = thin_svd(torch.cat(blocks, dim=-1))  # vh: (L, k, T n)
        u = q @ u_z
        # Components with s <= 1e-5 are dropped (official threshold); in a batch they are zeroed and cut at write.
        keep = s > 1e-5
        s = s * keep
        n = as_[0].shape[-1]
        coords = torch.stack([s.unsqueeze(-1) * vh[..., t * n:(t + 1) * n] for t in range(len(bs))], dim=1)
        return coords, {"u": u, "keep": keep}

    def reconstruct(self, merged, state, rank):
        return state["u"], merged, state["keep"].sum(-1).cpu(), None
