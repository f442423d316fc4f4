"""The nightly deployment's schedule is what params.yaml says, on the Prefect API too."""

from __future__ import annotations

from pipeline_helpers import set_params


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


def test_serve_keeps_the_schedule_on_restart_and_a_pool_deployment_runs_the_module(project, monkeypatch):
    import prefect

    from flows import deploy
    from flows.nightly import nightly_merge
    from pipeline.settings import ScheduleSettings

    served = {}
    monkeypatch.setattr(prefect, "serve", lambda *deps, **kw: served.update(kw, deployments=deps))
    assert deploy.main(["--project", str(project)]) == 0
    assert served["pause_on_shutdown"] is False and len(served["deployments"]) == 1

    dep = deploy.build_deployment(str(project), name="on-pool", pool="pico-nightly")
    assert dep.entrypoint == "flows.nightly.nightly_merge"  # importable by any worker with the project installed
    assert dep.job_variables == {"working_dir": str(deploy.CODE_ROOT)}
    assert nightly_merge.timeout_seconds == ScheduleSettings().flow_timeout_s > 0
    assert deploy.build_deployment(str(project)).job_variables == {}  # served: no pool, no job variables
