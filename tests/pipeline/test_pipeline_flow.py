"""The nightly flow end to end on tiny real adapters: promotion, reuse, lineage, the gate, and each fault.

Flows run in-process against one real Prefect server for the session; MLflow is the embedded SQLite default of each
throw-away project; DVC is a real repo with a local remote. Scores come from the scripted scorer (the recipe's lam
sets them), so "better" and "worse" merges are chosen by recipe.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import (
    champion_version,
    client,
    file_hashes,
    free_port,
    nightly,
    reference_merge,
    run,
    set_params,
    versions,
)


def test_nightly_promotes_reuses_bytes_and_traces_lineage(project, tmp_path):
    from pipeline.audit import walk
    from pipeline.settings import load_settings

    first = nightly(project)
    assert first["decision"]["promoted"] and first["decision"]["alias"] == "champion"
    assert champion_version(project) == first["registered"]["version"] == "1"
    assert first["eval"]["scores"] == pytest.approx({"t1": 0.6, "t2": 0.6})
    assert [b["label"] for b in first["baselines"]] == ["base"]

    # the flow's adapter is byte-identical to `pico merge` of the same adapters and recipe
    store = Path(first["store"])
    ref = reference_merge(project, tmp_path / "ref")
    got = file_hashes(store)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert got[name] == ref[name], name

    # MLflow: params, metrics, artifacts; the version carries the lineage
    c = client(project)
    run_ = c.get_run(first["registered"]["run_id"])
    assert run_.data.params["merge.method"] == "ties" and run_.data.metrics["score.mean"] == pytest.approx(0.6)
    assert "time.choose_merge_s" in run_.data.metrics
    arts = {a.path for a in c.list_artifacts(run_.info.run_id)}
    assert {"merge_manifest.json", "diagnostics.json", "lineage.json", "eval.json", "plots"} <= arts
    assert {a.path for a in c.list_artifacts(run_.info.run_id, "plots")} == {"plots/diagnostics.png"}
    v = c.get_model_version("merged-test", "1")
    assert v.source.startswith("models:/m-")  # a logged model (loading it: test_pipeline_model.py)
    tags = v.tags
    manifest = (store / "merge_manifest.json").read_text()
    for src in ("math", "code", "med"):
        assert tags[f"source.{src}.sha256"] in manifest and tags[f"source.{src}.uri"] == f"dvc://adapters/{src}"
        assert tags[f"source.{src}.dvc_md5"].endswith(".dir")
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert tags["output.dvc_md5"] == first["dvc"]["md5"] == lock["merge"]["outs"][0]["md5"]
    assert tags["git.commit"] == run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert tags["recipe.hash"] == json.loads(manifest)["recipe_hash"]
    assert tags["promotion"] == "champion"

    # rerun with unchanged inputs: cached merge, same bytes, the same version, no alias change
    before = {p.name for p in (store.parent).iterdir()}
    second = nightly(project)
    assert second["cached_merge"] and second["store"] == first["store"]
    assert file_hashes(store) == got
    assert {p.name for p in store.parent.iterdir()} == before
    assert second["registered"]["reused"] and second["registered"]["version"] == "1"
    assert second["decision"]["unchanged"] and versions(project) == ["1"]
    assert second["eval"]["cached"]

    # lineage: everything recomputed from MLflow and DVC matches ...
    ok, lines = walk(load_settings(project), None, "champion")
    assert ok, "\n".join(lines)
    assert lines[-1].startswith("ALL MATCH")
    assert sum(" OK " in f" {ln.split()[0]} " for ln in lines[2:-1]) >= 7
    # ... and tampering with what DVC holds is caught
    listing = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["merge"]["outs"][0]["md5"]
    from pipeline import dvcio

    files = {e["relpath"]: e["md5"] for e in yaml.safe_load(dvcio.cache_path(project, listing).read_text())}
    target = dvcio.cache_path(project, files["adapter_model.safetensors"])
    target.chmod(0o644)
    target.write_bytes(target.read_bytes()[:-4] + b"\0\0\0\1")
    ok, lines = walk(load_settings(project), "merged-test", "1")
    assert not ok and lines[-1].startswith("MISMATCH")
    assert any(ln.split()[0] == "MISSING" and "merged adapter in DVC" in ln and "corrupt" in ln for ln in lines)


def test_gate_worse_eval_and_floors_never_promote(project):
    first = nightly(project)
    assert champion_version(project) == first["registered"]["version"] == "1"

    set_params(project, merge__lam=0.5)  # scores 0.55 / 0.5: worse than the champion's 0.6
    worse = nightly(project)
    d = worse["decision"]
    assert not d["promoted"] and d["alias"] == "candidate" and worse["registered"]["version"] == "2"
    assert "below the champion" in d["reasons"][0]
    assert champion_version(project) == "1"
    assert str(client(project).get_model_version_by_alias("merged-test", "candidate").version) == "2"
    assert client(project).get_model_version("merged-test", "2").tags["promotion"] == "candidate"

    set_params(project, merge__lam=2.0, pipeline__gate__floors={"t1": 0.75})  # mean 0.75 > 0.6, but t1 0.7 < 0.75
    floored = nightly(project)
    assert not floored["decision"]["promoted"] and "t1 0.700 is below its floor 0.750" in floored["decision"]["reasons"]
    assert champion_version(project) == "1"

    set_params(project, pipeline__gate__floors={})  # the same merge, now through the gate
    better = nightly(project)
    assert better["registered"]["reused"] and better["registered"]["version"] == floored["registered"]["version"]
    assert better["decision"]["promoted"] and champion_version(project) == better["registered"]["version"]
    assert versions(project) == ["1", "2", "3"]

    # versions sort by their mean metric: MLflow's own search orders the logged models, the leaderboard follows it
    from pipeline.settings import load_settings
    from pipeline.tracking.models import model_id
    from pipeline.tracking.promote import leaderboard

    c = client(project)
    by_model = {model_id(v): str(v.version) for v in c.search_model_versions("name = 'merged-test'")}
    ordered = c.search_logged_models([better["experiment_id"]],
                                     order_by=[{"field_name": "metrics.score.mean", "ascending": False}])
    assert [by_model[m.model_id] for m in ordered] == ["3", "1", "2"]
    board = leaderboard(load_settings(project), fingerprint=better["fingerprint"])
    assert [r["version"] for r in board] == ["3", "1", "2"] and "champion" in board[0]["aliases"]
    assert [r["mean"] for r in board] == pytest.approx([0.75, 0.6, 0.525])
    assert board[0]["scores"] == pytest.approx({"t1": 0.7, "t2": 0.8})


def test_pin_mismatch_stops_before_merge_and_is_not_retried(plain_project, monkeypatch):
    from pipeline import sources

    cat = plain_project / "adapters.yaml"
    data = yaml.safe_load(cat.read_text())
    data["adapters"][1]["sha256"] = "0" * 64
    cat.write_text(yaml.safe_dump(data))
    calls = []
    real = sources.fetch_entry
    monkeypatch.setattr(sources, "fetch_entry", lambda s, e: calls.append(e.name) or real(s, e))
    with pytest.raises(sources.PinMismatch, match="code: sha256 pin mismatch"):
        nightly(plain_project, fetch={"retry_delay_s": 0})
    assert calls.count("code") == 1  # permanent: not retried
    assert not (plain_project / "build" / "pipeline" / "store").exists()
    assert client(plain_project).search_registered_models() == []

    # the right pin passes
    from pipeline.settings import CatalogEntry, load_settings

    code = CatalogEntry(name="code", source="adapters/code")
    data["adapters"][1]["sha256"] = real(load_settings(plain_project), code).sha256
    cat.write_text(yaml.safe_dump(data))
    assert nightly(plain_project)["decision"]["promoted"]


def test_transient_fetch_failure_is_retried(plain_project, monkeypatch):
    from pipeline import sources

    calls = []
    real = sources.fetch_entry

    def flaky(settings, entry):
        calls.append(entry.name)
        if entry.name == "med" and calls.count("med") == 1:
            raise ConnectionError("simulated network hiccup")
        return real(settings, entry)

    monkeypatch.setattr(sources, "fetch_entry", flaky)
    out = nightly(plain_project, fetch={"retry_delay_s": 0})
    assert calls.count("med") == 2 and out["decision"]["promoted"]


def test_invalid_adapter_stops_before_merge(plain_project):
    import json

    from pico import AdapterError

    cfg = plain_project / "adapters" / "med" / "adapter_config.json"
    data = json.loads(cfg.read_text())
    data["base_model_name_or_path"] = "some/other-base"
    cfg.write_text(json.dumps(data))
    with pytest.raises(AdapterError, match="med: trained on base model 'some/other-base'"):
        nightly(plain_project)
    assert not (plain_project / "build" / "pipeline" / "store").exists()
    assert client(plain_project).search_registered_models() == []


def test_crash_mid_merge_leaves_nothing_and_next_run_completes(project, monkeypatch, tmp_path):
    import importlib

    merge_mod = importlib.import_module("pico.writer")  # the stream writer every adapter output goes through
    first = nightly(project)
    assert champion_version(project) == "1"
    set_params(project, merge__lam=3.0)  # a better merge, but the process "crashes" while writing it

    real_write = merge_mod.SafetensorsStreamWriter.write
    count = {"n": 0}

    def crashing(self, key, tensor):
        count["n"] += 1
        if count["n"] == 5:
            raise RuntimeError("simulated crash in the middle of the merge")
        return real_write(self, key, tensor)

    monkeypatch.setattr(merge_mod.SafetensorsStreamWriter, "write", crashing)
    store = Path(first["store"]).parent
    before = sorted(p.name for p in store.iterdir())
    with pytest.raises(RuntimeError, match="simulated crash"):
        nightly(project)
    assert sorted(p.name for p in store.iterdir()) == before  # no partial output, no temporary left
    assert versions(project) == ["1"] and champion_version(project) == "1"  # nothing registered, no alias moved
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["merge"]["outs"][0]["md5"]
    assert lock == first["dvc"]["md5"]  # DVC untouched

    monkeypatch.setattr(merge_mod.SafetensorsStreamWriter, "write", real_write)
    done = nightly(project)
    assert done["decision"]["promoted"] and champion_version(project) == "2"
    ref = reference_merge(project, tmp_path / "ref")
    assert file_hashes(Path(done["store"]))["adapter_model.safetensors"] == ref["adapter_model.safetensors"]


def test_mlflow_unreachable_fails_clearly_and_moves_no_alias(project, monkeypatch):
    from pipeline.tracking.client import RegistryUnavailable

    nightly(project)
    assert champion_version(project) == "1"
    set_params(project, merge__lam=3.0)  # would be promoted
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    t0 = time.time()
    with pytest.raises(RegistryUnavailable, match=r"is unreachable.*no alias moved"):
        nightly(project)
    assert time.time() - t0 < 90
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert champion_version(project) == "1" and versions(project) == ["1"]


def test_gate_ties_pass_and_lower_means_or_floors_fail():
    from pipeline.gate import decide, gate
    from pipeline.records import ChampionRecord
    from pipeline.settings import GateSettings

    champion = ChampionRecord(version="1", scores={}, mean=(0.1 + 0.2 + 0.3) / 3, fingerprint="")
    scores = {"add": 0.3, "code": 0.2, "fact": 0.1}  # the same mean, summed in another order: 1 ulp lower
    assert sum(scores.values()) / 3 < champion.mean
    assert gate(scores, champion, GateSettings()) == (True, [])
    ok, reasons = gate({**scores, "add": 0.29}, champion, GateSettings())
    assert not ok and "below the champion" in reasons[0]
    ok, reasons = gate(scores, champion, GateSettings(min_delta=0.01))
    assert not ok and "min_delta 0.01" in reasons[0]
    ok, reasons = gate(scores, None, GateSettings(floors={"code": 0.25}))
    assert not ok and reasons == ["code 0.200 is below its floor 0.250"]
    # the decision: the reasons say why, and the version that already is the champion stays unchanged
    d = decide("2", {**scores, "add": 0.4}, champion, GateSettings())
    assert d.promoted and d.alias == "champion" and d.previous_champion == "1" and "champion v1" in d.reasons[0]
    d = decide("2", {**scores, "add": 0.29}, champion, GateSettings())
    assert not d.promoted and d.alias == "candidate" and not d.unchanged
    d = decide("1", scores, champion, GateSettings())
    assert d.unchanged and d.promoted and "already the champion" in d.reasons[0]
