"""SmolLM2 suite: answer extraction, data, and every stage end to end on a miniature (tiny random Llama)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from skills.smollm2.extract import correct, extract

PROJ = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("kind,reply,answer,ok", [
    ("number", "10% of 380 is 0.10 * 380 = 38.", "38", True),
    ("number", "10% of 380 is 0.10 * 380 = 38.00.", "38", True),
    ("number", "The dose is 1,200 mg", "1200", True),
    ("number", "13 + 69 = 102.", "82", False),
    ("number", "I cannot tell.", "5", False),
    ("number", "Convert: 2.5 g = 2500 mg", "2500", True),
    ("json", 'Here it is: ```json\n{"name": "Ana", "city": "Oslo", "age": 34}\n```', '{"age": 34, "city": "Oslo", "name": "Ana"}', True),
    ("json", '{"name": "Ana", "age": "34", "city": "Oslo"}', '{"age": 34, "city": "Oslo", "name": "Ana"}', False),
    ("json", '{"name": "Ana", age: 34}', '{"age": 34, "name": "Ana"}', False),
    ("word", "The word 'cat' in capital letters is CAT.", "CAT", True),
    ("word", "CAT", "CAT", True),
    ("word", "In capital letters: cat", "CAT", False),
    ("word", "The first letter of 'cat' is 'C'.", "C", True),
    ("word", "", "CAT", False),
])
def test_extraction_scores_known_replies(kind, reply, answer, ok):
    assert correct(kind, reply, answer) is ok


def test_extraction_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown answer kind"):
        extract("date", "x")


def test_data_is_deterministic_held_out_and_canonical(tmp_path):
    from skills.smollm2.data import KINDS, read_jsonl, write_data
    from skills.smollm2.extract import reference

    cfg = {"seed": 5, "skills": sorted(KINDS), "n_train": 50, "n_validation": 10, "n_test": 10}
    write_data(cfg, tmp_path / "a")
    write_data(cfg, tmp_path / "b")
    for skill in cfg["skills"]:
        splits = {}
        for split in ("train", "validation", "test"):
            fa, fb = tmp_path / "a" / skill / f"{split}.jsonl", tmp_path / "b" / skill / f"{split}.jsonl"
            assert fa.read_bytes() == fb.read_bytes()
            splits[split] = read_jsonl(fa)
            assert all(r["answer"] == reference(KINDS[skill], r["answer"]) != "" for r in splits[split])
        prompts = {s: {r["prompt"] for r in recs} for s, recs in splits.items()}
        assert not prompts["test"] & prompts["train"] and not prompts["validation"] & prompts["train"]
        assert not prompts["test"] & prompts["validation"]
        assert len(splits["test"]) == 10
    with pytest.raises(ValueError, match="unknown skill"):
        write_data({**cfg, "skills": ["poetry"]}, tmp_path / "c")


def test_a_larger_test_split_moves_no_train_item_and_a_short_pool_is_refused(tmp_path):
    from skills.smollm2.data import KINDS, bucket, make_splits, write_data

    cfg = {"seed": 5, "skills": sorted(KINDS), "n_train": 300, "n_validation": 20, "n_test": 20}
    write_data(cfg, tmp_path / "small")
    write_data({**cfg, "n_test": 150, "n_validation": 40}, tmp_path / "large")
    for skill in cfg["skills"]:
        small, large = tmp_path / "small" / skill, tmp_path / "large" / skill
        assert (small / "train.jsonl").read_bytes() == (large / "train.jsonl").read_bytes()
        # the larger held-out splits extend the smaller ones: the same first items
        assert (large / "test.jsonl").read_bytes().startswith((small / "test.jsonl").read_bytes())
        assert (large / "validation.jsonl").read_bytes().startswith((small / "validation.jsonl").read_bytes())
    # a prompt's split does not depend on the seed: another seed never trains on this seed's test prompts
    other = make_splits("finance", 6, {"train": 500, "validation": 10, "test": 60})
    test5 = make_splits("finance", 5, {"train": 10, "validation": 10, "test": 60})["test"]
    assert {r["prompt"] for r in test5}.isdisjoint(r["prompt"] for r in other["train"])
    assert all(bucket("finance", r["prompt"]) == "test" for r in test5)
    # letters has ~230 test prompts: asking for more is an error naming the skill and the split, not a short split
    with pytest.raises(ValueError, match=r"letters: \d+ distinct test prompts found of the 400 asked"):
        make_splits("letters", 5, {"train": 10, "validation": 10, "test": 400})


def test_miniature_base_is_a_checked_hub_style_directory(mini_smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = Path(mini_smollm2["base"])
    info = json.loads((base / "convert_info.json").read_text())
    assert info["logits_max_abs_diff"] == 0.0 and info["chat_template"]
    tok = AutoTokenizer.from_pretrained(base)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert AutoModelForCausalLM.from_pretrained(base).config.model_type == "llama"


def test_miniature_adapters_have_own_seeds_and_configured_variety(mini_smollm2):
    from skills.smollm2.tiny import tiny_params

    runs = tiny_params()["adapters"]["runs"]
    a_first = {}
    for name, path in mini_smollm2["adapters"].items():
        cfg = json.loads((Path(path) / "adapter_config.json").read_text())
        info = json.loads((Path(path) / "train_info.json").read_text())
        assert set(cfg["target_modules"]) == PROJ
        assert (cfg["r"], cfg["lora_alpha"], cfg["use_rslora"]) == (
            runs[name]["r"], runs[name]["lora_alpha"], runs[name].get("use_rslora", False))
        assert info["seed"] == runs[name]["seed"] and info["rel_update"] > 0
        assert set(info["acc"]) == set(runs[name]["skills"])
        assert set(info.get("acc_half_scale", ())) == (set() if name == "letters" else set(runs[name]["skills"]))
        from safetensors.torch import load_file

        w = load_file(str(Path(path) / "adapter_model.safetensors"))
        a_first[name] = next(v for k, v in sorted(w.items()) if "lora_A" in k)
    # different seeds: the LoRA A initialisations differ even where ranks match (json and multitask: r 8)
    assert not torch.equal(a_first["json"], a_first["multitask"])


def test_train_step_micro_batches_give_the_batch_loss_and_bf16_frozen_weights_the_same_bits(mini_smollm2):
    from peft import get_peft_model

    from skills.adapters import lora_config
    from skills.smollm2.common import bf16_frozen_weights, lm_loss, load_base, make_batch, train_step
    from skills.smollm2.data import read_jsonl
    from skills.smollm2.tiny import tiny_params

    common = tiny_params()["adapters"]["common"]
    pairs = [(r["prompt"], r["target"]) for s in ("math", "json", "letters")
             for r in read_jsonl(Path(mini_smollm2["data"]) / s / "train.jsonl")[:3]]

    def grads(chunks, autocast=None, frozen=False):
        torch.manual_seed(0)
        model = get_peft_model(load_base(mini_smollm2["base"])[0], lora_config({"r": 4, "lora_alpha": 8}, common))
        with bf16_frozen_weights(model, enabled=frozen) as n_held:
            loss = train_step(model, tok, pairs, autocast=autocast, chunks=chunks)
        return loss, [p.grad.clone() for p in model.parameters() if p.requires_grad], model, n_held

    model, tok = load_base(mini_smollm2["base"])
    one = lm_loss(model, *make_batch(tok, pairs)).item()  # the plain padded batch
    full = lm_loss(model, *make_batch(tok, pairs), head="full").item()  # the head at every position
    assert one == pytest.approx(full, rel=1e-6) and one != 0
    loss1, g1, _, _ = grads(1)
    loss3, g3, _, _ = grads(3)  # sorted by length, three micro-batches: the same mean over answer tokens
    assert loss1 == pytest.approx(one, rel=1e-5) and loss3 == pytest.approx(one, rel=1e-5)
    worst = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(g1, g3) if b.any())
    assert worst < 1e-4, worst
    la, ga, _, _ = grads(2, "bf16")
    lb, gb, held, n_held = grads(2, "bf16", frozen=True)  # frozen weights held in bf16: autocast's own rounding
    assert n_held == 7 * model.config.num_hidden_layers
    assert la == lb and all(torch.equal(a, b) for a, b in zip(ga, gb))
    assert all(p.dtype == torch.float32 for p in held.parameters())  # float32 again afterwards


def test_replay_is_the_base_own_replies_and_adapters_replay_only_other_skills(mini_smollm2, tmp_path):
    from skills.smollm2.adapters import train_adapter
    from skills.smollm2.common import greedy, load_base
    from skills.smollm2.data import read_jsonl
    from skills.smollm2.replay import read_replay, write_replay
    from skills.smollm2.tiny import tiny_params

    p = tiny_params()
    recs = read_jsonl(Path(mini_smollm2["replay"]) / "replay.jsonl")
    n = p["replay"]["n_per_skill"]
    assert sorted({r["skill"] for r in recs}) == sorted(p["data"]["skills"]) and len(recs) == n * len(p["data"]["skills"])
    train = {s: {r["prompt"] for r in read_jsonl(Path(mini_smollm2["data"]) / s / "train.jsonl")} for s in p["data"]["skills"]}
    assert all(r["prompt"] in train[r["skill"]] for r in recs)  # train prompts only: validation/test stay held out
    model, tok = load_base(mini_smollm2["base"])  # the targets are the base's greedy replies, not the references
    assert [r["target"] for r in recs[:4]] == greedy(model, tok, [r["prompt"] for r in recs[:4]], p["replay"]["max_new"])
    write_replay(mini_smollm2["base"], mini_smollm2["data"], tmp_path / "again", p["replay"], batch_size=8)
    assert (tmp_path / "again" / "replay.jsonl").read_bytes() == (Path(mini_smollm2["replay"]) / "replay.jsonl").read_bytes()

    pool = read_replay(mini_smollm2["replay"], ["math"])
    assert len(pool) == n * (len(p["data"]["skills"]) - 1) and not {q for q, _ in pool} & train["math"]
    for name in ("math", "multitask"):  # half of each batch (the tiny multi-task run has 3 of the 6 skills)
        info = json.loads((Path(mini_smollm2["adapters"][name]) / "train_info.json").read_text())
        assert info["replay_per_batch"] == p["adapters"]["common"]["batch_size"] // 2
    with pytest.raises(FileNotFoundError, match="no replay data"):
        train_adapter(mini_smollm2["base"], mini_smollm2["data"], p["adapters"]["runs"]["math"],
                      p["adapters"]["common"], None, p["eval"], replay_dir=tmp_path / "missing")


def test_lmeval_tasks_score_the_miniature_and_equal_the_fast_scorer(mini_smollm2):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from skills.smollm2.common import greedy
    from skills.smollm2.evaluate import evaluate
    from skills.smollm2.lmeval import task_name
    from skills.smollm2.tiny import tiny_params

    settings = tiny_params()["eval"]
    adapter = mini_smollm2["adapters"]["math"]
    acc, res = evaluate(mini_smollm2["base"], adapter, ["math", "json"], "test", data_dir=mini_smollm2["data"],
                        tasks_dir=mini_smollm2["tasks"], settings=settings, return_details=True)
    assert set(acc) == {"math", "json"} and all(0.0 <= v <= 1.0 for v in acc.values())
    group = Path(mini_smollm2["tasks"], "smollm2.yaml").read_text()
    assert "smollm2_math" in group and "smollm2_letters" in group
    tok = AutoTokenizer.from_pretrained(mini_smollm2["base"])
    base = AutoModelForCausalLM.from_pretrained(mini_smollm2["base"]).eval()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(mini_smollm2["base"]), adapter).eval()
    _, res_base = evaluate(mini_smollm2["base"], None, ["math", "json"], "test", data_dir=mini_smollm2["data"],
                           tasks_dir=mini_smollm2["tasks"], settings=settings, return_details=True)
    replies = []
    for model, results in ((peft_model, res), (base, res_base)):
        for skill in ("math", "json"):
            samples = results["samples"][task_name(skill)]
            prompts = [s["doc"]["prompt"] for s in samples]
            ours = greedy(model, tok, prompts, max_new=settings["max_gen_toks"], batch_size=3)
            theirs = [s["resps"][0][0].strip() for s in samples]
            assert ours == theirs
            replies += theirs
            # the filter ran: filtered replies are the extracted form
            kind = "number" if skill == "math" else "json"
            assert [s["filtered_resps"][0] for s in samples] == [extract(kind, t) for t in theirs]
    assert any(replies)  # the random base writes characters: the comparison is not between empty strings


def test_lmeval_settings_are_checked(mini_smollm2):
    from skills.smollm2.evaluate import evaluate

    with pytest.raises(ValueError, match="unknown settings"):
        evaluate(mini_smollm2["base"], None, ["math"], data_dir=mini_smollm2["data"],
                 tasks_dir=mini_smollm2["tasks"], settings={"temprature": 0})


def test_pipeline_lmeval_path_passes_the_chat_template_and_model_settings(mini_smollm2):
    """pipeline/evaluation.py's generic lm-eval path with settings from params gives the suite evaluator's scores."""
    from pipeline import evaluation
    from pipeline.settings import load_settings
    from skills.config import REPO_ROOT
    from skills.smollm2.evaluate import evaluate
    from skills.smollm2.tiny import tiny_params

    adapter = mini_smollm2["adapters"]["json"]
    ref = evaluate(mini_smollm2["base"], adapter, ["json", "math"], data_dir=mini_smollm2["data"],
                   tasks_dir=mini_smollm2["tasks"], settings=tiny_params()["eval"])
    over = {"eval": {"suite": "lm-eval", "tasks": ["smollm2_json", "smollm2_math"],
                     "include_path": mini_smollm2["tasks"], "apply_chat_template": True, "batch_size": 8,
                     "model_args": "max_length=512"}}
    settings = load_settings(REPO_ROOT, overrides=over)
    got = evaluation.score(settings, mini_smollm2["base"], adapter)  # from lm-eval's per-sample outcomes
    assert got.scores == pytest.approx({"smollm2_json": ref["json"], "smollm2_math": ref["math"]})
    assert set(got.stderr) <= set(got.scores)
    fp = evaluation.fingerprint(settings)
    assert fp["apply_chat_template"] is True and fp["model_args"] == "max_length=512"


def test_report_machinery_and_figure2_run_on_the_miniature(mini_smollm2, tmp_path):
    """skills/report.py's run_report with this suite's evaluator (TA and TIES, Pico off / post / pre, lambda on
    validation), and the Figure-2 overlaps with their random baselines."""
    from skills.report import run_report
    from skills.smollm2.report import SmolEvaluator, figure2
    from skills.smollm2.tiny import tiny_params

    singles = ["math", "json", "letters"]
    sources = [mini_smollm2["adapters"][n] for n in singles]
    fig = figure2(sources)
    assert set(fig) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "all"}
    for v in fig.values():
        assert 0.0 <= v["overlap_B"] <= 1.0 and 0.0 <= v["overlap_A"] <= 1.0 and 0.0 < v["random_A"] <= 1.0
    # ranks 4, 8, 2 -> pairs (4,8), (4,2), (8,2): max / dim; q_proj's A has dim = hidden 32
    assert fig["q_proj"]["random_A"] == pytest.approx((8 + 4 + 8) / 3 / 32, abs=1e-4)

    p = tiny_params()
    p["paths"] = {"base": mini_smollm2["base"], "data": mini_smollm2["data"],
                  "adapters": str(Path(mini_smollm2["adapters"]["math"]).parent)}
    p["data"]["skills"] = ["math", "json", "letters"]
    p["report"] = {"lam_grid": [0.5, 1.0]}
    ev = SmolEvaluator(p["paths"]["base"], p["paths"]["data"], p["data"]["skills"], fast_only=True,
                       settings=p["eval"])
    res = run_report(p, tmp_path, fast_only=True, ablations=False, methods=["ta"], evaluator=ev, log=lambda *_: None)
    names = [r["name"] for r in res["rows"]]
    assert names[0] == "base" and "ta/full" in names and "ta/full +pico (post)" in names
    assert any(n.startswith("multi-task") for n in names)
    assert (tmp_path / "report.md").exists() and set(res["base"]) == set(p["data"]["skills"])


def test_seed_drift_recreates_the_initial_lora_a_exactly(mini_smollm2, tmp_path):
    """An adapter saved after 0 steps IS its initial A: overlap 1, change 0 (so the trainer's init is re-created
    exactly); a trained one moved away from it."""
    from skills.smollm2.adapters import train_adapter
    from skills.smollm2.report import seed_drift
    from skills.smollm2.tiny import tiny_params

    p = tiny_params()
    p["paths"] = {"base": mini_smollm2["base"], "data": mini_smollm2["data"], "adapters": str(tmp_path)}
    p["adapters"]["runs"]["math"]["steps"] = 0
    train_adapter(p["paths"]["base"], p["paths"]["data"], p["adapters"]["runs"]["math"], p["adapters"]["common"],
                  tmp_path / "math", p["eval"], replay_dir=mini_smollm2["replay"])
    d = seed_drift(p, ["math"])["math"]
    assert d["A_overlap_with_init"] == pytest.approx(1.0, abs=1e-5) and d["A_rel_change"] == pytest.approx(0, abs=1e-6)
    assert d["modules"] == 2 * 7  # 2 layers x 7 projections
    p["paths"]["adapters"] = str(Path(mini_smollm2["adapters"]["math"]).parent)
    p["adapters"]["runs"]["math"]["steps"] = 3
    assert seed_drift(p, ["math"])["math"]["A_rel_change"] > 1e-4


def test_report_rows_from_params_validation_subset_and_tara_on_chat_prompts(mini_smollm2, tmp_path):
    """params report.rows replaces the method x space product (Pico pre rows, an ablation group), lambda is chosen
    on the first val_limit validation items, and TARA trains on the chat-templated validation prompts."""
    import json

    from skills.report import run_report
    from skills.smollm2.report import SmolEvaluator, chat_prompt_files
    from skills.smollm2.tiny import tiny_params

    p = tiny_params()
    p["paths"] = {"base": mini_smollm2["base"], "data": mini_smollm2["data"],
                  "adapters": str(Path(mini_smollm2["adapters"]["math"]).parent)}
    p["adapters"]["runs"] = {n: r for n, r in p["adapters"]["runs"].items() if n in ("math", "json")}
    p["data"]["skills"] = ["math", "json"]
    p["report"] = {"lam_grid": [0.5, 1.0], "val_limit": 2, "adapter_min": 0.5, "base_gap": 0.1, "rows": [
        {"method": "ta", "space": "core"},
        {"method": "ta", "space": "core", "calibrate": "pico", "rescale": "pre"},
        {"group": "2. random-direction control", "calibrate": "pico-random", "rescale": "post"}]}
    ev = SmolEvaluator(p["paths"]["base"], p["paths"]["data"], p["data"]["skills"], fast_only=True,
                       settings=p["eval"], val_limit=2)
    assert {s: len(r) for s, r in ev.recs["validation"].items()} == {"math": 2, "json": 2}
    files = chat_prompt_files(p, ["math", "json"], tmp_path / "prompts")
    first = json.loads(files[0].read_text().splitlines()[0])
    tok = ev._model(None) and ev.tok
    assert tok.decode(first["input_ids"]).startswith("<|im_start|>user")  # the chat template, not the bare text
    tara = {"configs": [("tara-a", "none")], "epochs": 1, "prompt_files": files}
    res = run_report(p, tmp_path, fast_only=True, ablations=False, evaluator=ev, tara=tara, log=lambda *_: None)
    merges = [r for r in res["rows"] if r["section"] == "merge"]
    assert [r["name"] for r in merges] == ["ta/core", "ta/core +pico (pre)", "tara-a [val prompts]"]
    assert set(merges[1]["extra"]["val_grid"]) == {"0.5", "1.0"}  # pre: the norm is not pinned, lambda searched
    abl = [r for r in res["rows"] if r["section"] == "ablation"]
    assert [r["name"] for r in abl] == ["ta/core +pico-random (post)"] and abl[0]["lam"] == 1.0
    assert "random-direction control" in (tmp_path / "ablations.md").read_text()
    assert res["targets"]["adapter_min"] == 0.5 and "- base >= 10 points" in (tmp_path / "report.md").read_text()


def test_the_suite_switch_runs_the_pipeline_benchmark_on_the_suite(mini_smollm2, tmp_path):
    """params.yaml's switch (catalog adapters-smollm2.yaml + the suite's scorer) through pipeline/evaluation.py."""
    import shutil

    import yaml

    from pipeline import evaluation
    from pipeline.settings import load_settings
    from skills.config import REPO_ROOT
    from skills.smollm2.evaluate import evaluate
    from skills.smollm2.tiny import tiny_params

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["smollm2"]["paths"].update(data=mini_smollm2["data"], base=mini_smollm2["base"])
    params["smollm2"]["eval"] = tiny_params()["eval"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO_ROOT / "adapters-smollm2.yaml", tmp_path)
    settings = load_settings(tmp_path, overrides={
        "catalog": "adapters-smollm2.yaml",
        "eval": {"suite": "callable", "callable": "skills.smollm2.scorer:suite", "skills": ["math", "json"]}})
    assert [a.name for a in settings.catalog.adapters] == ["math", "code", "finance", "dosage", "json", "letters"]
    adapter = mini_smollm2["adapters"]["math"]
    got = evaluation.score(settings, mini_smollm2["base"], adapter).scores
    ref = evaluate(mini_smollm2["base"], adapter, ["math", "json"], data_dir=mini_smollm2["data"],
                   tasks_dir=tmp_path / "ref_tasks", settings=tiny_params()["eval"])
    assert got == ref
    fp = evaluation.fingerprint(settings)
    assert fp["callable"] == "skills.smollm2.scorer:suite" and len(fp["data"]) == 64
    assert evaluation.scorer_inputs(settings) == [Path(mini_smollm2["data"])]

    # per-item outcomes for the paired gate: test through lm-eval's samples, validation through the fast scorer
    from skills.smollm2.common import score
    from skills.smollm2.data import read_jsonl
    from skills.smollm2.report import SmolEvaluator
    rec = evaluation.score(settings, mini_smollm2["base"], adapter, "test")
    assert rec.scores == ref and set(rec.outcomes) == {"math", "json"}
    assert all(len(v) == 4 and set(v.values()) <= {0.0, 1.0} for v in rec.outcomes.values())
    val = evaluation.score(load_settings(tmp_path, overrides={
        "catalog": "adapters-smollm2.yaml", "search": {"limit": 3},
        "eval": {"suite": "callable", "callable": "skills.smollm2.scorer:suite", "skills": ["math", "json"]}}),
        mini_smollm2["base"], adapter, "validation")
    ev = SmolEvaluator(mini_smollm2["base"], mini_smollm2["data"], ["math", "json"], settings=tiny_params()["eval"])
    model = ev._model(adapter)
    for skill in ("math", "json"):
        recs = read_jsonl(Path(mini_smollm2["data"]) / skill / "validation.jsonl")[:3]
        assert val.scores[skill] == pytest.approx(score(model, ev.tok, recs, 6, 8))
        assert len(val.outcomes[skill]) == 3


def test_learned_merge_driver_writes_and_scores_each_checkpoint(mini_smollm2, tmp_path):
    """skills.smollm2.learned (skills/learned.py) on the miniature: calibration prompts, the init merge and one
    training step written and scored on the test split, one row each."""
    import yaml
    from peft import PeftModel

    from skills.smollm2.common import load_base
    from skills.smollm2.data import read_jsonl
    from skills.smollm2.learned import main
    from skills.smollm2.tiny import tiny_params

    names = ["math", "json", "letters"]
    calib = tmp_path / "calibration"
    calib.mkdir()
    for s in names:
        rows = read_jsonl(Path(mini_smollm2["data"]) / s / "train.jsonl")[:3]
        (calib / f"{s}.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    p = tiny_params()
    paths = {"base": mini_smollm2["base"], "data": mini_smollm2["data"], "calibration": str(calib),
             "adapters": str(Path(mini_smollm2["adapters"]["math"]).parent)}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"smollm2": {"paths": paths, "data": {**p["data"], "skills": names},
                                                  "eval": p["eval"]}}))
    main(["--params", str(params), "--out", str(tmp_path / "out"), "--json", str(tmp_path / "rows.jsonl"),
          "--prompts", "2", "--checkpoints", "0,1", "--steps", "1", "--max-new", "4", "--threads", "1",
          "--cache", str(tmp_path / "cache")])
    rows = read_jsonl(tmp_path / "rows.jsonl")
    assert [r["steps"] for r in rows] == [0, 1] and rows[0]["prompts"] == 2
    assert all(set(r["test"]) == set(names) and 0 <= r["test_mean"] <= 1 for r in rows)
    assert len(rows[1]["loss"]) == 1 and rows[0]["config"]["init"] == "tsv/core lam=0.5"
    PeftModel.from_pretrained(load_base(mini_smollm2["base"])[0], str(tmp_path / "out" / "step-1"))  # loads


def test_the_smollm2_adapters_depend_on_train_and_validation_files_never_on_the_test_split():
    """dvc.yaml: the replay and adapter stages list each skill's train (and the adapters its validation) file of
    params.yaml's smollm2.data.skills, not the data directory: a larger test split then retrains nothing."""
    root = Path(__file__).resolve().parents[2]
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    skills = yaml.safe_load((root / "params.yaml").read_text())["smollm2"]["data"]["skills"]
    data = "${smollm2.paths.data}"
    replay, adapter = stages["smollm2_replay"]["deps"], stages["smollm2_adapter"]["do"]["deps"]
    for deps, splits in ((replay, ("train",)), (adapter, ("train", "validation"))):
        assert data not in deps and not any(d.endswith("/test.jsonl") for d in deps)
        assert {d for d in deps if d.startswith(data)} == {f"{data}/{k}/{s}.jsonl" for k in skills for s in splits}


def test_lm_eval_passes_use_every_core_unless_told_and_give_the_thread_count_back(monkeypatch):
    """smollm2.eval.threads: null scores on every core (the night's benchmark runs one evaluation at a time); a
    number pins it; either way the caller's count is restored (the night's merge tasks pin their own)."""
    import os

    from skills.smollm2 import evaluate as ev

    seen = []
    monkeypatch.setattr(ev, "_evaluate", lambda *a: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ev.evaluate("b", None, data_dir="d", tasks_dir="t", settings={"threads": None})
        assert torch.get_num_threads() == 1
        ev.evaluate("b", None, data_dir="d", tasks_dir="t", settings={"threads": 1})
    finally:
        torch.set_num_threads(before)
    assert seen == [os.cpu_count(), 1]
