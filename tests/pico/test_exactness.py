"""Exactness of the spaces and methods against dense references and PEFT itself."""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

import pico
from pico.adapters import load_adapters
from pico.batch import CalibratedBatch
from pico.merge import merge_batch
from pico.spaces import project

torch.set_default_dtype(torch.float32)


def rel(x, y):
    return float((x - y).norm() / y.norm().clamp_min(1e-30))


def merged_delta(bs, as_, space, method="ta", **kw):
    norms = torch.stack([(b @ a).norm(dim=(-2, -1)) for b, a in zip(bs, as_)], dim=-1)
    cal = CalibratedBatch([f"m{i}" for i in range(bs[0].shape[0])], tuple(b.shape[-1] for b in bs), bs, as_,
                          norms, {})
    return torch.stack([r.b @ r.a for r in merge_batch(cal, pico.Recipe(method=method, space=space, **kw))])


def test_core_reconstruction_is_lossless(random_factors):
    bs, as_ = random_factors()
    cores, state = project("core", bs, as_)
    for t, (b, a) in enumerate(zip(bs, as_)):
        assert rel(state["u_b"] @ cores[:, t] @ state["v_a"].mT, b @ a) < 1e-12


def test_knots_alignment_is_lossless(random_factors):
    bs, as_ = random_factors()
    coords, state = project("knots", bs, as_)
    for t, (b, a) in enumerate(zip(bs, as_)):
        assert rel(state["u"] @ coords[:, t], b @ a) < 1e-12


def test_ta_is_identical_in_every_space(random_factors):
    bs, as_ = random_factors()
    dense = sum(b @ a for b, a in zip(bs, as_)) * 0.7
    for space in ("full", "core", "knots"):
        assert rel(merged_delta(bs, as_, space, lam=0.7), dense) < 1e-10, space


def test_weighted_ta(random_factors):
    bs, as_ = random_factors()
    w = [0.5, -1.0, 2.0]
    dense = sum(wt * b @ a for wt, b, a in zip(w, bs, as_))
    assert rel(merged_delta(bs, as_, "core", weights=w), dense) < 1e-10


def test_knots_without_trimming_is_lossless(random_factors):
    bs, as_ = random_factors()
    dense = sum(b @ a for b, a in zip(bs, as_))
    assert rel(merged_delta(bs, as_, "knots", method="ties", params={"density": 1.0}), dense) > 1e-3  # disjoint mean
    assert rel(merged_delta(bs, as_, "knots", method="ta"), dense) < 1e-10


def test_tsv_with_one_task_returns_the_update(random_factors):
    bs, as_ = random_factors(T=1, ranks=(4,))
    for space in ("core", "full"):
        assert rel(merged_delta(bs, as_, space, method="tsv"), bs[0] @ as_[0]) < 1e-10


def test_tsv_core_equals_tsv_full_with_rank_truncation(random_factors):
    bs, as_ = random_factors(ranks=(3, 3, 3))
    assert rel(merged_delta(bs, as_, "core", method="tsv"), merged_delta(bs, as_, "full", method="tsv")) < 1e-8


def test_iso_full_space_stays_low_rank(random_factors):
    bs, as_ = random_factors(m=40, n=36)
    out = merged_delta(bs, as_, "full", method="iso")
    assert int(torch.linalg.matrix_rank(out[0])) == sum(b.shape[-1] for b in bs)


def test_ties_single_task_full_density_is_identity(random_factors):
    bs, as_ = random_factors(T=1, ranks=(4,))
    assert rel(merged_delta(bs, as_, "core", method="ties", params={"density": 1.0}), bs[0] @ as_[0]) < 1e-10


def test_full_space_truncation_reports_kept_energy(random_factors):
    bs, as_ = random_factors()
    norms = torch.ones(2, 3)
    cal = CalibratedBatch(["a", "b"], (3, 5, 2), bs, as_, norms, {})
    res = merge_batch(cal, pico.Recipe(method="ties", space="full", rank=4))
    assert all(r.b.shape[-1] == 4 and 0 < r.info["kept_energy"] < 1 for r in res)


def test_loaded_factors_match_peft_delta_weight(base, adapters):
    """Scale absorption: mixed ranks, mixed alphas and rsLoRA give exactly PEFT's own delta."""
    aset = load_adapters(adapters)
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), adapters[0], adapter_name="a0")
    for i, path in enumerate(adapters[1:], 1):
        model.load_adapter(path, adapter_name=f"a{i}")
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    for t, (b, a) in enumerate(aset.factors("model.layers.1.mlp.down_proj")):
        assert rel(b @ a, layer.get_delta_weight(f"a{t}")) < 1e-6


def test_ta_equals_peft_cat_and_merged_adapter_loads_in_peft(base, adapters, tmp_path):
    weights = [1.0, 0.5, 2.0]
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), adapters[0], adapter_name="a0")
    for i, path in enumerate(adapters[1:], 1):
        model.load_adapter(path, adapter_name=f"a{i}")
    model.add_weighted_adapter(["a0", "a1", "a2"], weights, "cat", combination_type="cat")

    out = tmp_path / "merged"
    pico.merge(load_adapters(adapters), pico.Recipe(method="ta", space="core", weights=weights), out, progress=False)
    merged = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), out)
    x = torch.randn(5, 32)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.mlp.up_proj"):
        ours = merged.base_model.model.get_submodule(name)
        theirs = model.base_model.model.get_submodule(name)
        assert rel(ours.get_delta_weight("default"), theirs.get_delta_weight("cat")) < 1e-5
        # the layer's output through PEFT equals base output + x dW^T of the delta we computed
        dw = ours.get_delta_weight("default")
        with torch.no_grad():
            assert rel(ours(x) - ours.base_layer(x), x @ dw.T) < 1e-5


def test_whole_model_logits_match_dense_sum(base, adapters, tmp_path):
    out = tmp_path / "merged"
    pico.merge(load_adapters(adapters), pico.Recipe(method="ta", space="knots", lam=0.5), out, progress=False)
    ids = torch.randint(0, 64, (2, 7))
    merged = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), out).eval()
    dense = LlamaForCausalLM.from_pretrained(base).eval()
    aset = load_adapters(adapters)
    with torch.no_grad():
        for module in aset.modules:
            w = dense.get_submodule(module).weight
            w += 0.5 * sum(b @ a for b, a in aset.factors(module))
        assert torch.allclose(merged(ids).logits, dense(ids).logits, atol=1e-4)


def test_every_method_and_space_writes_a_loadable_adapter(base, adapters, tmp_path):
    aset = load_adapters(adapters)
    for name, method in pico.METHODS.items():
        for space in method.spaces:
            out = tmp_path / f"{name}-{space}"
            manifest = pico.merge(aset, pico.Recipe(method=name, space=space, calibrate="pico"), out,
                                  progress=False)
            model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), out)
            ranks = {m: layer["rank"] for m, layer in manifest["layers"].items()}
            for module, k in ranks.items():
                lora = model.base_model.model.get_submodule(module)
                assert lora.lora_A["default"].weight.shape[0] == k
                assert lora.scaling["default"] == 1.0
                assert k <= 14  # rank <= sum of input ranks (4 + 8 + 2)
