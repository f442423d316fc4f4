"""SmolLM2 suite on the REAL packaged model (slow: the 98 MB GGUF, 134.5M parameters, about a minute of CPU)."""
from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def test_packaged_gguf_converts_with_equal_logits_and_a_trained_adapter_merges_with_pico(tmp_path):
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pico import Recipe, load_adapters, merge
    from skills.adapters import lora_config
    from skills.smollm2.common import lm_loss, make_batch
    from skills.smollm2.convert import convert, load_gguf, logits, packaged_gguf

    gguf = packaged_gguf()
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and "site-packages" in str(gguf.resolve())
    info = convert(None, tmp_path / "base")
    assert info["logits_max_abs_diff"] == 0.0 and info["chat_template"]
    ref_model, tok = load_gguf(gguf)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32).eval()
    assert base.config.num_hidden_layers == 30 and base.config.hidden_size == 576
    assert sum(p.numel() for p in base.parameters()) == info["params"]
    for a, b in zip(logits(ref_model, tok, ["Hello there"]), logits(base, tok, ["Hello there"])):
        assert torch.equal(a, b)
    assert AutoTokenizer.from_pretrained(tmp_path / "base").chat_template == tok.chat_template

    # two LoRAs trained a few steps (different seeds), saved as PEFT dirs, loaded back and merged with Pico
    pairs = [("What is 10% of 380?", "38"), ("Spell the word 'cat' backwards.", "tac")]
    common = {"target_modules": ["q_proj", "v_proj", "down_proj"], "lora_dropout": 0.0}
    dirs = []
    for seed, r in ((1, 4), (2, 8)):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                               lora_config({"r": r, "lora_alpha": 2 * r}, common))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        for _ in range(2):
            loss = lm_loss(model, *make_batch(tok, pairs), autocast="bf16")
            opt.zero_grad()
            loss.backward()
            opt.step()
        d = tmp_path / f"lora{seed}"
        model.save_pretrained(d)
        dirs.append(str(d))
    manifest = merge(load_adapters(dirs), Recipe(method="ta", calibrate="pico"), tmp_path / "merged", device="cpu",
                     progress=False)
    assert manifest
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                       str(tmp_path / "merged")).eval()
    ids = tok("Hello", return_tensors="pt")["input_ids"]
    out = merged(ids).logits
    assert torch.isfinite(out).all() and not torch.equal(out, base(ids).logits)
    assert json.loads((tmp_path / "merged" / "adapter_config.json").read_text())["r"] > 0
