"""DVC: the flow's results are the merge/eval stage outputs; `dvc repro` reproduces them without Prefect; push and
pull really move them through the local remote; dvc:// sources are pulled when absent."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from pipeline_helpers import dvc, file_hashes, nightly


def lock_md5(project, stage="merge"):
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]["outs"][0]["md5"]


def test_flow_commits_stages_and_dvc_repro_reproduces_without_prefect(project):
    out = nightly(project)
    merged = project / "build" / "pipeline" / "merged"
    assert out["dvc"]["enabled"] and out["dvc"]["pushed"] and out["dvc"]["md5"] == lock_md5(project)
    assert file_hashes(merged) == file_hashes(out["store"])
    metrics = (project / "build" / "pipeline" / "eval" / "metrics.json").read_text()
    assert '"mean": 0.6' in metrics
    # dvc.lock records what produced it: nothing to reproduce after a nightly run
    assert "up to date" in dvc(project, "status", "merge", "eval").stdout

    # `dvc repro` alone (no Prefect) recomputes the merge and the scores: same bytes, same md5
    shutil.rmtree(merged)
    proc = dvc(project, "repro", "--force", "merge", "eval")
    assert "prefect" not in proc.stdout.lower()
    assert lock_md5(project) == out["dvc"]["md5"]
    assert file_hashes(merged) == file_hashes(out["store"])
    assert (project / "build" / "pipeline" / "eval" / "metrics.json").read_text() == metrics

    # push/pull through the local remote: a clean cache + workspace is restored from the remote
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(merged)
    dvc(project, "pull", "merge")
    assert file_hashes(merged) == file_hashes(out["store"])


def test_dvc_source_is_pulled_from_the_remote_when_absent(project):
    from pipeline.settings import load_settings
    from pipeline.sources import SourceError, fetch_entry

    settings = load_settings(project)
    entry = settings.catalog.adapters[0]
    expected = fetch_entry(settings, entry)
    shutil.rmtree(project / "adapters")
    shutil.rmtree(project / ".dvc" / "cache")
    got = fetch_entry(settings, entry)  # runs `dvc pull adapters` from the local remote
    assert got.sha256 == expected.sha256 and (project / "adapters" / entry.name).is_dir()
    assert got.dvc["out"] == "adapters" and got.dvc["out_md5"].endswith(".dir")

    # a workspace copy that drifted from what DVC recorded is refused, not silently merged
    cfg = project / "adapters" / entry.name / "adapter_config.json"
    cfg.chmod(0o644)
    cfg.write_text(cfg.read_text().replace("}", ', "note": "edited"}', 1))
    try:
        fetch_entry(settings, entry)
    except SourceError as exc:
        assert "differs from what DVC recorded" in str(exc)
    else:
        raise AssertionError("a modified DVC-tracked source was accepted")

    # dvc://path@rev: that path as of a git revision (here HEAD, before the edit)
    from pipeline.settings import CatalogEntry

    at_rev = fetch_entry(settings, CatalogEntry(name=entry.name, source=f"dvc://adapters/{entry.name}@HEAD"))
    assert at_rev.sha256 == expected.sha256 and "fetch/dvc/HEAD" in at_rev.path


def _foreach_project(tmp_path, fail: str | None = None):
    """A git + DVC project with one foreach stage of three items; each command logs its start and end time."""
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"items": {"b": 2, "c": 3, "a": 1}}, sort_keys=False))
    cmd = (f"{sys.executable} -c \"import sys, time; k = sys.argv[1]; t0 = time.time(); time.sleep(1.0); "
           "sys.exit(3) if k == '" + (fail or "") + "' else None; "
           "open('out/' + k, 'w').write(k); open('times/' + k, 'w').write(f'{t0} {time.time()}')\" ${key}")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": {"foreach": "${items}", "do": {
        "cmd": cmd, "params": ["items.${key}"], "outs": ["out/${key}"]}}}}))
    (tmp_path / "times").mkdir()
    (tmp_path / "out").mkdir()
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    return tmp_path


def test_parallel_reproduce_runs_independent_stages_at_once_and_records_them_as_dvc_repro(tmp_path):
    from pipeline import dvcio

    project = _foreach_project(tmp_path)
    logs = []
    dvcio.reproduce(project, ["make"], jobs=3, log=logs.append)
    assert any("3 stages, 3 at a time: make@b, make@c, make@a" in line for line in logs)  # in params order
    spans = sorted(tuple(map(float, (project / "times" / k).read_text().split())) for k in "abc")
    assert spans[1][0] < spans[0][1] and spans[2][0] < spans[0][1]  # all three ran at the same time
    assert {k: (project / "out" / k).read_text() for k in "abc"} == {"a": "a", "b": "b", "c": "c"}
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert sorted(lock) == ["make@a", "make@b", "make@c"] and all(s["outs"][0]["md5"] for s in lock.values())
    assert "up to date" in dvc(project, "status").stdout  # what `dvc repro` would have recorded
    logs.clear()
    dvcio.reproduce(project, ["make"], jobs=3, log=logs.append)
    assert sum("unchanged, skipped" in line for line in logs) == 3


def test_parallel_reproduce_names_a_failed_stage_and_keeps_the_others(tmp_path):
    import pytest

    from pipeline import dvcio

    project = _foreach_project(tmp_path, fail="b")
    with pytest.raises(dvcio.DvcError, match="make@b"):
        dvcio.reproduce(project, ["make"], jobs=2, log=lambda _: None)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert sorted(lock) == ["make@a", "make@c"]


def test_the_suite_build_runs_missing_stages_with_the_configured_jobs_and_build_only_stops(project, monkeypatch,
                                                                                             capsys):
    from flows import nightly
    from pipeline import build, dvcio

    calls = []
    monkeypatch.setattr(build, "missing_inputs", lambda settings: ["build/x"])
    monkeypatch.setattr(dvcio, "stages_producing", lambda project, paths: {"make@b", "make@a"})
    monkeypatch.setattr(dvcio, "reproduce", lambda project, stages, jobs=1: calls.append((stages, jobs)))
    monkeypatch.setattr(nightly, "nightly_merge", lambda **kw: (_ for _ in ()).throw(AssertionError("flow ran")))
    assert nightly.main(["--project", str(project), "--set", "dvc.build_jobs=2", "--build-only"]) == 0
    assert calls == [(["make@a", "make@b"], 2)] and "independent stages 2 at a time" in capsys.readouterr().out


def test_per_suite_stages_record_the_suite_that_ran(project):
    """dvc.yaml with one merge/eval stage per suite (a foreach over params.yaml `suites:`, as the repository's): the
    default suite's night commits merge@<suite>, a `--suite` night its own stage (not skipped as an override), each
    listing the code (pico/, pipeline/) among its deps; `dvc status` of both is clean afterwards."""
    from pipeline_helpers import set_params

    repo_stages = yaml.safe_load((Path(__file__).resolve().parents[2] / "dvc.yaml").read_text())["stages"]
    for name in ("merge", "eval"):  # the repository's stages list the code that decides the bytes
        assert {"pico", "pipeline", "flows/stages.py", "${item.dvc.inputs.code}"} <= set(repo_stages[name]["do"]["deps"])
    spec = yaml.safe_load((project / "dvc.yaml").read_text())
    for name in ("merge", "eval"):  # the repository's stage templates, on this project's inputs (it has no code)
        do = repo_stages[name]["do"]
        do["deps"] = [d for d in do["deps"] if d.startswith("${item.paths")] + \
            ["${item.catalog}", "${item.dvc.inputs.adapters}"] * (name == "merge")
        spec["stages"][name] = {"foreach": "${suites}", "do": do}
    (project / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    suites = {s: {"catalog": "adapters.yaml", "paths": {"merged": f"build/pipeline/{s}/merged",
                                                        "eval": f"build/pipeline/{s}/eval"},
                  "dvc": {"inputs": {"adapters": "adapters"}}} for s in ("one", "two")}
    set_params(project, suites=suites, pipeline__suite="one", pipeline__search={}, pipeline__learn={},
               pipeline__device="auto")  # every param the stages list is in params.yaml (DVC requires it)
    suites["two"]["merge"] = {"method": "ta", "space": "core", "lam": 0.5}
    set_params(project, suites=suites)

    first = nightly(project)
    second = nightly(project, suite="two")
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert first["dvc"]["enabled"] and second["dvc"]["enabled"], (first["dvc"], second["dvc"])
    assert lock["merge@one"]["outs"][0]["md5"] == first["dvc"]["md5"]
    assert lock["merge@two"]["outs"][0]["md5"] == second["dvc"]["md5"] != first["dvc"]["md5"]
    assert {"adapters", "adapters.yaml"} <= {d["path"] for d in lock["merge@two"]["deps"]}
    assert "up to date" in dvc(project, "status", "merge@one", "eval@one", "merge@two", "eval@two").stdout


def test_each_night_is_pushed_as_an_experiment_and_old_ones_are_pruned(project, tmp_path):
    """pipeline.dvc.exp_push: each night's `dvc exp save` goes to the team's git remote (its DVC objects to the DVC
    remote); exp_keep: only the newest N nightly experiments stay, here and on that remote (issue 25 item 5)."""
    import subprocess

    from pipeline_helpers import set_params

    remote = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run(["git", "remote", "add", "origin", str(remote)], cwd=project, check=True)
    subprocess.run(["git", "push", "-q", "origin", "HEAD"], cwd=project, check=True)
    set_params(project, pipeline__dvc={"exp_push": "origin", "exp_keep": 1})
    subprocess.run(["git", "commit", "-qam", "push nights"], cwd=project, check=True)

    def remote_exps():
        out = subprocess.run(["git", "ls-remote", str(remote), "refs/exps/*"], capture_output=True, text=True,
                             check=True).stdout
        return sorted(line.rsplit("/", 1)[-1] for line in out.splitlines())

    first = nightly(project)
    assert first["dvc"]["exp"]["pushed_to"] == "origin" and remote_exps() == [first["dvc"]["exp"]["name"]]
    set_params(project, merge__lam=0.5)  # another merge, from params.yaml (an override is not versioned)
    subprocess.run(["git", "commit", "-qam", "lam 0.5"], cwd=project, check=True)
    second = nightly(project)
    name = second["dvc"]["exp"]["name"]
    assert name != first["dvc"]["exp"]["name"] and second["dvc"]["exp"]["pruned"] == first["dvc"]["exp"]["name"]
    assert remote_exps() == [name]  # the older night removed from the remote too
    local = dvc(project, "exp", "ls", "--all-commits", "--name-only").stdout.split()
    assert [n for n in local if n.startswith("nightly-")] == [name]
