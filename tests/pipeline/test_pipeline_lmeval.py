"""The benchmark step through real lm-eval: a user-configured YAML task list on a tiny model, cached by content."""

from __future__ import annotations

import json
import shutil

import yaml
from pipeline_helpers import make_project, set_env


def test_lm_eval_task_list_scores_and_cache(tmp_path, monkeypatch, adapters, base):
    from pipeline import evaluation
    from pipeline.settings import load_settings
    from pipeline.sources import model_source
    from skills.tokenizer import build_tokenizer

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
    base_rec = model_source("base", str(model), model)

    first = evaluation.evaluate(settings, base_rec, adapters[0], "math")
    assert set(first.scores) == {"tiny_copy"} and 0.0 <= first.scores["tiny_copy"] <= 1.0
    assert not first.cached
    again = evaluation.evaluate(settings, base_rec, adapters[0], "math")
    assert again.cached and again.scores == first.scores
    # the benchmark's data is part of the key: a changed task file is evaluated afresh
    data.write_text(data.read_text() + json.dumps({"prompt": "ab=", "answer": "zz"}) + "\n")
    assert not evaluation.evaluate(settings, base_rec, adapters[0], "math").cached
    # how the benchmark generated, for the registered model to serve the same way: the task YAML's generation_kwargs
    assert evaluation.generation(settings, model) == {"apply_chat_template": False, "max_new_tokens": 3,
                                                      "stop": ["\n"], "chat_template": None}


def test_skills_suite_plugs_in_through_the_callable_hook(tmp_path, monkeypatch, adapters, base):
    """`suite: skills` is the scorer `skills.scorer:suite`: its data digest in the fingerprint (the same value the
    pipeline computed before the hook, so cache keys and champions' fingerprints carry over), its inputs for the
    suite build, and lm-eval scores per skill."""
    import pytest

    from pico.writer import json_digest, sha256_file
    from pipeline import evaluation
    from pipeline.settings import load_settings
    from pipeline.sources import model_source
    from skills.data import write_suite_data
    from skills.tiny import tiny_params
    from skills.tokenizer import build_tokenizer

    set_env(monkeypatch, tmp_path)
    model = tmp_path / "base-tok"
    shutil.copytree(base, model)
    build_tokenizer().save_pretrained(model)
    project = make_project(tmp_path / "p", adapters, model, dvc_init=False)
    write_suite_data(tiny_params()["data"], project / "suite-data")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["suite"] = {"paths": {"data": "suite-data"}}
    params["pipeline"]["eval"] = {"suite": "skills", "skills": ["rev", "add"], "limit": 2, "batch_size": 4}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    settings = load_settings(project)

    assert evaluation.scorer_name(settings.pipeline.eval) == "skills.scorer:suite"
    fp = evaluation.fingerprint(settings)
    files = {str(p): sha256_file(p) for p in sorted((project / "suite-data").glob("*/test.jsonl"))}
    assert len(files) == 6 and fp["data"] == json_digest(files)
    assert fp["suite"] == "skills" and fp["skills"] == ["rev", "add"] and "callable" not in fp
    assert evaluation.scorer_inputs(settings) == [project / "suite-data"]

    base_rec = model_source("base", str(model), model)
    rec = evaluation.evaluate(settings, base_rec, adapters[0], "math")
    assert set(rec.scores) == {"add", "rev"} and all(0.0 <= v <= 1.0 for v in rec.scores.values())
    assert (project / "build" / "pipeline" / "lm_eval_tasks").is_dir()  # task YAMLs under the project's work dir

    shutil.rmtree(project / "suite-data")
    with pytest.raises(evaluation.EvaluationError, match=r"skills suite data .*suite-data is missing"):
        evaluation.fingerprint(settings)
