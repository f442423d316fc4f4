"""The benchmark step through real lm-eval: a user-configured YAML task list on a tiny model, cached by content."""

from __future__ import annotations

import json
import shutil

import yaml
from pipeline_helpers import make_project, set_env, tokenized_base


def test_lm_eval_task_list_scores_and_cache(tmp_path, monkeypatch, adapters, base):
    from pipeline import evaluation
    from pipeline.settings import load_settings
    from pipeline.sources import model_source

    set_env(monkeypatch, tmp_path)
    model = tokenized_base(base, tmp_path / "base-tok")
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

    set_env(monkeypatch, tmp_path)
    model = tokenized_base(base, tmp_path / "base-tok")
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


def gen_task(name: str, data, filters: dict[str, str] | None = None) -> dict:
    """A generate_until task over a local JSONL file; ``filters``: {filter name: the constant its answer becomes}."""
    cfg = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
           "output_type": "generate_until", "test_split": "test", "doc_to_text": "{{prompt}}",
           "doc_to_target": "{{answer}}", "target_delimiter": "",
           "generation_kwargs": {"until": ["\n"], "max_gen_toks": 3, "do_sample": False},
           "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
           "metadata": {"version": 1.0}}
    if filters:  # a regex that never matches ("(?!)"): every reply becomes the filter's fallback
        cfg["filter_list"] = [{"name": f, "filter": [{"function": "regex", "regex_pattern": "(?!)", "fallback": value},
                                                     {"function": "take_first"}]} for f, value in filters.items()]
    return cfg


def test_lm_eval_group_and_multi_filter_task(tmp_path, monkeypatch, adapters, base):
    """A group is scored as its leaf tasks (what lm-eval keys its samples by), a task with two filters is read
    through the filter pipeline.eval.metric names, and both are checked before any work: floors on leaf names,
    a validation list that shares a leaf with the test group refused."""
    import lm_eval
    import pytest

    from pipeline import evaluation
    from pipeline.settings import ConfigError, load_settings
    from pipeline.sources import model_source

    set_env(monkeypatch, tmp_path)
    model = tokenized_base(base, tmp_path / "base-tok")
    project = make_project(tmp_path / "p", adapters, model, dvc_init=False)
    tasks_dir = project / "lm_tasks"
    tasks_dir.mkdir()
    copy, ok = tasks_dir / "copy.jsonl", tasks_dir / "ok.jsonl"
    copy.write_text("".join(json.dumps({"prompt": f"{w}=", "answer": w}) + "\n" for w in ["ab", "ba", "aa", "bb"]))
    ok.write_text("".join(json.dumps({"prompt": f"{w}=", "answer": "ok"}) + "\n" for w in ["ab", "ba", "aa"]))
    (tasks_dir / "g_copy.yaml").write_text(yaml.safe_dump(gen_task("g_copy", copy)))
    (tasks_dir / "g_ok.yaml").write_text(yaml.safe_dump(gen_task("g_ok", ok, {"right": "ok", "wrong": "no"})))
    (tasks_dir / "g_val.yaml").write_text(yaml.safe_dump(gen_task("g_val", copy)))
    (tasks_dir / "tiny_group.yaml").write_text(yaml.safe_dump({"group": "tiny_group", "task": ["g_copy", "g_ok"],
                                                               "metadata": {"version": 1.0}}))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pipeline"]["eval"] = {"suite": "lm-eval", "tasks": ["tiny_group"], "include_path": "lm_tasks",
                                  "metric": "exact_match,right", "limit": 4, "batch_size": 4, "baselines": False}
    params["pipeline"]["search"] = {"tasks": ["g_val"]}
    params["pipeline"]["gate"] = {"floors": {"g_ok": 0.5}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    settings = load_settings(project)
    from lm_eval.tasks import TaskManager  # lm-eval's own, on this folder only: indexing its built-in tasks costs ~7 s

    monkeypatch.setattr(evaluation, "_task_manager", lambda inc: TaskManager(include_path=inc, include_defaults=False))

    # checked before any work: the group's leaves are the benchmark's tasks
    assert evaluation.check_benchmark(settings) == ["g_copy", "g_ok"]
    group_floor = load_settings(project, overrides={"gate": {"floors": {"tiny_group": 0.5}}})
    with pytest.raises(ConfigError, match=r"pipeline.gate.floors: 'tiny_group' is not a task of the benchmark \(its "
                                          r"tasks: g_copy, g_ok\)"):
        evaluation.check_benchmark(group_floor)
    overlap = load_settings(project, overrides={"search": {"tasks": ["g_val", "g_copy"]}})
    with pytest.raises(ConfigError, match=r"params.yaml: pipeline.search.tasks: g_copy also in pipeline.eval.tasks "
                                          r"\(groups expanded\)"):
        evaluation.check_benchmark(overlap)
    unknown = load_settings(project, overrides={"eval": {"tasks": ["no_such_task"]}})
    with pytest.raises(ConfigError, match=r"pipeline.eval.tasks: 'no_such_task' is not an lm-eval task, group or tag"):
        evaluation.check_benchmark(unknown)

    got: list[dict] = []
    real = lm_eval.simple_evaluate

    def keep(**kw):
        got.append(real(**kw))
        return got[-1]

    monkeypatch.setattr(lm_eval, "simple_evaluate", keep)
    rec = evaluation.evaluate(settings, model_source("base", str(model), model), adapters[0], "math")
    res = got[0]
    assert set(res["samples"]) == {"g_copy", "g_ok"}  # lm-eval keys samples by leaf task
    assert rec.n == {"g_copy": 4, "g_ok": 3} and list(rec.scores) == ["g_copy", "g_ok"]
    # g_ok logs every document twice, once per filter; the metric's filter is the one read
    assert len(res["samples"]["g_ok"]) == 6 and {s["filter"] for s in res["samples"]["g_ok"]} == {"right", "wrong"}
    assert set(rec.outcomes["g_ok"].values()) == {1.0} and rec.scores["g_ok"] == res["results"]["g_ok"][
        "exact_match,right"] == 1.0
    assert set(evaluation._lmeval_outcomes(res, ["g_copy", "g_ok"], "exact_match,wrong")["g_ok"].values()) == {0.0}
    # a one-filter task ("none") is read whatever filter the metric names
    assert rec.scores["g_copy"] == res["results"]["g_copy"]["exact_match,none"]
    with pytest.raises(evaluation.EvaluationError, match=r"task 'g_ok' logs 2 filters \(right, wrong\): "
                                                         r"pipeline.eval.metric must name one of them, e.g. "
                                                         r"'exact_match,right'"):
        evaluation._lmeval_outcomes(res, ["g_copy", "g_ok"], "exact_match")
    with pytest.raises(evaluation.EvaluationError, match=r"task 'g_ok' has no filter 'strict'"):
        evaluation._lmeval_outcomes(res, ["g_copy", "g_ok"], "exact_match,strict")
    # the served model generates as the group's leaf tasks do (their generation_kwargs, not the group YAML's none)
    assert evaluation.generation(settings, model)["max_new_tokens"] == 3


def samples(values: list, filt: str = "none", metric: str = "f1") -> list[dict]:
    return [{"doc_id": i, "doc_hash": f"h{i}", "filter": filt, "metrics": [metric], metric: v}
            for i, v in enumerate(values)]


def test_lm_eval_per_item_scores_and_corpus_metrics():
    """Per-item scores that average to lm-eval's own score are compared item by item (the gate's sign-flip test);
    a metric lm-eval aggregates over the corpus (a tuple per item, or a mean that is not its score) is refused."""
    import pytest

    from pipeline import evaluation

    res = {"samples": {"qa": samples([0.5, 0.25, 1.0, 0.0])}, "results": {"qa": {"f1,none": 0.4375}}}
    assert evaluation._lmeval_outcomes(res, ["qa"], "f1") == {"qa": {"0:h0": 0.5, "1:h1": 0.25, "2:h2": 1.0,
                                                                       "3:h3": 0.0}}
    res["results"]["qa"]["f1,none"] = 0.41  # e.g. a corpus F1: not the mean of the per-item values
    with pytest.raises(evaluation.EvaluationError, match=r"the mean of the per-item 'f1' \(0.437500\) is not "
                                                         r"lm-eval's score 0.410000"):
        evaluation._lmeval_outcomes(res, ["qa"], "f1")
    bleu = {"samples": {"tr": samples([("ref", "pred")], metric="bleu")}, "results": {}}
    with pytest.raises(evaluation.EvaluationError, match=r"metric 'bleu' logs tuple values per item, not a score"):
        evaluation._lmeval_outcomes(bleu, ["tr"], "bleu")
    with pytest.raises(evaluation.EvaluationError, match=r"samples have no metric 'acc' \(they have: f1\)"):
        evaluation._lmeval_outcomes(res, ["qa"], "acc")
    with pytest.raises(evaluation.EvaluationError, match=r"samples for tasks not in the expanded task list: \['qa'\]"):
        evaluation._lmeval_outcomes(res, ["other"], "f1")
