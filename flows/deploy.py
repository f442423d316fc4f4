"""The nightly deployment: ``nightly-merge`` on the cron schedule of params.yaml (``pipeline.schedule``).

    python -m flows.deploy                 # serve: register the deployment and run it on schedule (long-running)
    python -m flows.deploy --apply         # only register/update the deployment on the Prefect API, then exit
    python -m flows.deploy --show          # print the deployment that would be served

Serving needs a persistent Prefect API (``prefect server start`` and ``PREFECT_API_URL``, or Prefect Cloud); with
the ephemeral API the schedule lives only as long as this process. One run at a time (``concurrency_limit``).
"""

from __future__ import annotations

import argparse
import sys

from tasks.config import load_settings, quiet_env

quiet_env()


def build_deployment(project: str = ".", params: str = "params.yaml"):
    from prefect.schedules import Cron

    from flows.nightly import nightly_merge

    settings = load_settings(project, params)
    sched = settings.pipeline.schedule
    return nightly_merge.to_deployment(
        name=sched.deployment,
        schedules=[Cron(sched.cron, timezone=sched.timezone)],
        parameters={"project": str(settings.project), "params": params},
        concurrency_limit=sched.concurrency_limit,
        tags=["pico", "nightly"],
        description=f"Nightly pico merge of {settings.catalog.path.name} with the recipe in {params}",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    ap.add_argument("--project", default=".")
    ap.add_argument("--params", default="params.yaml")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="register the deployment and exit")
    mode.add_argument("--show", action="store_true", help="print the schedule and exit")
    args = ap.parse_args(argv)
    deployment = build_deployment(args.project, args.params)
    sched = deployment.schedules[0].schedule
    line = (f"deployment {deployment.flow_name}/{deployment.name}: cron '{sched.cron}' ({sched.timezone}), "
            f"parameters {deployment.parameters}")
    if args.show:
        print(line)
        return 0
    if args.apply:
        deployment_id = deployment.apply()
        print(f"{line}\napplied: {deployment_id}")
        return 0
    from prefect import serve

    print(line, flush=True)
    serve(deployment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
