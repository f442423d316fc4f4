"""The core-space fast path (pico/factored.py: Gram form) against the general path (QR + SVD, explicit factors).

Both paths run on the same float64 factors, so they must agree to float64 rounding for every calibration mode the
fast path covers, every core-space method and both rescale modes; diagnostics must agree too. Inputs the fast path
refuses (ill-conditioned, rank-deficient, R > min(m, n), the random-basis control) go through the general path.
"""

from __future__ import annotations

import pytest
import torch

import pico
from pico import factored
from pico.batch import CalibratedBatch
from pico.calibrate import calibrate
from pico.linalg import frob_norm_of_product
from pico.merge import merge_batch


def factors(T=3, m=40, n=36, ranks=(3, 5, 4), L=2, seed=0, shared=True):
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(L, m, 4, generator=g, dtype=torch.float64)
    bs, as_ = [], []
    for r in ranks[:T]:
        b = torch.randn(L, m, r, generator=g, dtype=torch.float64)
        if shared:  # some shared output directions, so Pico has collisions to shrink
            b = b + 2 * common @ torch.randn(L, 4, r, generator=g, dtype=torch.float64)
        bs.append(b * 0.5 ** torch.arange(r, dtype=torch.float64))
        as_.append(torch.randn(L, r, n, generator=g, dtype=torch.float64))
    # float32 values (what adapters hold; the fast path stores float32 stacks), carried in float64
    return [b.float().double() for b in bs], [a.float().double() for a in as_]


def fast_batch(bs, as_, mode, rescale_pre=False, diagnostics=True):
    L = bs[0].shape[0]
    pairs = [[(b[i], a[i]) for b, a in zip(bs, as_)] for i in range(L)]
    stacked = factored.stack(pairs, torch.device("cpu"))
    fc, norms, diag = factored.calibrate(stacked, mode=mode, rescale_pre=rescale_pre,
                                         diagnostics=diagnostics and mode != "none")
    ranks = tuple(b.shape[-1] for b in bs)
    if fc is None:
        return None, None
    return fc, CalibratedBatch([f"m{i}" for i in range(L)], ranks, None, None, norms, diag, factored=fc)


def general_batch(bs, as_, mode, rescale_pre=False):
    L = bs[0].shape[0]
    norms = torch.stack([frob_norm_of_product(b, a) for b, a in zip(bs, as_)], dim=-1)
    diag = {}
    if mode != "none":
        bs, as_, diag = calibrate(bs, as_, mode=mode, rescale_pre=rescale_pre)
    return CalibratedBatch([f"m{i}" for i in range(L)], tuple(b.shape[-1] for b in bs), bs, as_, norms, diag)


def delta(results):
    return torch.stack([r.b.double() @ r.a.double() for r in results])


def rel(x, y):
    return float((x - y).norm() / y.norm())


@pytest.mark.parametrize("mode", factored.gram_modes())
@pytest.mark.parametrize("rescale", ["post", "pre"])
def test_fast_path_equals_general_path(mode, rescale):
    bs, as_ = factors()
    fc, fast = fast_batch(bs, as_, mode, rescale_pre=rescale == "pre")
    assert fc is not None
    general = general_batch(bs, as_, mode, rescale_pre=rescale == "pre")
    for method in ("ta", "ties", "tsv", "iso", "cart", "dare_ties"):
        recipe = pico.Recipe(method=method, space="core", calibrate=mode,
                             rescale=None if mode == "none" else rescale, lam=0.7)
        f, g = merge_batch(fast, recipe), merge_batch(general, recipe)
        # float32 output factors: rounding at 1e-7; the float64 inputs make both paths exact otherwise
        assert rel(delta(f), delta(g)) < 1e-6, (method, mode)
        for rf, rg in zip(f, g):
            assert rf.info.keys() == rg.info.keys()
            assert rf.info["rank"] == rg.info["rank"] == sum(fc.ranks)
            for key in rf.info:
                x, y = torch.tensor(rf.info[key], dtype=torch.float64), torch.tensor(rg.info[key], dtype=torch.float64)
                assert torch.allclose(x, y, rtol=1e-4, atol=1e-6), (method, mode, key)


def test_ta_is_lossless_on_the_fast_path():
    bs, as_ = factors()
    _, cal = fast_batch(bs, as_, "none")
    res = merge_batch(cal, pico.Recipe(method="ta", space="core", weights=[1.0, -0.5, 2.0]))
    dense = sum(w * b @ a for w, b, a in zip([1.0, -0.5, 2.0], bs, as_))
    assert rel(delta(res), dense) < 1e-6


def test_materialized_factors_match_the_general_calibration():
    bs, as_ = factors()
    for mode in factored.gram_modes():
        fc, _ = fast_batch(bs, as_, mode)
        fb, fa = fc.materialize(torch.float64)
        gb, ga, _ = calibrate(bs, as_, mode=mode) if mode != "none" else (bs, as_, {})
        for t in range(len(bs)):
            assert rel(fb[t] @ fa[t], gb[t] @ ga[t]) < 1e-10, mode


@pytest.mark.parametrize("case", ["ill-conditioned", "rank-deficient", "wide"])
def test_fast_path_refuses_what_it_cannot_do_exactly(case):
    bs, as_ = factors()
    if case == "ill-conditioned":
        bs[1] = bs[1] * torch.tensor([1.0, 1.0, 1.0, 1.0, 1e-7], dtype=torch.float64)
    elif case == "rank-deficient":
        bs[2] = torch.cat([bs[2][..., :3], bs[0][..., :1]], dim=-1)  # a B column shared exactly
    else:
        bs, as_ = factors(m=10, n=36)  # R = 12 > m
    fc, _ = fast_batch(bs, as_, "pico")
    assert fc is None


def test_merge_driver_falls_back_and_matches(tmp_path, adapters):
    """pico.merge on real PEFT adapters: fast path and general path give the same update."""
    from safetensors.torch import load_file

    aset = pico.load_adapters(adapters)
    recipe = pico.Recipe(method="ties", space="core", calibrate="pico")
    pico.merge(aset, recipe, tmp_path / "fast", progress=False, device="cpu")
    factored.ENABLED = False
    try:
        pico.merge(aset, recipe, tmp_path / "general", progress=False, device="cpu")
    finally:
        factored.ENABLED = True
    f = load_file(str(tmp_path / "fast" / "adapter_model.safetensors"))
    g = load_file(str(tmp_path / "general" / "adapter_model.safetensors"))
    assert f.keys() == g.keys()
    for key in f:
        if key.endswith("lora_A.weight"):
            kb = key.replace("lora_A", "lora_B")
            assert rel(f[kb].double() @ f[key].double(), g[kb].double() @ g[key].double()) < 1e-4, key


def test_psd_eig_is_canonical_and_sorted():
    from pico.linalg import psd_eig

    x = torch.randn(3, 30, 6, dtype=torch.float64)
    g = x.mT @ x
    e, v = psd_eig(g)
    assert (e[..., :-1] >= e[..., 1:]).all()
    assert torch.allclose(v @ torch.diag_embed(e) @ v.mT, g, atol=1e-10)
    e2, v2 = psd_eig(g)
    assert torch.equal(v, v2)
    idx = v.abs().argmax(-2, keepdim=True)
    assert (v.gather(-2, idx) > 0).all()


def test_equal_ranks_take_the_vectorised_blocks_and_agree():
    bs, as_ = factors(ranks=(4, 4, 4))
    _, fast = fast_batch(bs, as_, "pico")
    general = general_batch(bs, as_, "pico")
    for key, value in general.diagnostics.items():
        assert torch.allclose(fast.diagnostics[key], value, rtol=1e-6, atol=1e-9), key
    assert torch.allclose(fast.source_norms, general.source_norms, rtol=1e-10)
    recipe = pico.Recipe(method="ties", space="core", calibrate="pico")
    assert rel(delta(merge_batch(fast, recipe)), delta(merge_batch(general, recipe))) < 1e-6


@pytest.mark.parametrize("cond", [1e2, 1e3, 1e4])
def test_fast_path_stays_exact_for_ill_conditioned_factors_it_accepts(cond):
    """Decaying column scales down to 1/cond (B_all's condition number grows past it with the shared directions):
    the Gram form must still agree with the float64 general path for the nonlinear methods."""
    g = torch.Generator().manual_seed(1)
    scale = torch.logspace(0, -float(torch.log10(torch.tensor(cond))), 6, dtype=torch.float64)
    shared = torch.randn(1, 300, 3, generator=g, dtype=torch.float64)
    bs = [((torch.randn(1, 300, 6, generator=g, dtype=torch.float64)
            + shared @ torch.randn(1, 3, 6, generator=g, dtype=torch.float64)) * scale).float().double()
          for _ in range(4)]
    as_ = [torch.randn(1, 6, 200, generator=g, dtype=torch.float64).float().double() for _ in range(4)]
    fc, fast = fast_batch(bs, as_, "pico")
    assert fc is not None
    general = general_batch(bs, as_, "pico")
    for method in ("ties", "tsv", "ta"):
        recipe = pico.Recipe(method=method, space="core", calibrate="pico")
        assert rel(delta(merge_batch(fast, recipe)), delta(merge_batch(general, recipe))) < 1e-6, method
