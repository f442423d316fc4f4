"""The nightly's search + gate on a user's own lm-eval tasks: a folder of task YAMLs (``include_path``) over local
JSONL files, one task for choosing (``search.tasks``, the validation items) and one for the benchmark
(``eval.tasks``, the test items), scored by real lm-eval on the tiny test model.

The two tasks have different item counts (VAL_N, TEST_N), so every score says which split it came from.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import client, nightly, set_params, tokenized_base

VAL_N, TEST_N = 16, 10


def write_user_tasks(folder: Path) -> None:
    """Two loglikelihood (multiple-choice) tasks over local JSONL files, as a user writes them (no network)."""
    folder.mkdir()
    rng = random.Random(7)
    alphabet = "abcdefgh0123456789"
    for name, n in (("user_val", VAL_N), ("user_test", TEST_N)):
        rows = []
        for _ in range(n):
            choices = ["".join(rng.choice(alphabet) for _ in range(3)) for _ in range(3)]
            rows.append({"prompt": "".join(rng.choice(alphabet) for _ in range(4)) + "=", "choices": choices,
                         "label": rng.randrange(3)})
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({
            "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{prompt}}",
            "doc_to_choice": "choices", "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0}}))


@pytest.fixture
def lmeval_project(plain_project, base, tmp_path):

    model = tokenized_base(base, tmp_path / "base-tok")  # lm-eval's HF model needs a tokenizer beside the weights
    catalog = yaml.safe_load((plain_project / "adapters.yaml").read_text())
    catalog["base"] = {"source": str(model)}
    (plain_project / "adapters.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    write_user_tasks(plain_project / "user_tasks")
    set_params(plain_project,
               merge={"search": [{"method": "ties", "space": "core", "rescale": "none", "lam": [0.5, 2.0, 6.0],
                                  "params": {"density": 0.7}}]},
               pipeline__eval={"suite": "lm-eval", "include_path": "user_tasks", "tasks": ["user_test"],
                               "metric": "acc", "batch_size": 16, "baselines": False},
               pipeline__search={"tasks": ["user_val"]},
               pipeline__gate={"floor": 0.0, "min_delta": 0.0})
    return plain_project


def candidate_records(project: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((project / "build" / "pipeline" / "search-cache").glob("*.json"))]


@pytest.mark.slow  # two nights of lm-eval search and gate: ~24 s (CI runs the slow tier)
def test_search_and_gate_on_a_user_lm_eval_task_folder(lmeval_project):
    from pipeline import evaluation

    project = lmeval_project
    reads = len(evaluation.TEST_READS)
    night = nightly(project)

    # every candidate was scored on the validation task, item by item, and only there
    recs = candidate_records(project)
    assert len(recs) == 3
    for r in recs:
        v = r["validation"]
        assert set(v["scores"]) == {"user_val"} and v["n"] == {"user_val": VAL_N}
        assert len(v["outcomes"]["user_val"]) == VAL_N and set(v["outcomes"]["user_val"].values()) <= {0.0, 1.0}
        assert v["scores"]["user_val"] == pytest.approx(sum(v["outcomes"]["user_val"].values()) / VAL_N)
    means = {r["label"]: r["validation"]["mean"] for r in recs}
    assert len(set(means.values())) > 1, means  # the candidates differ: the choice below is a real argmax
    # the chosen one is the validation argmax (ties: the earlier candidate in search order)
    best = min(recs, key=lambda r: (-r["validation"]["mean"], r["index"]))
    assert night["search"]["chosen"] == best["label"] and "validation argmax" in night["search"]["why"]
    assert night["recipe_label"] == best["label"]

    # the test task was read once, for the chosen merge, with per-sample outcomes: the gate ran on them
    assert evaluation.TEST_READS[reads:] == ["merged"]
    assert set(night["eval"]["scores"]) == {"user_test"} and night["eval"]["n"] == {"user_test": TEST_N}
    assert night["gate"] is not None and night["gate"]["candidate"]["n"] == {"user_test": TEST_N}
    assert night["decision"]["promoted"]  # no champion yet: the floors alone (floor 0)
    c = client(project)
    run_id = night["registered"]["run_id"]
    table = json.loads(Path(c.download_artifacts(run_id, "outcomes.json")).read_text())
    assert len(table["data"]) == TEST_N

    # a second night with another grid: the champion's outcomes on the same test items, compared pair by pair
    set_params(project, merge={"search": [{"method": "ties", "space": "core", "rescale": "none", "lam": [0.25, 1.0],
                                           "params": {"density": 0.7}}]})
    second = nightly(project)
    assert second["search"]["candidates"] == 2 and second["search"]["chosen"] != night["search"]["chosen"]
    cmp = second["gate"]["comparison"]["tasks"]["user_test"]
    assert cmp["n"] == TEST_N and cmp["won"] + cmp["lost"] <= TEST_N
    assert second["gate"]["champion"]["n"] == {"user_test": TEST_N}


def test_validation_and_test_use_the_same_lm_eval_model_settings(lmeval_project, monkeypatch):
    """The search's validation scoring reads the model settings the benchmark reads (dtype, model_args, chat
    template, few-shot), and they are in the candidates' cache key: changing one re-scores the candidates."""
    from pipeline import evaluation
    from pipeline.settings import load_settings

    monkeypatch.setattr(evaluation, "_task_manager", lambda include: include)  # indexing lm-eval's tasks: seconds
    settings = load_settings(lmeval_project)
    kw = evaluation.lmeval_kwargs(settings, "/b", "/a", ["user_val"], 3)
    assert kw["model_args"] == "pretrained=/b,tokenizer=/b,dtype=float32,peft=/a" and kw["limit"] == 3
    assert kw["task_manager"] == str(lmeval_project / "user_tasks")
    before = evaluation.fingerprint(settings, "validation")
    for change in ({"dtype": "bfloat16"}, {"model_args": "attn_implementation=eager"}, {"num_fewshot": 2},
                   {"apply_chat_template": True}):
        other = load_settings(lmeval_project, overrides={"eval": change})
        kw = evaluation.lmeval_kwargs(other, "/b", None, ["user_val"], None)
        assert (kw["num_fewshot"], kw["apply_chat_template"]) == (change.get("num_fewshot", 0),
                                                                  change.get("apply_chat_template", False))
        assert ("dtype=bfloat16" in kw["model_args"]) == ("dtype" in change)
        assert ("attn_implementation=eager" in kw["model_args"]) == ("model_args" in change)
        assert evaluation.fingerprint(other, "validation") != before, change
