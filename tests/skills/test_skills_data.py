"""Skills suite: data generation (determinism, held-out splits, rules, format) and the character tokenizer."""
from __future__ import annotations

import json

import pytest

from skills.common import make_batch, split_line
from skills.data import ALL_SKILLS, MEMORISATION_SKILLS, make_splits, pretrain_lines, write_suite_data
from skills.tiny import tiny_params
from skills.tokenizer import PAD_ID, VOCAB, VOCAB_SIZE, build_tokenizer, decode, encode


@pytest.fixture(scope="module")
def cfg():
    return tiny_params(data={"n_train": 300, "n_validation": 60, "n_test": 60, "n_pretrain": 3000})["data"]


def _read(path):
    return path.read_text()


def test_generation_is_deterministic_and_seeded(tmp_path, cfg):
    a, b = tmp_path / "a", tmp_path / "b"
    write_suite_data(cfg, a)
    write_suite_data(cfg, b)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3 * len(ALL_SKILLS) + 2  # splits + pretrain.txt + stats.json
    for f in files:
        assert _read(a / f) == _read(b / f), f
    c = tmp_path / "c"
    write_suite_data({**cfg, "seed": cfg["seed"] + 1}, c)
    assert _read(c / "add" / "test.jsonl") != _read(a / "add" / "test.jsonl")


def test_held_out_prompts_never_trained_on(cfg):
    splits = make_splits(cfg)
    pre = {split_line(x)[0] for x in pretrain_lines(cfg, splits)}
    for skill, sp in splits.items():
        train = {i.prompt for i in sp["train"]}
        val, test = [i.prompt for i in sp["validation"]], [i.prompt for i in sp["test"]]
        assert len(set(test)) == len(test) and len(set(val)) == len(val)
        if skill in MEMORISATION_SKILLS:  # the table is the skill: its test set IS its training set
            assert set(test) == train == set(val)
            continue
        assert not set(test) & train, skill
        assert not set(val) & train, skill
        assert not set(test) & set(val), skill
        assert not (set(test) | set(val)) & pre, skill


def test_rules_and_shared_prompt_format(cfg):
    splits = make_splits(cfg)
    for skill, sp in splits.items():
        for it in sp["train"] + sp["test"]:
            assert it.prompt.startswith(skill + " ") and it.prompt.endswith("=")
            assert "=" not in it.answer and "\n" not in it.answer
            assert split_line(it.text()) == (it.prompt, it.answer + "\n")
            assert all(c in VOCAB for c in it.text())
    for it in splits["add"]["test"]:
        a, b = it.prompt[4:-1].split("+")
        assert int(it.answer) == int(a) + int(b)
        if it.hard:
            assert it.wrong != it.answer  # hard additions always carry
    for it in splits["sort"]["test"]:
        w = it.prompt[5:-1]
        assert it.answer == "".join(sorted(w)) and it.wrong == it.answer[::-1]
    for it in splits["code"]["test"]:
        assert it.answer == str(eval(it.prompt[5:-1]))  # noqa: S307 - our own generated list subscripts
    for it in splits["pct"]["test"]:
        rate, x = it.prompt[4:-1].split("% of ")
        assert abs(float(it.answer) - int(rate) * int(x) / 100) < 1e-9
    for it in splits["rev"]["test"]:
        assert it.answer == it.prompt[4:-1][::-1] and it.wrong == it.prompt[4:-1]


def test_pretraining_mixture_holds_weak_skills(cfg):
    splits = make_splits(cfg)
    lines = pretrain_lines(cfg, splits)
    tags = {line.split(" ", 1)[0] for line in lines}
    assert tags == set(ALL_SKILLS) | {"copy"}
    # weak labels: on hard add items the wrong rule dominates, on easy ones the correct rule
    hard_right = hard_n = 0
    for line in lines:
        if line.startswith("add "):
            prompt, ans = split_line(line)
            a, b = map(int, prompt[4:-1].split("+"))
            if min(a, b) >= 10 and (a % 10 + b % 10 >= 10 or a // 10 + b // 10 >= 10):
                hard_n += 1
                hard_right += int(ans.strip()) == a + b
    assert hard_n > 20 and hard_right / hard_n < 0.6


def test_stats_file(tmp_path, cfg):
    stats = write_suite_data(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "stats.json").read_text())
    assert on_disk == json.loads(json.dumps(stats))
    assert on_disk["memorisation_skills"] == ["fact"]
    assert on_disk["skills"]["add"]["test"]["n"] == cfg["n_test"]


def test_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer()
    assert len(tok) == VOCAB_SIZE
    text = "add 12+34=46\nrev abc=cba\ncode [1,2][1]=2\npct 50% of 31=15.5\n"
    assert tok(text)["input_ids"] == encode(text)  # no BOS/EOS added, one id per character
    assert decode(encode(text)) == text
    assert tok.decode(encode(text)) == text
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == encode(text)
    assert again.pad_token_id == PAD_ID
    every = "".join(v for v in VOCAB if len(v) == 1)
    assert decode(encode(every)) == every


def test_make_batch_weights_answers_only():
    ids, mask, w = make_batch([("add 1+2=", "3\n"), ("rev ab=", "ba\n")], prompt_loss_weight=0.0)
    assert ids.shape == mask.shape and w.shape == (2, ids.shape[1] - 1)
    # first row: prompt has 8 chars -> targets 1..7 are prompt (weight 0), targets 8,9 are the answer "3\n"
    assert w[0].tolist()[:7] == [0.0] * 7 and w[0].tolist()[7:9] == [1.0, 1.0]
    assert decode(ids[0][mask[0].bool()].tolist()) == "add 1+2=3\n"
    assert w.sum().item() == 2 + 3
