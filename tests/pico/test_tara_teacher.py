"""TARA's teacher objective (issue 23), miniature end to end on a tiny random Llama: each adapter's greedy replies to its
own prompts (cached by content, deterministic), the token-level KL / cross-entropy along them, the core and factors
variants from a data-free --init merge, the written PEFT adapter, the merge key, prompts files and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tara_helpers import delta, peaked_base, rel

import pico
from pico.adapters import load_adapters
from pico.cli import build_parser, main
from pico.options import options
from pico.recipe import format_recipe, parse_recipe
from pico.tara import TaraConfig, TaraError, prepare, tara_merge, token_losses, train, write_tara

FILES = ("adapter_model.safetensors", "adapter_config.json", "merge_manifest.json", "loss_curve.png")


def teacher_cfg(**kw) -> TaraConfig:
    return TaraConfig(**{"objective": "teacher", "max_new": 6, "topk": 8, "batch_size": 4, "steps": 3,
                         "lr": 5e-2, **kw})


@pytest.fixture(scope="module")
def peaked(make_adapter, tmp_path_factory):
    """A tiny base with peaked predictions (large init) and two adapters whose replies differ from the base's."""
    return peaked_base(make_adapter, tmp_path_factory.mktemp("teacher"), 7, (21, 22), eos_token_id=2, bos_token_id=1)


def test_teacher_is_each_adapter_alone_and_its_replies_are_cached(random_prompts, peaked, tmp_path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base, adapters = peaked
    prompts = random_prompts(2, n=6, seed=3)
    cache = tmp_path / "cache"
    first = prepare(base, load_adapters(adapters), prompts, teacher_cfg(), device="cpu", cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 2 and not any(x.cached for x in first.teacher)
    again = prepare(base, load_adapters(adapters), prompts, teacher_cfg(), device="cpu", cache_dir=cache)
    assert all(x.cached for x in again.teacher)
    fresh = prepare(base, load_adapters(adapters), prompts, teacher_cfg(), device="cpu")  # no cache: regenerated
    for a, b, c in zip(first.teacher, again.teacher, fresh.teacher):
        assert a.replies == b.replies == c.replies and a.key == b.key == c.key
        assert all(torch.equal(x, y) for x, y in zip(a.topk_logp, c.topk_logp))
    assert first.teacher[0].replies != first.teacher[1].replies  # the two teachers answer differently
    for t, path in enumerate(adapters):  # the teacher is base + adapter t: its distributions and greedy tokens
        model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), path).eval()
        for prompt, reply, ids, logp in zip(prompts[t], first.teacher[t].replies, first.teacher[t].topk_ids,
                                            first.teacher[t].topk_logp):
            assert 1 <= len(reply) <= 6 and (len(reply) == 6 or reply[-1] == 2)
            with torch.no_grad():
                full = F.log_softmax(model(input_ids=torch.tensor([prompt + reply[:-1]])).logits[0], -1)
            pos = full[len(prompt) - 1:]
            assert torch.allclose(pos.gather(-1, ids), logp, atol=1e-4)
            assert pos.argmax(-1).tolist() == reply  # greedy: each reply token is the teacher's argmax
    other = prepare(base, load_adapters(adapters), [prompts[0], prompts[0]], teacher_cfg(), device="cpu",
                    cache_dir=cache)
    assert other.teacher[0].cached and not other.teacher[1].cached  # the key is per (adapter, prompts)


def test_token_losses_kl_is_exact_with_the_whole_vocabulary_and_ce_is_the_reply_tokens():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g) * 2
    tlogp = F.log_softmax(teacher, -1)
    val, idx = tlogp.topk(16)
    exact = F.kl_div(F.log_softmax(student, -1), tlogp, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(token_losses(student, idx[:, 0], idx, val, "kl"), exact, atol=1e-5)
    val4, idx4 = tlogp.topk(4)  # coarsened: the top 4 and one bucket, never above the exact KL
    coarse = token_losses(student, idx4[:, 0], idx4, val4, "kl")
    assert (coarse <= exact + 1e-6).all() and (coarse > 0).all()
    assert torch.allclose(token_losses(teacher, idx4[:, 0], idx4, val4, "kl"), torch.zeros(5), atol=1e-5)
    targets = torch.tensor([1, 2, 3, 4, 5])
    assert torch.allclose(token_losses(student, targets, idx4, val4, "ce"),
                          F.cross_entropy(student, targets, reduction="none"))


@pytest.mark.parametrize("variant, extra", [("tara-a", {}), ("core", {"init": "tsv/core lam=0.5"}),
                                            ("factors", {"init": "ta/core lam=0.5"}),
                                            ("core", {"teacher_loss": "ce", "balance": "init"})])
def test_one_step_lowers_the_teacher_loss_and_training_lowers_it_on_all_prompts(random_prompts, peaked, variant,
                                                                                extra):
    base, adapters = peaked
    trainer = prepare(base, load_adapters(adapters), random_prompts(2, n=8, seed=4),
                      teacher_cfg(variant=variant, lr=1e-2, **extra), device="cpu")
    batches = trainer.next_batches()
    before, scores = (x.detach() for x in trainer.loss(batches))
    assert torch.isfinite(scores).all() and float(scores.min()) > 1e-3  # the merge is not yet its teachers
    reported, _ = trainer.step(batches)
    after, _ = trainer.loss(batches)
    assert reported == pytest.approx(float(before))
    assert float(after.detach()) < float(before) - 1e-5
    result = train(trainer, progress=False)
    assert len(result.curve) == 3
    init = sum(p * s for p, s in zip(trainer.config.preference, result.full_scores_init))
    final = sum(p * s for p, s in zip(trainer.config.preference, result.full_scores_final))
    assert final < init, (init, final)


@pytest.mark.parametrize("variant", ["core", "factors"])
def test_learned_variants_start_at_the_init_merge_and_write_an_exact_peft_adapter(random_prompts, peaked, tmp_path,
                                                                                 variant):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base, adapters = peaked
    aset = load_adapters(adapters)
    init = "ties/core lam=0.7 density=0.5" if variant == "core" else "ta/full lam=0.5"
    prompts = random_prompts(2, n=8, seed=5)
    tara_merge(base, adapters, prompts, tmp_path / "start", teacher_cfg(variant=variant, init=init, steps=0),
               device="cpu", progress=False)
    pico.merge(load_adapters(adapters), parse_recipe(init), tmp_path / "ref", device="cpu", progress=False)
    for module in aset.modules:
        assert rel(delta(tmp_path / "start", module), delta(tmp_path / "ref", module)) < 1e-5, module

    trainer = prepare(base, aset, prompts, teacher_cfg(variant=variant, init=init), device="cpu")
    lines: list[tuple] = []  # progress as a reporter (what, done, total, unit): the lines a log shows
    result = train(trainer, progress=lambda *line: lines.append(line))
    assert [line[1:] for line in lines] == [(i, 3, "step") for i in range(4)]
    assert lines[0][0] == f"{variant}, teacher (2 tasks)" and "loss" in lines[-1][0]
    manifest = write_tara(trainer, result, aset, base, tmp_path / "out")
    moved = [v["coefficients"]["relative_change"] for v in manifest["layers"].values()]
    assert max(moved) > 1e-3
    assert manifest["recipe"]["init"] == init and manifest["recipe"]["objective"] == "teacher"
    peft = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), tmp_path / "out").eval()
    ids = torch.tensor(prompts[0][0])[None]
    with torch.no_grad():
        expected, got = trainer.model(input_ids=ids).logits, peft(input_ids=ids).logits
    assert rel(got, expected) < 1e-5
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] <= 4 + 6


def test_prompts_change_the_merge_key_and_the_bytes_are_deterministic(peaked, tmp_path):
    base, adapters = peaked
    files = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        rows = [[int(x) for x in torch.randint(4, 60, (5,), generator=torch.Generator().manual_seed(seed * 10 + t))]
                for t in range(6)]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))
        files.append(path)
    args = ["tara", *map(str, adapters), "--base", str(base), "--objective", "teacher", "--variant", "core",
            "--init", "tsv/core lam=0.5", "--steps", "2", "--batch-size", "3", "--max-new", "5", "--lr", "1e-2",
            "--teacher-cache", str(tmp_path / "cache"), "-q"]
    for out, (p, q) in {"o1": (files[0], files[0]), "o2": (files[1], files[1]), "o3": (files[0], files[2])}.items():
        assert main(args + ["--prompts", str(p), str(q), "--out", str(tmp_path / out)]) == 0
    m = {o: json.loads((tmp_path / o / "merge_manifest.json").read_text()) for o in ("o1", "o2", "o3")}
    for name in FILES[:2] + FILES[3:]:  # same content (a copy of the prompts file): byte-identical, the cache used
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes(), name
    for x in m["o2"]["inputs"]:  # the manifests differ only in where the prompts were read from
        x["origin"] = x["origin"].replace("b.jsonl", "a.jsonl")
    assert m["o1"] == m["o2"]
    assert m["o1"]["key"] == m["o2"]["key"] != m["o3"]["key"]
    assert m["o1"]["inputs"][1]["sha256"] != m["o3"]["inputs"][1]["sha256"]
    assert m["o1"]["baselines"]["teacher"]["y"]["replies_sha256"] != m["o3"]["baselines"]["teacher"]["y"][
        "replies_sha256"]
    assert (tmp_path / "o1" / "adapter_model.safetensors").read_bytes() != \
        (tmp_path / "o3" / "adapter_model.safetensors").read_bytes()
    assert m["o1"]["training"]["steps"] == 2 and len(list((tmp_path / "cache").glob("*.safetensors"))) == 3


def chat_tokenizer(path: Path):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz0123456789 =+<>"))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern=Regex(""), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    tok.chat_template = ("{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<a>{% endif %}")
    tok.save_pretrained(path)
    return tok


def test_prompt_rows_chat_template_and_messages(peaked, tmp_path):
    from pico.tara import tokenize_inputs

    base, _ = peaked
    tok = chat_tokenizer(tmp_path / "tok")
    rows = [{"prompt": "ab"}, {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "ab"}]},
            "ab", [5, 6]]
    enc = lambda mode: tokenize_inputs([rows], ["x"], tok, 256, 64, mode)[0].ids  # noqa: E731
    ids = {c: tok.convert_tokens_to_ids(c) for c in "<>abus"}
    user = [ids["<"], ids["u"], ids[">"], ids["a"], ids["b"], ids["<"], tok.convert_tokens_to_ids("a"), ids[">"]]
    assert enc("auto")[0] == user == enc("on")[0]  # <u>ab<a>
    assert enc("off")[0] == [ids["a"], ids["b"]] == enc("auto")[2]  # raw text, and "text"-like strings stay raw
    assert enc("auto")[1][:3] == [ids["<"], ids["s"], ids[">"]] and enc("off")[1] == enc("auto")[1]  # always a chat
    assert enc("auto")[3] == [5, 6]


def test_a_bad_prompts_file_is_refused_naming_file_and_line_and_nothing_is_written(peaked, tmp_path, capsys):
    base, adapters = peaked
    tok = chat_tokenizer(tmp_path / "tok")
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"a{i}b"}) + "\n" for i in range(4)))
    cases = {
        "notjson.jsonl": ('{"prompt": "ab"}\n\n{"prompt": "a"\n', "notjson.jsonl:3: not JSON"),
        "nofield.jsonl": ('{"prompt": "ab"}\n{"answer": "ab"}\n', "nofield.jsonl:2: no \"prompt\", \"messages\""),
        "badmsg.jsonl": ('{"prompt": "ab"}\n{"prompt": "c"}\n{"messages": [{"role": "user"}]}\n',
                         "badmsg.jsonl:3: \"messages\" must be a non-empty list"),
        "badids.jsonl": ('{"input_ids": [5, 999]}\n', "badids.jsonl:1: token id 999 is outside the model's vocab"),
        "empty.jsonl": ("\n", "empty.jsonl: holds no prompts"),
    }
    args = ["tara", *map(str, adapters), "--base", str(base), "--tokenizer", str(tmp_path / "tok"), "--objective",
            "teacher", "--variant", "core", "--steps", "1", "--max-new", "3", "--teacher-cache",
            str(tmp_path / "cache"), "-q"]
    for name, (text, fragment) in cases.items():
        (tmp_path / name).write_text(text)
        out = tmp_path / f"out-{name}"
        capsys.readouterr()
        assert main(args + ["--prompts", str(good), str(tmp_path / name), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err, (name, err)
        assert not out.exists() and not (tmp_path / "cache").exists()  # nothing written, not even the cache
    capsys.readouterr()  # the chat template off: a "messages" row cannot be a chat without a template
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "tok2")
    (tmp_path / "msgs.jsonl").write_text('{"prompt": "ab"}\n{"messages": [{"role": "user", "content": "a"}]}\n')
    out = tmp_path / "out-msgs"
    assert main(args + ["--tokenizer", str(tmp_path / "tok2"), "--prompts", str(good), str(tmp_path / "msgs.jsonl"),
                        "--out", str(out)]) == 2
    assert "msgs.jsonl:2: a \"messages\" row needs a tokenizer with a chat template" in capsys.readouterr().err
    assert not out.exists()
    capsys.readouterr()
    assert main(args + ["--tokenizer", str(tmp_path / "tok2"), "--chat-template", "on", "--prompts", str(good),
                        str(good), "--out", str(out)]) == 2
    assert "--chat-template on, but the tokenizer has no chat template" in capsys.readouterr().err


def test_options_are_the_config_fields_and_are_checked(adapters, base, prompt_files, tmp_path, capsys):
    parser = build_parser({})
    tara = parser._subparsers._group_actions[0].choices["tara"]
    flags = {a.dest for a in tara._actions}
    assert set(options(TaraConfig)) <= flags  # every TaraConfig field is a flag, generated (pico/options.py)
    with pytest.raises(TaraError, match="needs the teacher objective"):
        TaraConfig(variant="core").resolve(2)
    with pytest.raises(TaraError, match="--init is for the core and factors variants"):
        TaraConfig(objective="teacher", variant="tara-a", init="ta/core").resolve(2)
    with pytest.raises(TaraError, match=r"topk must be in \[1, inf\)"):
        TaraConfig(objective="teacher", topk=0).resolve(2)
    with pytest.raises(TaraError, match="unknown objective 'x'"):
        TaraConfig(objective="x").resolve(2)
    assert TaraConfig(variant="core", objective="teacher").resolve(3).init == "tsv/core lam=0.5"
    entropy, teacher = TaraConfig().resolve(3), TaraConfig(objective="teacher").resolve(3)  # per-objective defaults
    assert (entropy.variant, entropy.lr, entropy.batch_size, entropy.steps) == ("tara-a", 1e-3, 16, None)
    assert (teacher.variant, teacher.lr, teacher.batch_size, teacher.steps) == ("factors", 1e-2, 4, 20)
    assert TaraConfig(objective="teacher", lr=0.5).resolve(3).lr == 0.5
    out = tmp_path / "o"
    code = main(["tara", *map(str, adapters), "--base", str(base), "--prompts", *map(str, prompt_files),
                 "--objective", "teacher", "--variant", "core", "--init", "ta/full lam=0.5", "--out", str(out), "-q"])
    assert code == 2 and "its --init must be a core-space merge" in capsys.readouterr().err and not out.exists()


def test_recipe_one_line_form_round_trips():
    for text in ("tsv/core lam=0.5", "ties/core calibrate=pico rescale=pre density=0.5", "ta/full lam=0.25 weights=1,2"):
        assert format_recipe(parse_recipe(text)) == text
    assert parse_recipe('{"method": "tsv", "lam": 0.5}') == parse_recipe("tsv/core lam=0.5")
    with pytest.raises(ValueError, match="not key=value"):
        parse_recipe("tsv/core lam")
    with pytest.raises(ValueError, match="has no parameter 'bogus'"):
        parse_recipe("ta/core bogus=1")
