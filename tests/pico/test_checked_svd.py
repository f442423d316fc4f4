"""The checked SVD behind the CUDA path of small_svd / psd_eig (pico/linalg.py): its error measure and its fallback,
exercised on the CPU with a stand-in for cuSOLVER's gesvda (the CUDA run itself is bench/gpu_check.py)."""

from __future__ import annotations

import pytest
import torch

from pico import linalg
from pico.linalg import GESVDA_TOL, checked_svd, svd_error


def _batch(L=6, m=10, n=8, rank=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(L, m, n, generator=g, dtype=torch.float64)
    if rank is not None:
        x = x[..., :rank] @ torch.randn(L, rank, n, generator=g, dtype=torch.float64)
    return x


def test_error_is_tiny_for_lapack_and_large_for_perturbed_decompositions():
    x = _batch()
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    assert svd_error(x, u, s, vh).max() < 1e-13
    u2 = u.clone()
    u2[2, :, 1] += 1e-8  # one vector of one matrix off by 1e-8
    err = svd_error(x, u2, s, vh)
    assert err[2] > GESVDA_TOL and (err[[0, 1, 3, 4, 5]] < 1e-13).all()
    s3 = s.clone()
    s3[1, [0, 1]] = s3[1, [1, 0]]  # out of order
    assert svd_error(x, u, s3, vh)[1] > GESVDA_TOL
    vh4 = vh.clone()
    vh4[4, 0, 0] = float("nan")
    assert svd_error(x, u, s, vh4)[4] == float("inf")
    z = torch.zeros(1, 4, 3, dtype=torch.float64)  # a zero matrix has no reliable vectors: always re-solved
    assert svd_error(z, *torch.linalg.svd(z, full_matrices=False))[0] == float("inf")


def test_top_checks_only_the_leading_triplets():
    x = _batch(rank=3)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    u[..., 3:] = 7.0  # garbage vectors for the zero singular values (what an approximate solver may return)
    vh[..., 3:, :] = -2.0
    assert (svd_error(x, u, s, vh, top=3) < 1e-13).all()
    assert (svd_error(x, u, s, vh) > GESVDA_TOL).all()


def _flipped(a):
    """A valid SVD that differs from LAPACK's (every singular vector's sign flipped): marks what `fast` returned."""
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return -u, s, -vh


@pytest.mark.parametrize("shape", [(5, 9, 6), (2, 3, 6, 6), (7, 4)])
def test_fallback_replaces_exactly_the_matrices_that_fail(shape, monkeypatch):
    monkeypatch.setattr(linalg, "GESVDA_STATS", {"calls": 0, "matrices": 0, "fallbacks": 0, "raised": 0,
                                                        "max_error": 0.0})
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    flat = x.reshape(-1, *shape[-2:])
    broken = [0, flat.shape[0] - 1] if flat.shape[0] > 1 else [0]

    def fast(a):
        u, s, vh = _flipped(a)
        u[broken, 0, 0] += 1e-6
        return u, s, vh

    u, s, vh = checked_svd(x, fast=fast, safe=lambda a: torch.linalg.svd(a, full_matrices=False))
    p = min(shape[-2:])
    assert u.shape == (*shape[:-1], p) and s.shape == (*shape[:-2], p) and vh.shape == (*shape[:-2], p, shape[-1])
    ref_u, _, ref_vh = torch.linalg.svd(flat, full_matrices=False)
    uf, vf = u.reshape(-1, *u.shape[-2:]), vh.reshape(-1, *vh.shape[-2:])
    for i in range(flat.shape[0]):
        want = (ref_u[i], ref_vh[i]) if i in broken else (-ref_u[i], -ref_vh[i])  # re-solved, or kept as returned
        assert torch.equal(uf[i], want[0]) and torch.equal(vf[i], want[1]), i
    assert (u @ torch.diag_embed(s) @ vh - x).abs().max() < 1e-12
    stats = linalg.GESVDA_STATS
    assert stats["calls"] == 1 and stats["matrices"] == flat.shape[0] and stats["fallbacks"] == len(broken)
    assert stats["max_error"] > GESVDA_TOL


def _stats(monkeypatch):
    monkeypatch.setattr(linalg, "GESVDA_STATS", {"calls": 0, "matrices": 0, "fallbacks": 0, "raised": 0,
                                                 "max_error": 0.0})
    return linalg.GESVDA_STATS


def _counting_safe(calls):
    def safe(a):
        calls.append(a.shape[0])
        return torch.linalg.svd(a, full_matrices=False)
    return safe


POISON = 1234.5  # a matrix with this entry makes the stand-in fast solver raise for any batch that holds it


def _raises_on_poison(a):
    if (a[:, 0, 0] == POISON).any():
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
    return _flipped(a)


@pytest.mark.parametrize("depth, resolved", [(5, [5]), (2, [4, 5, 6, 7])])
def test_a_raising_batch_is_bisected_and_only_the_raising_part_re_solved(depth, resolved, monkeypatch):
    stats = _stats(monkeypatch)
    monkeypatch.setattr(linalg, "BISECT_DEPTH", depth)
    x = _batch(L=16)
    x[5, 0, 0] = POISON
    calls = []
    u, s, vh = checked_svd(x, fast=_raises_on_poison, safe=_counting_safe(calls))
    ref_u, ref_s, ref_vh = torch.linalg.svd(x, full_matrices=False)
    for i in range(16):
        sign = 1 if i in resolved else -1  # re-solved by safe (LAPACK's signs), or kept from fast (flipped)
        assert torch.equal(u[i], sign * ref_u[i]) and torch.equal(vh[i], sign * ref_vh[i]), i
    assert torch.equal(s, ref_s)
    assert calls == [len(resolved)]  # one safe call, for the part that still raised
    # 16 -> 8 -> 4 -> 2 -> 1 matrices (depth 5), or 16 -> 8 -> 4 (depth 2): one raising call per level
    assert stats["raised"] == min(depth, 4) + 1 and stats["fallbacks"] == len(resolved) and stats["calls"] == 1


def test_a_batch_that_always_raises_is_re_solved_in_one_call(monkeypatch):
    stats = _stats(monkeypatch)
    x = _batch(L=3)

    def fast(a):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    calls = []
    u, s, vh = checked_svd(x, fast=fast, safe=_counting_safe(calls))
    assert all(torch.equal(p, q) for p, q in zip((u, s, vh), torch.linalg.svd(x, full_matrices=False)))
    assert calls == [3]
    assert stats["raised"] == 5 and stats["fallbacks"] == 3  # 3 -> (2 -> 1, 1), 1


def test_raised_and_inaccurate_matrices_are_re_solved_together(monkeypatch):
    stats = _stats(monkeypatch)
    x = _batch(L=8)
    x[6, 0, 0] = POISON

    def fast(a):
        u, s, vh = _raises_on_poison(a)
        u[..., 0, 0] += 1e-6 * (a[:, 1, 1] == x[1, 1, 1])  # matrix 1: a bad vector
        return u, s, vh

    calls = []
    u, s, vh = checked_svd(x, fast=fast, safe=_counting_safe(calls))
    assert calls == [2] and stats["fallbacks"] == 2
    assert (u @ torch.diag_embed(s) @ vh - x).abs().max() < 1e-12
    ref_u = torch.linalg.svd(x, full_matrices=False)[0]
    assert torch.equal(u[1], ref_u[1]) and torch.equal(u[6], ref_u[6]) and torch.equal(u[0], -ref_u[0])


def test_psd_form_checks_eigenvectors_of_a_gram():
    b = _batch(L=4, m=30, n=8)
    g = b.mT @ b
    v, e, vt = linalg._psd_eigh(g)
    assert (svd_error(g, v, e, vt) < 1e-13).all()
    v_bad = v.clone()
    v_bad[3, :, -1] *= 1.001  # the smallest eigenvector's length: what the Gram fast path divides by
    assert svd_error(g, v_bad, e, v_bad.mT)[3] > GESVDA_TOL
