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
