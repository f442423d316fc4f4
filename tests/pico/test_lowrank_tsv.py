"""TSV's per-task SVDs from the task factors (pico.linalg.lowrank_svd; pico/methods/tsv.py), the route a GPU takes:
equal to float64 SVDs of the dense products and to a straightforward float64 TSV-M, in every space that has factors,
on both core-space paths; the CPU keeps the dense route unless told otherwise."""

from __future__ import annotations

import pytest
import torch

import pico
from pico import factored
from pico.batch import CalibratedBatch
from pico.calibrate import calibrate
from pico.linalg import frob_norm_of_product, lowrank_svd
from pico.merge import merge_batch
from pico.methods import tsv
from pico.spaces import get_space

G = torch.Generator().manual_seed(7)


def randn(*shape):
    return torch.randn(*shape, generator=G, dtype=torch.float64)


def rel(x, y):
    return float((x - y).norm() / y.norm())


@pytest.mark.parametrize("p, q, r", [(40, 36, 5), (128, 128, 16), (3, 20, 5), (20, 3, 5), (4, 4, 6)])
def test_lowrank_svd_is_the_svd_of_the_product(p, q, r):
    left, right = randn(2, 3, p, r), randn(2, 3, r, q)
    x = left @ right
    u, s, vh = lowrank_svd(left, right)
    k = min(p, q, r)
    assert u.shape == (2, 3, p, k) and s.shape == (2, 3, k) and vh.shape == (2, 3, k, q)
    ref_u, ref_s, ref_vh = torch.linalg.svd(x, full_matrices=False)
    assert (s - ref_s[..., :k]).abs().max() < 1e-13 * ref_s.max()
    assert (u @ torch.diag_embed(s) @ vh - x).abs().max() < 1e-13 * x.abs().max()
    eye = torch.eye(k, dtype=torch.float64)
    assert (u.mT @ u - eye).abs().max() < 1e-13 and (vh @ vh.mT - eye).abs().max() < 1e-13
    # the vectors are LAPACK's up to sign (random singular values are distinct)
    dots = (u * ref_u[..., :k]).sum(-2).abs()
    assert (dots - 1).abs().max() < 1e-10


def test_lowrank_svd_of_rank_deficient_factors():
    left, right = randn(4, 30, 6), randn(4, 6, 25)
    left[0] = 0  # a zero task
    left[1, :, 5] = left[1, :, 0]  # rank 5
    right[2, 3:] = 0  # rank 3
    x = left @ right
    u, s, vh = lowrank_svd(left, right)
    ref = torch.linalg.svdvals(x)[..., :6]
    assert (s - ref).abs().max() < 1e-13 * ref.max()
    assert (u @ torch.diag_embed(s) @ vh - x).abs().max() < 1e-13 * x.abs().max()
    eye = torch.eye(6, dtype=torch.float64)
    assert (u.mT @ u - eye).abs().max() < 1e-13 and (vh @ vh.mT - eye).abs().max() < 1e-13
    assert s[0].abs().max() == 0 and (s[1, 5:] < 1e-13 * s[1, 0]).all() and (s[2, 3:] < 1e-13 * s[2, 0]).all()


def test_lowrank_svd_keeps_the_input_dtype():
    left, right = randn(2, 12, 3).float(), randn(2, 3, 10).float()
    u, s, vh = lowrank_svd(left, right)
    assert u.dtype == s.dtype == vh.dtype == torch.float32
    assert rel(u.double() @ torch.diag_embed(s.double()) @ vh.double(), left.double() @ right.double()) < 1e-6


def factor_lists(ranks=(3, 5, 4), m=40, n=36, L=2):
    common = randn(L, m, 4)
    bs = [(randn(L, m, r) + 2 * common @ randn(L, 4, r)) * 0.5 ** torch.arange(r, dtype=torch.float64)
          for r in ranks]
    as_ = [randn(L, r, n) for r in ranks]
    return bs, as_


def batch(bs, as_, path, mode):
    L, ranks = bs[0].shape[0], tuple(b.shape[-1] for b in bs)
    modules = [f"m{i}" for i in range(L)]
    if path == "fast":
        stacked = factored.stack([[(b[i], a[i]) for b, a in zip(bs, as_)] for i in range(L)], torch.device("cpu"))
        fc, norms, diag = factored.calibrate(stacked, mode=mode)
        assert fc is not None
        return CalibratedBatch(modules, ranks, None, None, norms, diag, factored=fc)
    norms = torch.stack([frob_norm_of_product(b, a) for b, a in zip(bs, as_)], dim=-1)
    if mode != "none":
        bs, as_, _ = calibrate(bs, as_, mode=mode)
    return CalibratedBatch(modules, ranks, bs, as_, norms, {})


CASES = [("core", "fast"), ("core", "general"), ("full", "general")]


@pytest.mark.parametrize("space, path", CASES)
def test_spaces_give_the_factors_of_their_task_matrices(space, path):
    bs, as_ = factor_lists()
    cal = batch(bs, as_, path, "pico")
    sp = get_space(space)
    taus, state = sp.project(cal)
    factors = sp.task_factors(cal, state)
    assert len(factors) == 3
    for t, (left, right) in enumerate(factors):
        assert left.shape[-1] == right.shape[-2] == bs[t].shape[-1]
        assert rel(left @ right, taus[:, t]) < 1e-14
    assert get_space("knots").task_factors(cal, None) is None


def tsv_reference(deltas, keep):
    """TSV-M on dense float64 task matrices (L, p, q) each, straight from the spec: per-task SVD truncated to
    keep_t, stacked U and V orthogonalised by the polar factor from their SVDs, summed with the stacked values."""
    us, ss, vs = [], [], []
    for d, k in zip(deltas, keep):
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        us.append(u[..., :k]), ss.append(s[..., :k]), vs.append(vh[..., :k, :].mT)

    def polar(x):
        u, _, vh = torch.linalg.svd(x, full_matrices=False)
        return u @ vh

    u, s, v = torch.cat(us, -1), torch.cat(ss, -1), torch.cat(vs, -1)
    return polar(u) @ torch.diag_embed(s) @ polar(v).mT


@pytest.mark.parametrize("space, path", CASES)
@pytest.mark.parametrize("ranks", [(3, 5, 4), (4, 4, 4)])
def test_factored_tsv_equals_the_dense_route_and_the_reference(space, path, ranks, monkeypatch):
    bs, as_ = factor_lists(ranks)
    weights = [1.0, -0.5, 2.0]
    recipe = pico.Recipe(method="tsv", space=space, calibrate="pico", rescale="none", weights=weights, lam=0.7)
    cal = batch(bs, as_, path, "pico")
    dense = merge_batch(cal, recipe)
    monkeypatch.setattr(tsv, "FACTOR_SVD_DEVICES", ("cpu",))
    calls = []
    monkeypatch.setattr(tsv, "lowrank_svd", lambda *a, **k: calls.append(a[0].shape) or lowrank_svd(*a, **k))
    fact = merge_batch(cal, recipe)
    assert len(calls) == len(set(ranks))  # one batched call per distinct rank
    out_d = torch.stack([r.b.double() @ r.a.double() for r in dense])
    out_f = torch.stack([r.b.double() @ r.a.double() for r in fact])
    assert rel(out_f, out_d) < 1e-6  # float32 output factors, float64 inside both routes
    for rf, rd in zip(fact, dense):
        assert abs(rf.info["norm_ratio"] / rd.info["norm_ratio"] - 1) < 1e-5
    # the reference: the calibrated updates as dense float64 matrices, merged in full space, or their cores in
    # Core Space (bases from SVDs of the stacked calibrated factors)
    cb, ca, _ = calibrate(bs, as_, mode="pico")
    deltas = [w * b @ a for w, b, a in zip(weights, cb, ca)]
    p = min(deltas[0].shape[-2:]) if space == "full" else sum(ranks)
    keep = [min(p // 3, r) for r in ranks]
    if space == "full":
        want = 0.7 * tsv_reference(deltas, keep)
    else:
        u_b = torch.linalg.svd(torch.cat(cb, -1), full_matrices=False)[0]
        v_a = torch.linalg.svd(torch.cat(ca, -2), full_matrices=False)[2].mT
        want = 0.7 * u_b @ tsv_reference([u_b.mT @ d @ v_a for d in deltas], keep) @ v_a.mT
    assert rel(out_f, want) < 1e-6


def test_the_cpu_keeps_the_dense_route_by_default(monkeypatch):
    assert tsv.FACTOR_SVD_DEVICES == ("cuda",)
    monkeypatch.setattr(tsv, "lowrank_svd", lambda *a, **k: pytest.fail("factored route taken on the CPU"))
    bs, as_ = factor_lists()
    for space, path in CASES:
        merge_batch(batch(bs, as_, path, "pico"), pico.Recipe(method="tsv", space=space, calibrate="pico"))
