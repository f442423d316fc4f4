"""Skills suite: lm-eval YAML tasks over the local JSONL, loaded by TaskManager, scored through simple_evaluate."""
from __future__ import annotations

import os

import pytest
import yaml

from skills.tiny import tiny_params


@pytest.fixture(scope="module")
def memoriser(tmp_path_factory):
    """A tiny base that memorised a 6-row fact table (correct labels only): it must score well above zero."""
    from skills.base import train_base
    from skills.data import write_suite_data

    root = tmp_path_factory.mktemp("mem")
    p = tiny_params(data={"skills": ["fact", "rev"], "fact_table_size": 6, "p_correct_easy": 1.0,
                          "p_correct_hard": 1.0, "copy_frac": 0.0, "n_pretrain": 400, "n_test": 8,
                          "n_validation": 8},
                    base={"steps": 220, "lr": 1e-2, "hidden_size": 48, "intermediate_size": 96})
    write_suite_data(p["data"], root / "data")
    train_base(p["base"], root / "data", root / "base", log_every=10**9)
    return root


def test_task_yamls_load_through_the_task_manager(tmp_path, memoriser):
    from skills.lmeval import task_manager, write_tasks

    inc = write_tasks(memoriser / "data", tmp_path / "tasks")
    names = sorted(p.stem for p in inc.glob("*.yaml"))
    assert names == ["skills", "skills_fact", "skills_fact_val", "skills_rev", "skills_rev_val", "skills_val"]
    cfg = yaml.safe_load((inc / "skills_fact.yaml").read_text())
    assert cfg["dataset_path"] == "json" and cfg["test_split"] == "test"
    assert all(os.path.isabs(f) and os.path.exists(f) for f in cfg["dataset_kwargs"]["data_files"].values())
    tm = task_manager(inc)
    assert {"skills", "skills_fact", "skills_rev_val"} <= set(tm.all_tasks)
    # rewriting is idempotent and a moved data dir is picked up
    assert write_tasks(memoriser / "data", tmp_path / "tasks") == inc


@pytest.mark.slow
def test_simple_evaluate_scores_exact_match_like_the_fast_decoder(tmp_path, memoriser, monkeypatch):
    from skills.base import load_base
    from skills.common import accuracy
    from skills.data import read_jsonl
    from skills.evaluate import evaluate

    monkeypatch.chdir(tmp_path)  # the task YAMLs must not depend on the cwd
    acc = evaluate(memoriser / "base", None, data_dir=memoriser / "data", tasks_dir=tmp_path / "tasks")
    assert set(acc) == {"fact", "rev"}
    model = load_base(memoriser / "base")
    for skill in acc:
        recs = read_jsonl(memoriser / "data" / skill / "test.jsonl")
        assert acc[skill] == pytest.approx(accuracy(model, recs))
    assert acc["fact"] >= 0.5  # memorised: exact match really scores hits
    val = evaluate(memoriser / "base", None, skills=["fact"], split="validation", limit=3,
                   data_dir=memoriser / "data", tasks_dir=tmp_path / "tasks")
    assert set(val) == {"fact"}


@pytest.mark.slow
def test_evaluate_with_a_peft_adapter(tmp_path):
    from skills.evaluate import evaluate
    from skills.tiny import build_tiny_suite

    s = build_tiny_suite(tmp_path / "suite", adapters=["rev"])
    acc = evaluate(s["base"], s["adapters"]["rev"], skills=["rev", "add"], limit=4, data_dir=s["data"],
                   tasks_dir=tmp_path / "tasks")
    assert set(acc) == {"rev", "add"} and all(0.0 <= v <= 1.0 for v in acc.values())
    with pytest.raises(ValueError):
        evaluate(s["base"], None, skills=["nope"], data_dir=s["data"], tasks_dir=tmp_path / "tasks")
