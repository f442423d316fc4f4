"""Core-space merges computed from the stacked factors' R x R Gram matrices (the fast path of a core-space merge).

The general path (``calibrate`` + ``spaces.project``/``reconstruct``) runs a QR and a small SVD of the stacked B's
for Pico, again for the Core Space basis, and again on the stacked A's, and forms the calibrated factors. All of
that is determined by two R x R matrices per module, G_B = B_all^T B_all and G_A = A_all A_all^T (float64, so
products of float32 inputs are exact up to 1e-16), with B_all = [B_1 .. B_T] (m x R) and A_all = [A_1; ..; A_T]:

- Pico: G_B = V diag(e) V^T gives the singular values sqrt(e) and right vectors V of B_all; the calibrated
  B'_all = U diag(alpha) U^T B_all equals B_all C with C = V diag(alpha) V^T (R x R). Every calibration mode of
  ``calibrate`` except the random-basis control is such a right (or, for the A-space control, left) R x R map;
  the per-adapter "pre" rescale scales C's column blocks. Update norms ||B_t A_t||_F come from Gram blocks.
- Core Space: with C^T G_B C = V' diag(s_b^2) V'^T and D G_A D^T = W diag(s_a^2) W^T, the bases are
  U_B = B'_all V' diag(1/s_b) and V_A = A'_all^T W diag(1/s_a), and the cores are
  M_t = U_B^T B'_t A'_t V_A = (diag(s_b) V'^T[:, cols_t]) (W[rows_t, :] diag(s_a)) -- R x R arithmetic only.
- Output: B_out = U_B M = B_all (C V' diag(1/s_b) M) and A_out = V_A^T = (diag(1/s_a) W^T D) A_all: one
  m x R x R and one R x R x n product (float64), the only passes over the data besides the two Grams.

So a module costs two Gram products and two output products instead of three QRs, three small SVDs and the
explicit calibrated factors. The bases are orthonormal only to the extent that the Grams' eigenvectors resolve the
smallest singular values (errors grow like 1e-16 cond^2): this path is used when every module of the batch has full
rank R <= min(m, n) and a condition number below ``MAX_COND`` = 1e5 (measured: TA, TIES and TSV agree with the
float64 general path to 4e-8 up to cond 6e5; TSV drifts from 5e6); otherwise (and for the random-basis control, whose result depends on the
backend's sign convention for U) the merge driver takes the general path. Results agree with the general path to
float32 rounding (tests/test_bench_fastpath.py) and are independent of eigenvector signs: TIES, TA and TSV on cores
are invariant to signed permutations of the bases, and the A' factor uses canonically signed eigenvectors.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from .calibrations import CALIBRATIONS, Spectrum, get_calibration
from .errors import RecipeError
from .linalg import energy_share, gram, mul64, psd_eig, single_thread

ENABLED = True  # switch for tests and benchmarks that compare against the general path
MAX_COND = 1e5  # largest condition number of B_all or A_all (and of the calibrated B'_all) the fast path accepts


@dataclass
class Stacked:
    """One batch of L modules of equal shape: stacked factors (scale absorbed; float32 on the CPU, where the
    float64 products go through scratch buffers, float64 on a GPU) and their float64 Grams."""

    b_all: torch.Tensor  # (L, m, R)
    a_all: torch.Tensor  # (L, R, n)
    ranks: tuple[int, ...]
    g_b: torch.Tensor = field(init=False)  # (L, R, R) = B_all^T B_all
    g_a: torch.Tensor = field(init=False)  # (L, R, R) = A_all A_all^T

    def __post_init__(self):
        self.g_b = gram(self.b_all)
        self.g_a = gram(self.a_all, wide=True)

    def split(self, dtype=torch.float32) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The per-task factors (B_t, A_t) as lists of (L, m, r_t) / (L, r_t, n) in ``dtype``."""
        bs = [b.to(dtype) for b in self.b_all.split(list(self.ranks), dim=-1)]
        as_ = [a.to(dtype) for a in self.a_all.split(list(self.ranks), dim=-2)]
        return bs, as_


def load(aset, modules: list[str], device: torch.device) -> Stacked:
    """Read a batch of modules of equal shape from an AdapterSet and stack it on ``device``. The many small reads
    and copies run on one thread (see ``linalg.single_thread``); the Gram products use the configured threads."""
    with single_thread():
        b_all, a_all, ranks = _fill((aset.factors(m, check=False) for m in modules), len(modules), device)
        if device.type != "cpu":  # moved first, so that the check below runs there rather than on the host
            b_all, a_all = _to_device(b_all, device), _to_device(a_all, device)
        # one NaN/Inf check for the whole batch (a float64 sum cannot overflow on float32 data); on failure the
        # per-tensor check finds and names the culprit
        if not (torch.isfinite(b_all.sum(dtype=torch.float64)) and torch.isfinite(a_all.sum(dtype=torch.float64))):
            for m in modules:
                aset.factors(m)
    return Stacked(b_all, a_all, ranks)


def stack(pairs, device: torch.device) -> Stacked:
    """``pairs[l]`` = the T pairs (B_t, A_t) of module l (float32, scale absorbed) -> a Stacked batch on ``device``."""
    b_all, a_all, ranks = _fill(pairs, len(pairs), device)
    if device.type != "cpu":
        b_all, a_all = _to_device(b_all, device), _to_device(a_all, device)
    return Stacked(b_all, a_all, ranks)


def _fill(pairs, count: int, device: torch.device):
    """Copy the factors into float32 stacks (pinned memory for a GPU: half the bytes of float64 to move; widened
    to float64 on the device)."""
    it = iter(pairs)
    first = next(it)
    ranks = tuple(b.shape[-1] for b, _ in first)
    m, n, R = first[0][0].shape[0], first[0][1].shape[1], sum(ranks)
    cuda = device.type == "cuda"
    b_all = torch.empty(count, m, R, dtype=torch.float32, pin_memory=cuda)
    a_all = torch.empty(count, R, n, dtype=torch.float32, pin_memory=cuda)
    for i, module in enumerate(itertools.chain([first], it)):
        off = 0
        for b, a in module:
            r = b.shape[-1]
            b_all[i, :, off:off + r] = b
            a_all[i, off:off + r, :] = a
            off += r
    return b_all, a_all, ranks


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A pinned float32 stack copied to the device without blocking the host, then widened to float64 there."""
    return x.to(device, non_blocking=True).double()


def _blocks(ranks) -> list[slice]:
    out, off = [], 0
    for r in ranks:
        out.append(slice(off, off + r))
        off += r
    return out


def _diag_blocks(x: torch.Tensor, ranks) -> torch.Tensor:
    """The diagonal blocks (..., T, r, r) of (..., R, R) when all ranks are equal."""
    T, r = len(ranks), ranks[0]
    return x.unflatten(-1, (T, r)).unflatten(-3, (T, r)).diagonal(dim1=-4, dim2=-2).movedim(-1, -3)


def _block_inner(g_b: torch.Tensor, g_a: torch.Tensor, ranks) -> torch.Tensor:
    """||B_t A_t||_F^2 = <B_t^T B_t, A_t A_t^T> for every task: (L, T)."""
    if len(set(ranks)) == 1:
        return (_diag_blocks(g_b, ranks) * _diag_blocks(g_a, ranks)).sum((-2, -1))
    return torch.stack([(g_b[..., s, s] * g_a[..., s, s]).sum((-2, -1)) for s in _blocks(ranks)], dim=-1)


def _whitener(g: torch.Tensor, ranks) -> torch.Tensor:
    """Block-diagonal W with W_t^T G_tt W_t = I: Q_t = X_t W_t is an orthonormal basis of task t's factor."""
    w = torch.zeros_like(g)
    blocks = _blocks(ranks)
    if len(set(ranks)) == 1:  # equal ranks: one batched eigendecomposition of all diagonal blocks
        e, v = psd_eig(_diag_blocks(g, ranks).contiguous())
        inv = torch.where(e > e[..., :1] * 1e-24, e.clamp_min(1e-300).rsqrt(), torch.zeros_like(e))
        wt = v * inv.unsqueeze(-2)
        for t, s in enumerate(blocks):
            w[..., s, s] = wt[..., t, :, :]
        return w
    for s in blocks:
        e, v = psd_eig(g[..., s, s])
        inv = torch.where(e > e[..., :1] * 1e-24, e.clamp_min(1e-300).rsqrt(), torch.zeros_like(e))
        w[..., s, s] = v * inv.unsqueeze(-2)
    return w


def _overlap(g: torch.Tensor, ranks) -> torch.Tensor:
    """Mean over task pairs of ||Q_t^T Q_u||_F^2 / min(r_t, r_u) (as ``linalg.subspace_overlap``), from the Gram."""
    T = len(ranks)
    if T < 2:
        return torch.ones(g.shape[:-2], dtype=g.dtype, device=g.device)
    w = _whitener(g, ranks)
    z = w.mT @ g @ w  # block (t, u) = Q_t^T Q_u
    if len(set(ranks)) == 1:
        r = ranks[0]
        pair = z.unflatten(-1, (T, r)).unflatten(-3, (T, r)).square().sum((-3, -1)) / r  # (..., T, T)
        return pair.triu(1).sum((-2, -1)) / (T * (T - 1) / 2)
    blocks = _blocks(ranks)
    total = 0
    for t in range(T):
        for u in range(t + 1, T):
            total = total + z[..., blocks[t], blocks[u]].square().sum((-2, -1)) / min(ranks[t], ranks[u])
    return total / (T * (T - 1) / 2)


def _cond_ok(e: torch.Tensor, p: int) -> bool:
    """Every module's Gram has p eigenvalues, the smallest above e_max / MAX_COND^2."""
    return bool((e[..., p - 1] > e[..., 0] / MAX_COND ** 2).all())


@dataclass
class FactoredCore:
    """A calibrated batch in Gram form: B'_all = B_all C, A'_all = D A_all (C, D None = identity), and the
    eigendecompositions of the calibrated Grams that give the Core Space bases."""

    stacked: Stacked
    c: torch.Tensor | None
    d: torch.Tensor | None
    e_b: torch.Tensor  # (L, R) eigenvalues of C^T G_B C, descending
    v_b: torch.Tensor  # (L, R, R) its eigenvectors
    e_a: torch.Tensor  # (L, R) eigenvalues of D G_A D^T
    w_a: torch.Tensor  # (L, R, R)

    @property
    def ranks(self) -> tuple[int, ...]:
        return self.stacked.ranks

    def materialize(self, dtype=torch.float32) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The calibrated factors (B'_t, A'_t) explicitly, for the general path (other spaces)."""
        s = self.stacked
        b = s.b_all if self.c is None else mul64(s.b_all, self.c, dtype=torch.float64)
        a = s.a_all if self.d is None else mul64(s.a_all, self.d, left=True, dtype=torch.float64)
        bs = [x.to(dtype) for x in b.split(list(self.ranks), dim=-1)]
        as_ = [x.to(dtype) for x in a.split(list(self.ranks), dim=-2)]
        return bs, as_

    def project(self) -> torch.Tensor:
        """The task cores M_t (L, T, R, R), float64."""
        with single_thread(not self.e_b.is_cuda):
            return torch.stack([left @ right for left, right in self.task_factors()], dim=1)

    def task_factors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The cores' factors (L, R, r_t) and (L, r_t, R): M_t = (diag(s_b) V'^T[:, cols_t]) (W[rows_t, :] diag(s_a))."""
        s_b, s_a = self.e_b.sqrt(), self.e_a.sqrt()
        left = s_b.unsqueeze(-1) * self.v_b.mT  # diag(s_b) V'^T: (L, R, R), columns = stacked B columns
        right = self.w_a * s_a.unsqueeze(-2)  # W diag(s_a): rows = stacked A rows
        return [(left[..., :, s], right[..., s, :]) for s in _blocks(self.ranks)]

    def reconstruct(self, merged: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact-rank factors (B_out (L, m, R), A_out (L, R, n)) in float32 with B_out A_out = U_B merged V_A^T."""
        s = self.stacked
        x_b = self.v_b @ (merged / self.e_b.sqrt().unsqueeze(-1))  # V' diag(1/s_b) M
        if self.c is not None:
            x_b = self.c @ x_b
        x_a = self.w_a.mT / self.e_a.sqrt().unsqueeze(-1)  # diag(1/s_a) W^T
        if self.d is not None:
            x_a = x_a @ self.d
        return mul64(s.b_all, x_b), mul64(s.a_all, x_a, left=True)


def _spectral_eig(e: torch.Tensor, v: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition of V diag(scale^2 e) V^T, reusing V: eigenvalues re-sorted in descending order."""
    e2 = e * scale.square()
    order = e2.argsort(dim=-1, descending=True, stable=True)
    return e2.gather(-1, order), v.gather(-1, order.unsqueeze(-2).expand_as(v))


def calibrate(stacked: Stacked, *, mode: str = "pico", kappa: float | None = None, gamma: float = 1.0,
              rescale_pre: bool = False, diagnostics: bool = True
              ) -> tuple[FactoredCore | None, torch.Tensor, dict[str, torch.Tensor]]:
    """The Gram form of ``pico.calibrate.calibrate``, for every registered calibration with a Gram form (the same
    function computes the alphas on both paths, from a Spectrum built here from the Gram's eigendecomposition).

    Returns (the calibrated batch, or None when the fast path does not apply to it; the uncalibrated update norms
    ||B_t A_t||_F (L, T); per-module diagnostics with the same keys and values as ``calibrate``).
    Everything here is R x R algebra: on the CPU it runs on one thread.
    """
    with single_thread(not stacked.g_b.is_cuda):
        return _calibrate(stacked, mode, kappa, gamma, rescale_pre, diagnostics)


def gram_modes() -> tuple[str, ...]:
    """The calibrations this path applies (every other one states why not: ``Calibration.no_gram``)."""
    return tuple(name for name, cal in CALIBRATIONS.items() if cal.gram)


def _participation(e: torch.Tensor, v: torch.Tensor, ranks) -> torch.Tensor:
    """||u_k^T X_t||^2 (L, k, T) from X_all^T X_all = V diag(e) V^T: u_k^T X_all = sqrt(e_k) V^T[k, :]."""
    return torch.stack([(e.unsqueeze(-1) * v.mT[..., :, s].square()).sum(-1) for s in _blocks(ranks)], dim=-1)


def _calibrate(stacked, mode, kappa, gamma, rescale_pre, diagnostics):
    cal = get_calibration(mode)
    if not cal.gram:
        raise RecipeError(f"calibration {mode!r} has no Gram form: {cal.no_gram}")
    ranks = stacked.ranks
    T, R = len(ranks), sum(ranks)
    m, n = stacked.b_all.shape[-2], stacked.a_all.shape[-1]
    kappa = float(T - 1) if kappa is None else float(kappa)
    g_b, g_a = stacked.g_b, stacked.g_a
    norms = _block_inner(g_b, g_a, ranks).clamp_min(0).sqrt()
    e_b, v_b = psd_eig(g_b)
    e_a, w_a = psd_eig(g_a)
    c_b = energy_share(e_b.sqrt())
    diag: dict[str, torch.Tensor] = {}
    ok = R <= min(m, n) and _cond_ok(e_b, R) and _cond_ok(e_a, R)

    c = d = None
    core_b, core_a = (e_b, v_b), (e_a, w_a)
    if cal.side is not None:
        e, v = (e_a, w_a) if cal.side == "A" else (e_b, v_b)
        share = energy_share(e_a.sqrt()) if cal.side == "A" else c_b
        alpha, rotation = cal.alphas(Spectrum(share, lambda: _participation(e, v, ranks)), kappa, gamma)
        if rotation is not None:
            raise RecipeError(f"calibration {mode!r} rotates its basis, which has no Gram form; register it with "
                             "no_gram='<why>'")
        x = (v * alpha.unsqueeze(-2)) @ v.mT  # X'_all = X_all V diag(alpha) V^T
        if cal.side == "A":
            d, core_a = x, _spectral_eig(e_a, w_a, alpha)
        else:
            c, core_b = x, _spectral_eig(e_b, v_b, alpha)
    if rescale_pre:  # ||B''_t A''_t|| = ||B_t A_t||: scale C's column block t
        g_b_cal = g_b if c is None else c.mT @ g_b @ c
        g_a_cal = g_a if d is None else d @ g_a @ d.mT
        after = _block_inner(g_b_cal, g_a_cal, ranks).clamp_min(0).sqrt()
        factor = torch.where(after > 0, norms / after.clamp_min(1e-30), torch.ones_like(after))
        cols = torch.cat([factor[..., t:t + 1].expand(*factor.shape[:-1], r) for t, r in enumerate(ranks)], dim=-1)
        c = (torch.eye(R, dtype=g_b.dtype, device=g_b.device) if c is None else c) * cols.unsqueeze(-2)
        core_b = psd_eig(c.mT @ g_b @ c)
    if not (ok and _cond_ok(core_b[0], R) and _cond_ok(core_a[0], R)):
        return None, norms, diag
    if cal.side is not None:
        diag["alpha"] = alpha
    if diagnostics:
        diag.update({"collision_B": c_b, "collision_A": energy_share(e_a.sqrt()),
                     "overlap_B": _overlap(g_b, ranks), "overlap_A": _overlap(g_a, ranks)})
    return FactoredCore(stacked, c, d, core_b[0], core_b[1], core_a[0], core_a[1]), norms, diag
