"""The learned merge candidate in the nightly (issue 23): a `method: tara` grid in the search space is trained after the
data-free candidates (from the best of them), scored on validation like every candidate and chosen only if it wins;
cached by content (adapters, prompts, base, config); its curve and cost in a child run and a Prefect artifact; the
prompts' digests in the lineage. Miniature: the tiny random Llama, token-id prompts, two training steps.

The scorer is scripted: a data-free merge scores by its lam, the learned merge (its manifest has "training") by the
LEARNED_VAL / LEARNED_TEST environment variables, so each test decides who wins where.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import champion_version, client, nightly, set_params

SCORER = '''
import json, os, pathlib

N = 100
FREE = {0.5: 0.6, 1.0: 0.5}


def score(base_dir, adapter_dir, split, limit):
    acc = 0.3
    if adapter_dir is not None:
        m = json.loads((pathlib.Path(adapter_dir) / "merge_manifest.json").read_text())
        learned = "training" in m
        acc = float(os.environ["LEARNED_VAL" if split == "validation" else "LEARNED_TEST"]) if learned \\
            else FREE[m["recipe"]["lam"]]
        with open(os.environ["LEARNED_CALLS"], "a") as f:
            f.write(json.dumps({"split": split, "learned": learned}) + "\\n")
    k = round(acc * N)
    return {"t1": [1] * k + [0] * (N - k), "t2": [1] * k + [0] * (N - k)}
'''

LEARNED = {"method": "tara", "objective": "teacher", "steps": 2, "max_new": 4, "topk": 4, "batch_size": 2}
SEARCH = {"search": [{"method": "ta", "space": "core", "rescale": "none", "lam": [0.5, 1.0]}, LEARNED]}


def calls(project: Path) -> list[dict]:
    path = project / "calls.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def learned_project(plain_project, prompt_files, monkeypatch):
    """The plain project with each adapter's prompts in the catalog (token ids: the tiny base has no tokenizer)."""
    (plain_project / "learned_scorer.py").write_text(SCORER)
    catalog = yaml.safe_load((plain_project / "adapters.yaml").read_text())
    (plain_project / "prompts").mkdir()
    for entry, path in zip(catalog["adapters"], prompt_files):
        dest = plain_project / "prompts" / f"{entry['name']}.jsonl"
        dest.write_text(path.read_text())
        entry["prompts"] = f"prompts/{dest.name}"
    (plain_project / "adapters.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    monkeypatch.setenv("LEARNED_CALLS", str(plain_project / "calls.jsonl"))
    monkeypatch.setenv("LEARNED_VAL", "0.8")
    monkeypatch.setenv("LEARNED_TEST", "0.85")
    set_params(plain_project, merge=SEARCH, pipeline__eval__baselines=False,
               pipeline__eval__callable="learned_scorer:score", pipeline__learn={"threads": 1, "progress": True})
    return plain_project


def test_a_learned_merge_that_wins_on_validation_is_chosen_registered_and_traced(learned_project):
    from peft import PeftModel
    from prefect.client.orchestration import get_client
    from transformers import AutoModelForCausalLM

    project = learned_project
    night = nightly(project)
    s = night["search"]
    assert s["candidates"] == 3 and s["chosen"].startswith("tara/factors teacher")
    assert "init=ta/core" in s["chosen"] and "lam=0.5" in s["chosen"]  # from the best data-free candidate
    val = [c for c in calls(project) if c["split"] == "validation"]
    assert [c["learned"] for c in val] == [False, False, True]  # trained after the data-free ones
    assert [c["learned"] for c in calls(project) if c["split"] == "test"] == [True]  # only the chosen, once
    assert champion_version(project) == night["registered"]["version"]

    store = Path(night["store"])
    manifest = json.loads((store / "merge_manifest.json").read_text())
    assert manifest["recipe"]["objective"] == "teacher" and manifest["training"]["steps"] == 2
    assert (store / "loss_curve.png").is_file()
    base = yaml.safe_load((project / "adapters.yaml").read_text())["base"]["source"]
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(store))  # loads in PEFT

    # lineage: each source's prompts with their digest, the same as the manifest's inputs
    c = client(project)
    run = c.get_run(night["registered"]["run_id"])
    lineage = json.loads(Path(c.download_artifacts(run.info.run_id, "lineage.json", str(project / "dl"))).read_text())
    digests = {s["name"]: s["prompts"]["sha256"] for s in lineage["sources"]}
    assert digests == {i["adapter"]: i["sha256"] for i in manifest["inputs"]}
    version = c.get_model_version("merged-test", night["registered"]["version"])
    assert {k: v for k, v in version.tags.items() if k.endswith(".prompts_sha256")} == \
        {f"source.{n}.prompts_sha256": d for n, d in digests.items()}

    # `pico lineage` of the learned champion: every check matches, the prompts' digests recomputed
    from pipeline.audit import walk
    from pipeline.settings import load_settings

    ok, lines = walk(load_settings(project))
    assert ok, lines
    assert sum(" OK " in x and "prompts of" in x for x in lines) == 3
    assert any("recipe" in x and "learned factors / teacher" in x for x in lines)

    # the learned candidate's child run: its curve and cost
    child = [r for r in c.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
             if r.data.tags.get("pico.kind") == "learned"]
    assert len(child) == 1 and child[0].data.metrics["learn.steps"] == 2
    history = c.get_metric_history(child[0].info.run_id, "learn.loss")
    assert [m.step for m in history] == [0, 1] and all(m.value == m.value for m in history)

    # the Prefect artifact of the training
    import anyio

    async def artifact():
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as pc:
            return await pc.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[
                "pico-learned-merge"])))

    found = anyio.run(artifact)
    assert found and "| 2 |" in found[-1].data and "teacher replies" in found[-1].data

    # an unchanged second night trains nothing and scores nothing again
    before = len(calls(project))
    again = nightly(project)
    assert again["search"]["cached"] == 3 and again["store"] == night["store"]
    assert len(calls(project)) == before


def test_a_learned_merge_that_does_not_win_is_not_chosen(learned_project, monkeypatch):
    monkeypatch.setenv("LEARNED_VAL", "0.6")  # ties the best data-free candidate: the data-free merge keeps it
    night = nightly(learned_project)
    assert night["search"]["chosen"] == "ta/core lam=0.5"
    assert json.loads((Path(night["store"]) / "merge_manifest.json").read_text())["recipe"]["method"] == "ta"


def test_changed_prompts_retrain_only_the_learned_candidate(learned_project):
    project = learned_project
    first = nightly(project)
    path = project / "prompts" / "math.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))  # one prompt fewer
    second = nightly(project)
    assert second["search"]["cached"] == 2  # the data-free candidates
    assert second["store"] != first["store"] and second["merge_key"] != first["merge_key"]


def test_a_bad_prompts_file_stops_the_night_naming_file_and_line_with_nothing_written(learned_project, capsys):
    from flows.nightly import main

    project = learned_project
    (project / "prompts" / "code.jsonl").write_text('{"input_ids": [5, 6]}\n{"prompt": 3}\n')
    assert main(["--project", str(project), "--no-build"]) == 1
    assert "code.jsonl:2: no \"prompt\"" in capsys.readouterr().err
    assert not (project / "build" / "pipeline" / "store").exists()
    assert not client(project).search_registered_models()


def test_a_learned_grid_needs_prompts_for_every_adapter(learned_project):
    from pipeline.settings import ConfigError, load_settings

    set_params(learned_project, merge={"search": [{**LEARNED, "preference": [1, 2]}]})
    with pytest.raises(ConfigError, match="preference vector has 2 entries but there are 3 adapters"):
        load_settings(learned_project)
    catalog = yaml.safe_load((learned_project / "adapters.yaml").read_text())
    del catalog["adapters"][1]["prompts"]
    (learned_project / "adapters.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    with pytest.raises(ConfigError, match=r"gives none for code .*prompts:"):
        load_settings(learned_project, overrides={"merge": SEARCH})


def test_progress_lines_give_elapsed_time_and_an_estimate_at_most_every_few_seconds(monkeypatch):
    from pipeline import runtime

    now = [100.0]
    monkeypatch.setattr(runtime.time, "monotonic", lambda: now[0])
    logged = []

    class Log:
        def info(self, fmt, *args):
            logged.append(fmt % args)

    report = runtime.progress_lines(Log(), "tara/factors", every_s=15)
    report("teacher replies", 0, 384, "prompt")
    for done, t in ((64, 110), (128, 120), (192, 140), (384, 160)):
        now[0] = t
        report("teacher replies", done, 384, "prompt")
    report("factors, teacher (6 tasks)", 0, 20, "step")
    assert logged == ["tara/factors: teacher replies 0/384 prompts, 0 s",
                      "tara/factors: teacher replies 128/384 prompts, 20 s, about 40 s left",  # 64 was 10 s in: quiet
                      "tara/factors: teacher replies 192/384 prompts, 40 s, about 40 s left",
                      "tara/factors: teacher replies 384/384 prompts, 60 s",  # the end: always
                      "tara/factors: factors, teacher (6 tasks) 0/20 steps, 0 s"]
