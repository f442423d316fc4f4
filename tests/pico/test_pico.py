"""The Pico properties of spec section 6 / oracle 4, on random and on real PEFT adapters."""

from __future__ import annotations

import torch

import pico
from pico.batch import CalibratedBatch
from pico.calibrate import calibrate
from pico.linalg import frob_norm_of_product, thin_svd
from pico.merge import merge_batch


def norms_of(bs, as_):
    return torch.stack([frob_norm_of_product(b, a) for b, a in zip(bs, as_)], dim=-1)


def rel(x, y):
    return float((x - y).norm() / y.norm().clamp_min(1e-30))


def test_alphas_lie_in_one_over_t_to_one(random_factors):
    for T in (2, 3, 5):
        bs, as_ = random_factors(T=T, ranks=(3,) * T, seed=T)
        shared = torch.randn(24, 1, dtype=torch.float64)
        bs = [b + 10 * shared for b in bs]  # a strongly shared direction
        _, _, diag = calibrate(bs, as_)
        alpha = diag["alpha"]
        assert alpha.min() >= 1 / T - 1e-12 and alpha.max() <= 1 + 1e-12
        assert alpha.min() < 0.6  # the shared direction really is shrunk


def test_calibrated_b_is_projection_filter(random_factors):
    bs, as_ = random_factors()
    cb, _, diag = calibrate(bs, as_)
    u = thin_svd(torch.cat(bs, dim=-1))[0]
    p = u @ torch.diag_embed(diag["alpha"]) @ u.mT
    for b, c in zip(bs, cb):
        assert rel(c, p @ b) < 1e-12


def test_one_adapter_is_a_no_op(random_factors):
    bs, as_ = random_factors(T=1, ranks=(4,))
    cb, ca, diag = calibrate(bs, as_)
    assert torch.allclose(diag["alpha"], torch.ones_like(diag["alpha"]))
    assert rel(cb[0], bs[0]) < 1e-12 and torch.equal(ca[0], as_[0])


def test_kappa_zero_is_a_no_op(random_factors):
    bs, as_ = random_factors()
    cb, _, _ = calibrate(bs, as_, kappa=0.0)
    assert all(rel(c, b) < 1e-12 for c, b in zip(cb, bs))


def test_for_ta_pre_and_post_merge_calibration_agree(random_factors):
    """Pico + TA == the output filter P applied to the TA result (then the same rescale)."""
    bs, as_ = random_factors()
    cb, ca, diag = calibrate(bs, as_)
    u = thin_svd(torch.cat(bs, dim=-1))[0]
    p = u @ torch.diag_embed(diag["alpha"]) @ u.mT
    pre = sum(b @ a for b, a in zip(cb, ca))
    post = p @ sum(b @ a for b, a in zip(bs, as_))
    assert rel(pre, post) < 1e-12


def test_post_rescale_pins_norm_to_mean_source_norm(random_factors):
    bs, as_ = random_factors()
    norms = norms_of(bs, as_)
    for method, space in (("ta", "core"), ("ties", "core"), ("tsv", "core"), ("ta", "full"), ("ties", "knots")):
        cb, ca, diag = calibrate(bs, as_)
        cal = CalibratedBatch(["a", "b"], (3, 5, 2), cb, ca, norms, diag)
        res = merge_batch(cal, pico.Recipe(method=method, space=space, calibrate="pico", rescale="post", lam=7.0))
        for i, r in enumerate(res):
            assert abs(float((r.b @ r.a).norm()) / float(norms[i].mean()) - 1) < 1e-9, (method, space)


def test_pre_rescale_keeps_each_adapter_norm(random_factors):
    bs, as_ = random_factors()
    cb, _, _ = calibrate(bs, as_, rescale_pre=True)
    assert torch.allclose(norms_of(cb, as_), norms_of(bs, as_), rtol=1e-12)


def test_common_scale_does_not_change_directions_or_alphas(random_factors):
    bs, as_ = random_factors()
    _, _, d1 = calibrate(bs, as_)
    _, _, d2 = calibrate([3.0 * b for b in bs], as_)
    assert torch.allclose(d1["alpha"], d2["alpha"])


def test_controls_keep_their_promises(random_factors):
    bs, as_ = random_factors()
    _, _, pico_d = calibrate(bs, as_)
    # uniform: one alpha per module equal to the mean Pico alpha
    _, _, uni = calibrate(bs, as_, mode="pico-uniform")
    assert torch.allclose(uni["alpha"], pico_d["alpha"].mean(-1, keepdim=True).expand_as(uni["alpha"]))
    # random directions: same alpha spectrum, different B, B still inside col(B_all), seeded
    rb, _, rd = calibrate(bs, as_, mode="pico-random", modules=["x", "y"], seed=1)
    rb2, _, _ = calibrate(bs, as_, mode="pico-random", modules=["x", "y"], seed=1)
    assert torch.equal(rd["alpha"], pico_d["alpha"]) and all(torch.equal(a, b) for a, b in zip(rb, rb2))
    u = thin_svd(torch.cat(bs, dim=-1))[0]
    assert all(rel(u @ (u.mT @ b), b) < 1e-12 for b in rb)
    # A-space: B untouched, A changed
    ab, aa, _ = calibrate(bs, as_, mode="pico-a")
    assert all(torch.equal(x, y) for x, y in zip(ab, bs)) and rel(aa[0], as_[0]) > 1e-3
    # sharing-aware: alphas in [1/T, 1]
    _, _, sd = calibrate(bs, as_, mode="pico-sharing")
    assert sd["alpha"].min() >= 1 / 3 - 1e-9 and sd["alpha"].max() <= 1 + 1e-9


def test_diagnostics_show_shared_b_and_task_specific_a(adapters, tmp_path):
    """The test adapters share B directions by construction: B overlap must exceed A overlap."""
    manifest = pico.merge(pico.load_adapters(adapters), pico.Recipe(method="ta", calibrate="pico"), tmp_path / "m",
                          progress=False)
    layers = list(manifest["layers"].values())
    assert all(set(layer) >= {"alpha", "collision_B", "collision_A", "overlap_B", "overlap_A", "norm_ratio"}
               for layer in layers)
    assert sum(layer["overlap_B"] for layer in layers) > sum(layer["overlap_A"] for layer in layers)
    assert all(abs(sum(layer["collision_B"]) - 1) < 1e-4 for layer in layers)
