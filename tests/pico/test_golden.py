"""Reproduce the official Pico code's outputs (yixuantt/Pico @1f1db1e; the vectors are in tests/pico/data)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pico.batch import CalibratedBatch
from pico.calibrate import calibrate
from pico.linalg import frob_norm_of_product
from pico.merge import merge_batch
from pico.recipe import Recipe

GOLDEN = Path(__file__).resolve().parent / "data" / "pico_official.safetensors"  # see its README


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.exists():
        pytest.fail(f"golden vectors not found at {GOLDEN}")
    g = load_file(str(GOLDEN))
    bs = [g[f"B{i}"][None] for i in range(3)]
    as_ = [g[f"A{i}"][None] for i in range(3)]
    return g, bs, as_


def close(x, y, rtol=1e-5):
    return (x - y).norm() <= rtol * y.norm() + 1e-7


def test_calibrated_deltas_match_official_api_mode(golden):
    g, bs, as_ = golden
    cb, ca, diag = calibrate(bs, as_, mode="pico")
    for i in range(3):
        assert close(cb[i][0] @ ca[i][0], g[f"calibrated_delta{i}"]), i
        assert torch.equal(ca[i], as_[i])  # A is untouched
    assert diag["alpha"].min() >= 1 / 3 - 1e-6 and diag["alpha"].max() <= 1 + 1e-6


def test_folder_mode_matches_official(golden):
    g, bs, as_ = golden
    cb, _, _ = calibrate(bs, as_, mode="pico", rescale_pre=True)
    nb, _, _ = calibrate(bs, as_, mode="pico", rescale_pre=False)
    for i in range(3):
        assert close(cb[i][0], g[f"folder_B{i}"]), i
        assert close(nb[i][0], g[f"folder_B_no_energy{i}"]), i
        # energy compensation keeps each adapter's own update norm
        assert torch.allclose(frob_norm_of_product(cb[i], as_[i]), frob_norm_of_product(bs[i], as_[i]), rtol=1e-5)


@pytest.mark.parametrize("space", ["full", "core", "knots"])
def test_mean_then_compensate_matches_official(golden, space):
    g, bs, as_ = golden
    recipe = Recipe(method="ta", space=space, calibrate="pico", rescale="post", lam=1 / 3)
    cb, ca, diag = calibrate(bs, as_, mode="pico")
    norms = torch.stack([frob_norm_of_product(b, a) for b, a in zip(bs, as_)], dim=-1)
    (res,) = merge_batch(CalibratedBatch(["layer"], (4, 6, 3), cb, ca, norms, diag), recipe)
    assert close(res.b @ res.a, g["api_mean_then_compensated"])
