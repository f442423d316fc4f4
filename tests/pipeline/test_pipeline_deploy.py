"""The nightly deployment: its schedule is what params.yaml says, on the Prefect API too; on a work pool it is
built from the git repository; the project's flow timeout applies however the run started."""

from __future__ import annotations

import shutil

import pytest
from pipeline_helpers import add_flow_code, run, set_params


def test_deployment_cron_comes_from_params(project, prefect_api):
    from prefect import get_client

    from flows.deploy import build_deployment

    dep = build_deployment(str(project))
    schedule = dep.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("30 3 * * 1-5", "Europe/Paris")  # make_project's params.yaml
    assert dep.name == "nightly" and dep.parameters == {"project": str(project), "params": "params.yaml"}

    deployment_id = dep.apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
    assert stored.name == "nightly" and stored.parameters["project"] == str(project)
    assert [(s.schedule.cron, s.schedule.timezone) for s in stored.schedules] == [("30 3 * * 1-5", "Europe/Paris")]
    assert stored.global_concurrency_limit.limit == 1  # one nightly run at a time

    set_params(project, pipeline__schedule__cron="15 1 * * *", pipeline__schedule__timezone="UTC")
    again = build_deployment(str(project)).schedules[0].schedule
    assert (again.cron, again.timezone) == ("15 1 * * *", "UTC")


def test_serve_keeps_the_schedule_on_restart(project, monkeypatch):
    import prefect

    from flows import deploy

    served = {}
    monkeypatch.setattr(prefect, "serve", lambda *deps, **kw: served.update(kw, deployments=deps))
    assert deploy.main(["--project", str(project)]) == 0
    assert served["pause_on_shutdown"] is False and len(served["deployments"]) == 1
    assert served["deployments"][0].parameters["project"] == str(project)  # served here: this checkout's path


def test_a_pool_deployment_is_built_from_the_git_repository(project, tmp_path, capsys):
    """On a work pool: Prefect's git_clone pull step of the checkout's origin at its branch, the entrypoint a file
    of the clone, the project relative to it, no working_dir (each run's own folder, wherever the worker runs)."""
    from flows import deploy

    add_flow_code(project)
    bare = tmp_path / "team.git"
    run(["git", "clone", "-q", "--bare", str(project), str(bare)], tmp_path)
    branch = run(["git", "symbolic-ref", "--short", "HEAD"], project).stdout.strip()
    with pytest.raises(deploy.DeployError, match="no git remote `origin`: give .* --source URL"):
        deploy.build_deployment(str(project), pool="pico-nightly")
    run(["git", "remote", "add", "origin", f"file://{bare}"], project)

    dep = deploy.build_deployment(str(project), name="on-pool", pool="pico-nightly")
    assert dep.entrypoint == "flows/nightly.py:nightly_merge"
    assert dep.parameters == {"project": ".", "params": "params.yaml"}
    assert dep.storage.to_pull_step() == {"prefect.deployments.steps.git_clone": {"repository": f"file://{bare}",
                                                                                   "branch": branch}}
    assert not dep.job_variables  # no working_dir: the path of the registering checkout means nothing to a worker
    run(["git", "push", "-q", str(bare), f"{branch}:nightly"], project)
    other = deploy.build_deployment(str(project), pool="pico-nightly", source=str(bare), branch="nightly")
    assert other.storage.to_pull_step()["prefect.deployments.steps.git_clone"] == {"repository": str(bare),
                                                                                    "branch": "nightly"}
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="pico-nightly", type="process"), overwrite=True)
    assert deploy.main(["--project", str(project), "--apply", "--pool", "pico-nightly", "--name", "from-git"]) == 0
    assert f"flows/nightly.py:nightly_merge from git file://{bare} branch {branch}" in capsys.readouterr().out
    with get_client(sync_client=True) as client:
        stored = client.read_deployment_by_name("nightly-merge/from-git")
    assert stored.work_pool_name == "pico-nightly" and stored.path is None and stored.parameters["project"] == "."
    assert stored.pull_steps == [{"prefect.deployments.steps.git_clone": {"repository": f"file://{bare}",
                                                                          "branch": branch}}]

    with pytest.raises(deploy.DeployError, match="credential, which the deployment would store in clear"):
        deploy.build_deployment(str(project), pool="p", source="https://bot:s3cret@git.example/team/pico.git")
    outside = tmp_path / "not-git"
    shutil.copytree(project, outside, ignore=shutil.ignore_patterns(".git"))
    with pytest.raises(deploy.DeployError, match="not in a git checkout"):
        deploy.build_deployment(str(outside), pool="p")
    assert deploy.main(["--project", str(outside), "--apply", "--pool", "p"]) == 2
    assert "not in a git checkout" in capsys.readouterr().err


def test_the_project_flow_timeout_ends_the_run_timed_out(project, monkeypatch):
    """pipeline.schedule.flow_timeout_s is read from params.yaml when the run starts (the decorator has none), so a
    worker's run, which imports the flow from its entrypoint, times out as the project says."""
    import time

    from flows.nightly import nightly_merge
    from pipeline import evaluation

    def hang(settings):
        for _ in range(300):  # short sleeps: interruptible by the timeout's alarm or watcher thread alike
            time.sleep(0.1)

    monkeypatch.setattr(evaluation, "check_benchmark", hang)
    assert nightly_merge.timeout_seconds is None
    set_params(project, pipeline__schedule__flow_timeout_s=1.5)
    t0 = time.monotonic()
    state = nightly_merge(project=str(project), return_state=True)
    assert time.monotonic() - t0 < 20
    assert state.is_failed() and state.name == "TimedOut", state
    assert "pipeline.schedule.flow_timeout_s (1.5 s)" in state.message


def test_pico_work_dir_replaces_the_work_path(project, tmp_path, monkeypatch):
    from pipeline.settings import ConfigError, load_settings

    assert load_settings(project).work == project.resolve() / "build" / "pipeline"
    monkeypatch.setenv("PICO_WORK_DIR", str(tmp_path / "shared"))
    assert load_settings(project).work == tmp_path / "shared"
    assert load_settings(project, overrides={"paths": {"work": "mine"}}).work == project.resolve() / "mine"
    monkeypatch.setenv("PICO_WORK_DIR", "relative/work")
    with pytest.raises(ConfigError, match="PICO_WORK_DIR must be an absolute path"):
        load_settings(project)
