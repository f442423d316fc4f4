"""The nightly with a recipe search: chosen on validation, the test split read once, child runs, artifacts, the
statistical gate in the flow, cached reruns, and notifications on promotion and on failure.

The scorer returns per-item outcomes and logs each call: validation prefers lam 0.5, the test split prefers lam 2.0,
so a night that looked at the test split to choose would pick 2.0.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from notify_receiver import Receiver
from pipeline_helpers import champion_version, client, nightly, set_params

SCORER = '''
import json, os, pathlib

N = 200
VAL = {0.5: 0.8, 1.0: 0.6, 2.0: 0.4}      # validation accuracy by lam: lam 0.5 is the argmax
TEST = {0.5: 0.55, 1.0: 0.6, 2.0: 0.75}   # test accuracy by lam: lam 2.0 would win if the test split chose


def score(base_dir, adapter_dir, split, limit):
    lam = None
    if adapter_dir is not None:
        lam = json.loads((pathlib.Path(adapter_dir) / "merge_manifest.json").read_text())["recipe"]["lam"]
    with open(os.environ["SEARCH_SCORER_CALLS"], "a") as f:
        f.write(json.dumps({"split": split, "lam": lam}) + "\\n")
    acc = 0.3 if lam is None else (VAL if split == "validation" else TEST)[lam]
    k = round(acc * N)  # nested: a better model is right on every item a worse one is right on, and more
    return {"t1": [1] * k + [0] * (N - k), "t2": [1] * k + [0] * (N - k)}
'''

SEARCH = {"search": [{"method": "ties", "space": "core", "rescale": "none", "lam": [0.5, 1.0, 2.0],
                      "params": {"density": 0.7}},
                     {"method": "ties", "space": "knots", "calibrate": "pico", "rescale": "post"}]}


def calls(project: Path) -> list[dict]:
    path = project / "calls.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def search_project(plain_project, monkeypatch):
    # its own module name: the callable is imported once per process, and other tests' scorer.py differs
    (plain_project / "search_scorer.py").write_text(SCORER)
    monkeypatch.setenv("SEARCH_SCORER_CALLS", str(plain_project / "calls.jsonl"))
    set_params(plain_project, merge=SEARCH, pipeline__eval__baselines=False,
               pipeline__eval__callable="search_scorer:score")
    return plain_project


def test_search_chooses_on_validation_reads_test_once_and_records_it(search_project):
    from prefect.client.orchestration import get_client

    project = search_project
    receiver = Receiver()
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        set_params(project, pipeline__notify={"block": receiver.block()})
        first = nightly(project)
    finally:
        receiver.close()
    # a night leaves the process's MLflow environment as it found it (MLflow's global URI setter writes the variable
    # the settings read, which pointed later nights of this process at this project's store)
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before
    s = first["search"]
    # 4 candidates: the knots/pico/post one runs too (knots: lambda pinned, lam 1 -> validation 0.6)
    assert s["candidates"] == 4 and s["chosen"] == "ties/core lam=0.5 density=0.7"
    assert "validation argmax" in s["why"] and s["margin"] == pytest.approx(0.2)
    # the test split was read once, for the chosen merge (lam 0.5), never for the other candidates
    merged_test = [c for c in calls(project) if c["split"] == "test" and c["lam"] is not None]
    assert merged_test == [{"split": "test", "lam": 0.5}]
    assert sorted(c["lam"] for c in calls(project) if c["split"] == "validation") == [0.5, 1.0, 1.0, 2.0]
    assert first["eval"]["mean"] == pytest.approx(0.55) and first["eval"]["mean_stderr"] > 0
    d = first["decision"]
    assert d["promoted"] and d["reasons"] == ["no champion yet; every task at or above its floor"]
    # the promotion reached the receiver
    assert len(receiver.got) == 1 and "v1 promoted to champion" in receiver.got[0]["subject"]
    assert "ties/core lam=0.5" in receiver.got[0]["body"]

    # MLflow: one child run per candidate under the night's run; the version records the choice and the margin
    c = client(project)
    run_id = first["registered"]["run_id"]
    children = c.search_runs([first["registered"]["experiment_id"]],
                             filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    assert len(children) == 4
    chosen = [r for r in children if r.data.tags["pico.chosen"] == "true"]
    assert len(chosen) == 1 and chosen[0].data.metrics["val.mean"] == pytest.approx(0.8)
    assert chosen[0].data.metrics["val.t1_stderr"] > 0
    v = c.get_model_version("merged-test", "1")
    assert v.tags["search.chosen"] == "ties/core lam=0.5 density=0.7"
    assert float(v.tags["search.runner_up_margin"]) == pytest.approx(0.2)
    night = c.get_run(run_id)
    assert night.data.metrics["score.t1.stderr"] > 0 and "score.mean.stderr" in night.data.metrics
    table = json.loads(Path(c.download_artifacts(run_id, "outcomes.json")).read_text())
    assert len(table["data"]) == 400  # 2 tasks x 200 items of the merged model (no champion yet)

    # Prefect artifacts on the flow run, with their stable keys
    import asyncio

    async def keys():
        async with get_client() as pc:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

            arts = await pc.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[first["flow_run_id"]])))
            return {a.key: a for a in arts}

    arts = asyncio.run(keys())
    assert set(arts) == {"pico-candidates", "pico-leaderboard", "pico-decision", "pico-mlflow-run"}
    assert "validation argmax" in arts["pico-decision"].data
    rows = json.loads(arts["pico-candidates"].data)
    assert rows[0]["candidate"] == "ties/core lam=0.5 density=0.7" and rows[0]["chosen"] == "yes"

    # an unchanged night recomputes nothing: no scorer call, every candidate cached
    n_calls = len(calls(project))
    again = nightly(project)
    assert len(calls(project)) == n_calls
    assert again["search"]["cached"] == 4 and again["decision"]["unchanged"]


def test_gate_in_the_flow_promotes_a_significant_gain_and_refuses_noise(search_project):
    project = search_project
    nightly(project)  # v1: lam 0.5, test 0.55
    set_params(project, merge={"search": [{"method": "ties", "space": "core", "rescale": "none", "lam": [2.0, 1.0],
                                           "params": {"density": 0.7}}]})
    # validation picks lam 1.0 (0.6 > 0.4); test 0.6 vs the champion's 0.55 on 200 nested items per task:
    # 10 items won per task, none lost: significant at alpha 0.05
    second = nightly(project)
    assert second["search"]["chosen"] == "ties/core lam=1 density=0.7"
    d = second["decision"]
    assert d["promoted"] and "significant" in d["reasons"][0], d["reasons"]
    t1 = second["gate"]["comparison"]["tasks"]["t1"]
    assert (t1["won"], t1["lost"], t1["n"], t1["p_worse"]) == (10, 0, 200, 1.0)
    assert t1["diff"] == pytest.approx(0.05) and t1["p_better"] == pytest.approx(2 ** -10)
    assert t1["stderr"] == pytest.approx((10 * 0.95 ** 2 + 190 * 0.05 ** 2) ** 0.5 / 199 ** 0.5 / 200 ** 0.5)
    # the same gain needs alpha 0.0001 now: refused as noise at that level, with the reason
    set_params(project, merge={"method": "ties", "space": "core", "rescale": "none", "lam": 2.0,
                               "params": {"density": 0.7}},
               pipeline__gate__alpha=1e-30, pipeline__gate__iters=1000)
    third = nightly(project)  # lam 2.0 test 0.75 vs 0.6: a big gain, but nothing is significant at 1e-30
    assert third["search"] is None  # one plain recipe: no search
    assert not third["decision"]["promoted"] and "not significant" in third["decision"]["reasons"][0]
    assert champion_version(project) == second["registered"]["version"]


def test_failure_notification_reaches_the_receiver(search_project):

    project = search_project
    receiver = Receiver()
    try:
        set_params(project, pipeline__notify={"block": receiver.block()})
        cat = project / "adapters.yaml"
        data = yaml.safe_load(cat.read_text())
        data["adapters"][0]["sha256"] = "0" * 64
        cat.write_text(yaml.safe_dump(data))
        with pytest.raises(Exception, match="sha256"):
            nightly(project)
    finally:
        receiver.close()
    assert len(receiver.got) == 1
    assert receiver.got[0]["subject"].startswith("pico nightly FAILED: nightly-merge")
    assert "sha256" in receiver.got[0]["body"] and "No alias was moved." in receiver.got[0]["body"]


def test_screening_on_a_validation_subset_then_finalists_on_all_of_it(search_project):
    """limit + finalists: every candidate on the first items, the top ones again on all items; the choice is made
    among the finalists (the scripted scorer ignores limit, so the rounds differ only in their records)."""
    project = search_project
    set_params(project, pipeline__search={"limit": 50, "finalists": 2})
    night = nightly(project)
    s = night["search"]
    rows = s["leaderboard"]
    assert [r["scored on"] for r in rows[:2]] == ["all validation items (finalist)"] * 2
    assert all(r["scored on"] == "first 50 validation items" for r in rows[2:]) and len(rows) == 4
    assert s["chosen"] == "ties/core lam=0.5 density=0.7" and "among 2 finalists" in s["why"]
    val = [c for c in calls(project) if c["split"] == "validation"]
    assert len(val) == 4 + 2 and {c["lam"] for c in val[4:]} == {0.5, 1.0}
