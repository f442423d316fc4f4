"""TARA-Merging (spec section 5): parameterisation, initialisation, the pseudo-loss, errors, exact output, bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tara_helpers import delta, peaked_base, rel

import pico
from pico.adapters import load_adapters
from pico.cli import main
from pico.tara import (
    TaraConfig,
    TaraError,
    aggregate,
    check_preference,
    mean_entropy,
    prepare,
    read_prompts,
    tara_merge,
    train,
    write_tara,
)

VARIANTS = ("tara-a", "tara-b", "weight")
FILES = ("adapter_model.safetensors", "adapter_config.json", "merge_manifest.json", "loss_curve.png")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def peaked(make_adapter, tmp_path_factory):
    """A tiny base whose predictions are far from uniform (large init), so entropies move visibly, + 2 adapters."""
    return peaked_base(make_adapter, tmp_path_factory.mktemp("peaked"), 5, (11, 12))


def test_coefficient_count_per_variant(random_prompts, base, adapters):
    aset = load_adapters(adapters)
    T, R = 3, 4 + 8 + 2
    expected = {"tara-a": R, "tara-b": T * R, "weight": T}
    for variant in VARIANTS:
        trainer = prepare(base, aset, random_prompts(T, n=4), TaraConfig(variant=variant), device="cpu")
        counts = {m: layer.coeff.numel() for m, layer in trainer.layers.items()}
        assert set(counts) == set(aset.modules) and len(counts) == 14
        assert set(counts.values()) == {expected[variant]}, variant
        assert all(torch.all(layer.coeff.detach() == 0.4) for layer in trainer.layers.values())  # init 0.4 T / T
        trainable = [id(p) for p in trainer.model.parameters() if p.requires_grad]
        assert sorted(trainable) == sorted(id(p) for p in trainer.params)  # the coefficients, nothing else


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("calibrate", ["none", "pico"])
def test_initial_merge_is_task_arithmetic_with_lambda_over_T(random_prompts, base, adapters, tmp_path, variant,
                                                            calibrate):
    lam, T = 1.2, 3
    cfg = TaraConfig(variant=variant, lam=lam, epochs=0, calibrate=calibrate)
    tara_merge(base, adapters, random_prompts(T, n=4), tmp_path / "tara", cfg, device="cpu", progress=False)
    recipe = pico.Recipe(method="ta", lam=lam / T, calibrate=calibrate, rescale="pre" if calibrate == "pico" else None)
    pico.merge(load_adapters(adapters), recipe, tmp_path / "ta", device="cpu", progress=False)
    for module in load_adapters(adapters).modules:
        assert rel(delta(tmp_path / "tara", module), delta(tmp_path / "ta", module)) < 1e-5, module
    if calibrate == "pico":  # and Pico really changed the factors
        plain = pico.Recipe(method="ta", lam=lam / T)
        pico.merge(load_adapters(adapters), plain, tmp_path / "plain", device="cpu", progress=False)
        assert rel(delta(tmp_path / "tara", module), delta(tmp_path / "plain", module)) > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_optimisation_step_lowers_the_pseudo_loss(random_prompts, peaked, variant):
    base, adapters = peaked
    trainer = prepare(base, load_adapters(adapters), random_prompts(2, n=16), TaraConfig(variant=variant),
                      device="cpu")
    batches = trainer.next_batches()
    before, scores = (x.detach() for x in trainer.loss(batches))
    assert torch.isfinite(scores).all() and float(scores.detach().abs().max()) > 1e-2  # entropies really differ
    coeffs = [p.detach().clone() for p in trainer.params]
    reported, _ = trainer.step(batches)
    after, _ = trainer.loss(batches)
    assert reported == pytest.approx(float(before))
    assert float(after) < float(before) - 1e-5, (float(before), float(after))
    assert any(not torch.equal(c, p) for c, p in zip(coeffs, trainer.params))


def test_stch_and_linear_aggregation():
    scores, pref = torch.tensor([0.3, -0.1, 0.5]), torch.tensor([0.2, 0.3, 0.5])
    assert float(aggregate(scores, pref, "linear", 1.0)) == pytest.approx(float((scores * pref).sum()))
    mu = 0.5
    expected = mu * torch.log(torch.exp(pref * scores / mu).sum())
    assert float(aggregate(scores, pref, "stch", mu)) == pytest.approx(float(expected))
    # as mu -> 0 STCH tends to the max of the weighted scores (Tchebycheff)
    assert float(aggregate(scores, pref, "stch", 1e-4)) == pytest.approx(float((pref * scores).max()), abs=1e-3)


def test_preference_vectors_are_checked_and_normalised():
    assert check_preference(None, 4) == [0.25] * 4
    assert check_preference([1, 3], 2) == [0.25, 0.75]
    with pytest.raises(TaraError, match="preference vector has 2 entries but there are 3 adapters"):
        check_preference([0.5, 0.5], 3)
    with pytest.raises(TaraError, match=r"must be finite and >= 0, but entry 1 is -0.2"):
        check_preference([0.5, -0.2, 0.7], 3)
    with pytest.raises(TaraError, match="all zeros"):
        check_preference([0, 0], 2)
    with pytest.raises(TaraError, match="finite"):
        check_preference([float("nan"), 1], 2)


@pytest.mark.parametrize("pref, fragment", [("1,1", "preference vector has 2 entries but there are 3 adapters"),
                                            ("1,-1,1", "entry 1 is -1.0"), ("a,b,c", "comma-separated numbers")])
def test_cli_refuses_bad_preferences_before_training(base, adapters, prompt_files, tmp_path, capsys, pref, fragment):
    out = tmp_path / "o"
    code = main(["tara", *map(str, adapters), "--base", str(base), "--prompts", *map(str, prompt_files),
                 "--preference", pref, "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert not out.exists()


def test_cli_output_bytes_are_deterministic_with_a_seed(base, adapters, prompt_files, tmp_path):
    args = ["tara", *map(str, adapters), "--base", str(base), "--prompts", *map(str, prompt_files),
            "--variant", "tara-b", "--epochs", "2", "--batch-size", "12", "-q"]
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert main(args + ["--seed", seed, "--out", str(tmp_path / name)]) == 0
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / FILES[0]).read_bytes() != (tmp_path / "c" / FILES[0]).read_bytes()  # seed = batch order
    manifest = json.loads((tmp_path / "a" / "merge_manifest.json").read_text())
    assert manifest["method"] == "tara-b" and manifest["recipe"]["seed"] == 1
    assert manifest["training"]["steps"] == 2 * 2 == len(manifest["training"]["loss"])  # 24 / 12 steps per epoch
    assert [s["name"] for s in manifest["sources"]] == ["math", "code", "med"]
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"])
    assert [x["n"] for x in manifest["inputs"]] == [24, 24, 24]
    assert "config.json" in manifest["base_model"]["files"]
    layer = manifest["layers"]["model.layers.0.self_attn.q_proj"]
    assert len(layer["coefficients"]) == 3 and len(layer["coefficients"][0]) == 14 and layer["rank"] == 14
    assert (tmp_path / "a" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("variant", VARIANTS)
def test_written_adapter_reproduces_the_trained_merged_model(random_prompts, peaked, tmp_path, variant):
    """The coefficients are folded into exact factors: PEFT on the written adapter == the trained wrapper model."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base, adapters = peaked
    aset = load_adapters(adapters)
    trainer = prepare(base, aset, random_prompts(2, n=16), TaraConfig(variant=variant, epochs=3, lr=5e-2),
                      device="cpu")
    result = train(trainer, progress=False)
    coeffs = torch.cat([p.detach().flatten() for p in trainer.params])
    assert float(coeffs.std()) > 1e-3  # the coefficients moved apart from their common init
    write_tara(trainer, result, aset, base, tmp_path / "out")
    peft = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), tmp_path / "out").eval()
    ids = torch.tensor(random_prompts(1, n=4, seed=9)[0][0])[None]
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits
        got = peft(input_ids=ids).logits
    assert rel(got, expected) < 1e-5
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 10  # rank R = 4 + 6 (tara-b folded to <= R, not T R)


def test_baseline_is_each_adapter_alone_on_its_own_inputs(random_prompts, peaked):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base, adapters = peaked
    prompts = random_prompts(2, n=10)
    trainer = prepare(base, load_adapters(adapters), prompts, TaraConfig(), device="cpu")
    for t, path in enumerate(adapters):
        model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), path).eval()
        with torch.no_grad():
            h = mean_entropy(model, prompts[t], "last", 0, "cpu")
        assert trainer.baselines[t] == pytest.approx(float(h), rel=1e-5)
    with torch.no_grad():  # and the adapter matters: the base model alone is elsewhere
        h0 = mean_entropy(LlamaForCausalLM.from_pretrained(base).eval(), prompts[0], "last", 0, "cpu")
    assert trainer.baselines[0] != pytest.approx(float(h0), rel=1e-3)


def test_last_position_entropy_ignores_padding(peaked):
    from transformers import LlamaForCausalLM

    base, _ = peaked
    model = LlamaForCausalLM.from_pretrained(base).eval()
    rows = [[5, 6, 7, 8, 9, 10], [11, 12]]
    with torch.no_grad():
        together = mean_entropy(model, rows, "last", 0, "cpu")
        alone = [mean_entropy(model, [r], "last", 0, "cpu") for r in rows]
        both_all = mean_entropy(model, rows, "all", 0, "cpu")
    assert float(together) == pytest.approx(float(sum(alone) / 2), rel=1e-5)
    assert float(both_all) != pytest.approx(float(together), rel=1e-3)


def test_text_prompts_through_a_tokenizer_and_bad_rows(base, adapters, tmp_path, capsys):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<unk>"] + list("abcdefghijklmnopqrstuvwxyz0123456789 =+"))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern=Regex(""), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>").save_pretrained(tmp_path / "tok")
    files = [write_jsonl(tmp_path / f"{i}.jsonl", [{"prompt": f"add {i}{j}+{j}="} for j in range(6)])
             for i in range(2)]
    files.append(write_jsonl(tmp_path / "2.jsonl", [{"text": f"rev abc{j}="} for j in range(5)]))
    args = ["tara", *map(str, adapters), "--base", str(base), "--epochs", "1", "-q"]
    assert main(args + ["--prompts", *map(str, files), "--tokenizer", str(tmp_path / "tok"),
                        "--out", str(tmp_path / "o")]) == 0
    manifest = json.loads((tmp_path / "o" / "merge_manifest.json").read_text())
    assert [x["n"] for x in manifest["inputs"]] == [6, 6, 5]

    capsys.readouterr()
    assert main(args + ["--prompts", *map(str, files), "--out", str(tmp_path / "p")]) == 2  # no tokenizer in base
    assert "no tokenizer was found" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}, {"answer": "y"}])
    assert main(args + ["--prompts", str(files[0]), str(files[1]), str(bad), "--tokenizer", str(tmp_path / "tok"),
                        "--out", str(tmp_path / "q")]) == 2
    assert "bad.jsonl:2: no \"prompt\", \"messages\" or \"text\" field" in capsys.readouterr().err
    assert main(args + ["--prompts", str(files[0]), "--out", str(tmp_path / "r")]) == 2
    assert "1 prompt files given for 3 adapters" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "pqr")


def test_read_prompts_prefers_ids_and_rejects_garbage(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"input_ids": [1, 2], "prompt": "zz"}, {"prompt": "ab"}, {"text": "c"}])
    assert read_prompts(path) == [[1, 2], {"prompt": "ab"}, "c"]  # "prompt": a user message (chat template)
    (tmp_path / "q.jsonl").write_text("{\"prompt\": \"a\"}\nnot json\n")
    with pytest.raises(TaraError, match="q.jsonl:2: not JSON"):
        read_prompts(tmp_path / "q.jsonl")
    with pytest.raises(TaraError, match="input_ids must be a non-empty list of integers"):
        read_prompts(write_jsonl(tmp_path / "r.jsonl", [{"input_ids": []}]))
