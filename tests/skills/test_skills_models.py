"""Skills suite: a miniature base + adapters trained end to end with the real code, saved in hub / PEFT layout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from skills.tiny import build_tiny_suite, tiny_params

PROJ = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return build_tiny_suite(tmp_path_factory.mktemp("suite"))


def test_base_loads_like_a_hub_model(suite):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(suite["base"])
    tok = AutoTokenizer.from_pretrained(suite["base"])
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.vocab_size == len(tok)
    ids = tok("add 1+2=", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_base_pretraining_reduces_loss(tmp_path):
    from skills.base import train_base
    from skills.data import write_suite_data

    p = tiny_params(base={"steps": 40})
    write_suite_data(p["data"], tmp_path / "data")
    _, info = train_base(p["base"], tmp_path / "data", None, log_every=1)
    losses = [e["loss"] for e in info["log"]]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 3.5  # about ln(vocab) = 4.1 at random init
    assert last < 0.8 * first


def test_adapters_are_peft_dirs_with_the_configured_variety(suite):
    from peft import PeftModel

    from skills.base import load_base

    for name, path in suite["adapters"].items():
        cfg = json.loads((Path(path) / "adapter_config.json").read_text())
        assert set(cfg["target_modules"]) == PROJ
        assert (Path(path) / "adapter_model.safetensors").exists()
        run = tiny_params()["adapters"]["runs"][name]
        assert cfg["r"] == run["r"] and cfg["lora_alpha"] == run["lora_alpha"]
        assert cfg["use_rslora"] == bool(run.get("use_rslora", False))
        model = PeftModel.from_pretrained(load_base(suite["base"]), path)
        b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert len(b) == 7 * 1 and any(x.abs().sum() > 0 for x in b)  # trained: B moved off its zero init
        info = json.loads((Path(path) / "train_info.json").read_text())
        assert 0 < info["rel_update"] < 1
        assert set(info["acc"]) == set(run["skills"]) == set(info["acc_half_scale"])


def test_pico_library_accepts_the_adapters(suite):
    pico = pytest.importorskip("pico")
    aset = pico.load_adapters([suite["adapters"]["add"], suite["adapters"]["rev"]])
    assert len(aset.modules) == 7


def test_lora_scale_zero_is_the_base(suite):
    from peft import PeftModel

    from skills.adapters import set_lora_scale
    from skills.base import load_base
    from skills.tokenizer import encode

    ids = torch.tensor([encode("rev abcd=")])
    base_logits = load_base(suite["base"])(ids).logits
    model = PeftModel.from_pretrained(load_base(suite["base"]), suite["adapters"]["rev"])
    full = model(ids).logits
    assert not torch.allclose(full, base_logits)
    set_lora_scale(model, 0.0)
    assert torch.allclose(model(ids).logits, base_logits, atol=1e-6)


def test_fast_greedy_matches_hf_generate(suite):
    from skills.base import load_base
    from skills.common import greedy
    from skills.tokenizer import EOS_ID, PAD_ID, decode, encode

    model = load_base(suite["base"])
    prompts = ["add 1+22=", "rev abcdefg=", "code [1,2,3][1]=", "fact x="]
    fast = greedy(model, prompts, max_new=6, batch_size=3)  # left padding + KV cache, mixed lengths per batch
    for p, f in zip(prompts, fast):
        out = model.generate(torch.tensor([encode(p)]), max_new_tokens=6, do_sample=False, pad_token_id=PAD_ID,
                             eos_token_id=EOS_ID)
        assert decode(out[0, len(encode(p)):].tolist()).split("\n", 1)[0] == f


def test_training_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from skills.tiny import build_tiny_suite

    p = tiny_params()
    p["adapters"]["runs"] = {"add": p["adapters"]["runs"]["add"]}
    a = build_tiny_suite(tmp_path / "a", p)
    b = build_tiny_suite(tmp_path / "b", p)
    for rel in ("base/model.safetensors", "adapters/add/adapter_model.safetensors"):
        ta, tb = load_file(tmp_path / "a" / rel), load_file(tmp_path / "b" / rel)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert a["adapters"].keys() == b["adapters"].keys() == {"add"}
    # every saved file is byte-identical (DVC hashes them), but for the base path, which names each tree's own base
    for sub in ("base", "adapters/add"):
        names = sorted(f.name for f in (tmp_path / "a" / sub).iterdir())
        assert names == sorted(f.name for f in (tmp_path / "b" / sub).iterdir())
        for name in names:
            fa, fb = (tmp_path / "a" / sub / name).read_bytes(), (tmp_path / "b" / sub / name).read_bytes()
            assert fa.replace(b"/a/base", b"/b/base") == fb, (sub, name)
    cfg = json.loads((tmp_path / "a" / "adapters" / "add" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == sorted(PROJ)  # PEFT writes a set: its order would follow the hash seed
    assert cfg["base_model_name_or_path"] == str((tmp_path / "a" / "base").resolve())
    assert not (tmp_path / "a" / "adapters" / "add" / "README.md").exists()


def test_saved_paths_are_repo_relative_inside_the_repo(tmp_path):
    from skills.config import REPO_ROOT, portable

    assert portable(REPO_ROOT / "build" / "suite" / "base") == "build/suite/base"
    assert portable("build/suite/base") == "build/suite/base" or not Path.cwd().samefile(REPO_ROOT)
    assert portable(tmp_path) == str(tmp_path.resolve())
