"""The benchmark step through real lm-eval: a user-configured YAML task list on a tiny model, cached by content."""

from __future__ import annotations

import json
import shutil

import yaml

from test_pipeline_support import make_project, set_env


def test_lm_eval_task_list_scores_and_cache(tmp_path, monkeypatch, adapters, base):
    from skills.tokenizer import build_tokenizer
    from tasks import benchmark
    from tasks.config import load_settings

    set_env(monkeypatch, tmp_path)
    model = tmp_path / "base-tok"
    shutil.copytree(base, model)
    build_tokenizer().save_pretrained(model)
    project = make_project(tmp_path / "p", adapters, model, dvc_init=False)
    tasks_dir = project / "lm_tasks"
    tasks_dir.mkdir()
    data = tasks_dir / "copy.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{w}=", "answer": w}) + "\n" for w in ["ab", "ba", "aa", "bb"]))
    (tasks_dir / "tiny_copy.yaml").write_text(yaml.safe_dump({
        "task": "tiny_copy", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "output_type": "generate_until", "test_split": "test", "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}", "target_delimiter": "",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 3, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0}}))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pipeline"]["eval"] = {"suite": "lm-eval", "tasks": ["tiny_copy"], "include_path": "lm_tasks",
                                  "limit": 4, "batch_size": 4, "baselines": False}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    settings = load_settings(project)
    base_rec = {"name": "base", "uri": str(model), "path": str(model), "revision": None,
                "sha256": benchmark.model_digest(model)}

    first = benchmark.evaluate_cached(settings, base_rec, adapters[0], "math")
    assert set(first["scores"]) == {"tiny_copy"} and 0.0 <= first["scores"]["tiny_copy"] <= 1.0
    assert not first["cached"]
    again = benchmark.evaluate_cached(settings, base_rec, adapters[0], "math")
    assert again["cached"] and again["scores"] == first["scores"]
    # the benchmark's data is part of the key: a changed task file is evaluated afresh
    data.write_text(data.read_text() + json.dumps({"prompt": "ab=", "answer": "zz"}) + "\n")
    assert not benchmark.evaluate_cached(settings, base_rec, adapters[0], "math")["cached"]
