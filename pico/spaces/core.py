import torch

from pico import factored
from pico.batch import CalibratedBatch, calibrate_factors
from pico.calibrations import get_calibration
from pico.linalg import single_thread, thin_svd
from pico.spaces import Space, space


@space("core")
class Core(Space):
    """Core Space: R x R cores in the SVD bases of the stacked B and A (exact, rank <= sum of ranks)

    The tasks' cores M_t = U_B^T B_t A_t V_A are exact (U_B M_t V_A^T = B_t A_t) and never form m x n; the output is
    B' = U_B M, A' = V_A^T. Calibrated and projected in Gram form (pico/factored.py) when the calibration has one and every module of the
    batch is well enough conditioned for it; otherwise through explicit factors, QRs and small SVDs.
    """

    def bytes_per_module(self, m, n, ranks):
        R, T = sum(ranks), len(ranks)
        return 4 * (8 * (m + n) * R + 4 * T * R * R)

    def rank_bound(self, m, n, ranks, rank):
        return min(sum(ranks), n)

    def calibrate(self, aset, modules, recipe, device, diagnostics=True):
        cal = get_calibration(recipe.calibrate)
        if not (factored.ENABLED and cal.gram):
            return super().calibrate(aset, modules, recipe, device, diagnostics)
        ranks = aset.shape(modules[0])[2]
        stacked = factored.load(aset, modules, device)
        fc, norms, diag = factored.calibrate(stacked, mode=recipe.calibrate, kappa=recipe.kappa, gamma=recipe.gamma,
                                             rescale_pre=recipe.rescale == "pre",
                                             diagnostics=diagnostics and cal.side is not None)
        if fc is not None:
            return CalibratedBatch(modules, ranks, None, None, norms, diag, factored=fc)
        bs, as_ = stacked.split()  # the general path on the same (float32) factors
        del stacked
        return calibrate_factors(modules, ranks, bs, as_, recipe, diagnostics)

    def project(self, cal):
        if cal.factored is not None:
            return cal.factored.project(), cal.factored
        return self.project_factors(cal.bs, cal.as_)

    def project_factors(self, bs, as_):
        # Reference bases: U_B of the stacked B's and V_A of the stacked A's, no truncation. Cores are computed as
        # (U_B^T B_t)(A_t V_A) at O((m + n) R r) cost; U_B M_t V_A^T == B_t A_t exactly.
        u_b = thin_svd(torch.cat(bs, dim=-1))[0]
        v_a = thin_svd(torch.cat(as_, dim=-2).mT)[0]
        factors = [(u_b.mT @ b, a @ v_a) for b, a in zip(bs, as_)]
        cores = torch.stack([left @ right for left, right in factors], dim=1)
        return cores, {"u_b": u_b, "v_a": v_a, "factors": factors}

    def task_factors(self, cal, state):
        if isinstance(state, factored.FactoredCore):
            return state.task_factors()
        return state["factors"]

    def reconstruct(self, merged, state, rank):
        if isinstance(state, factored.FactoredCore):
            b, a = state.reconstruct(merged)
        else:
            b, a = state["u_b"] @ merged, state["v_a"].mT
        return b, a, torch.full((merged.shape[0],), a.shape[-2]), None

    def compute(self, state, taus):
        return single_thread(isinstance(state, factored.FactoredCore) and not taus.is_cuda)  # many small R x R ops
