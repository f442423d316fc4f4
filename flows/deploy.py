"""The nightly deployment: ``nightly-merge`` on the cron schedule of params.yaml (``pipeline.schedule``).

    python -m flows.deploy                 # serve: register the deployment and run it on schedule (long-running)
    python -m flows.deploy --apply --pool pico-nightly   # register it on a work pool; `prefect worker start
                                           # --pool pico-nightly` runs it (the pool from PICO_PREFECT_POOL by default)
    python -m flows.deploy --show          # print the deployment that would be served

Serving needs a persistent Prefect API (``prefect server start`` and ``PREFECT_API_URL``, or Prefect Cloud); with
the ephemeral API the schedule lives only as long as this process. A served process that restarts keeps the
schedule running (``pause_on_shutdown=False``). One run at a time (``concurrency_limit``). On a work pool the
entrypoint is the module ``flows.nightly`` (the project is installed in the worker's environment) and the flow run
starts in this code checkout (``working_dir``).

With ``pipeline.notify.block`` set, the deployment gets a server-side failure alert (pipeline/notify.py
``failure_automation``): a Prefect Automation on its runs' Crashed, Failed and TimedOut events that sends through that
block, so a run killed with its process (SIGKILL, OOM, a lost host) is still reported. It is created or updated each
time the deployment is applied or served here, and deleted when the block is removed from params.yaml.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import prefect
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from flows.nightly import nightly_merge
from pipeline import notify
from pipeline.settings import NotifySettings, load_settings

CODE_ROOT = Path(__file__).resolve().parent.parent  # where `flows` and `tasks` live (the worker starts runs here)


def build_deployment(project: str = ".", params: str = "params.yaml", name: str | None = None,
                     pool: str | None = None):
    settings = load_settings(project, params)
    sched = settings.pipeline.schedule
    night = nightly_merge.with_options(timeout_seconds=sched.flow_timeout_s)  # served: this project's timeout
    return night.to_deployment(
        name=name or sched.deployment,
        schedules=[Cron(sched.cron, timezone=sched.timezone)],
        parameters={"project": str(settings.project), "params": params},
        concurrency_limit=sched.concurrency_limit,
        tags=["pico", "nightly"],
        description=f"Nightly pico merge of {settings.catalog.path.name} with the recipe in {params}",
        entrypoint_type=EntrypointType.MODULE_PATH,
        job_variables={"working_dir": str(CODE_ROOT)} if pool else None,
    )


def alerts_line(cfg: NotifySettings) -> str:
    if cfg.block and "failure" in cfg.events:
        return f"failure alerts: a Prefect automation sends the Crashed/Failed/TimedOut runs to {cfg.block}"
    return "failure alerts: none on the server (pipeline.notify.block is not set, or failure is not in its events)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    ap.add_argument("--project", default=".")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pool", default=os.environ.get("PICO_PREFECT_POOL"),
                    help="work pool for --apply (default: $PICO_PREFECT_POOL; none: run it with `serve`)")
    ap.add_argument("--name", default=None, help="deployment name (default: pipeline.schedule.deployment)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="register the deployment and exit")
    mode.add_argument("--show", action="store_true", help="print the schedule and exit")
    args = ap.parse_args(argv)
    deployment = build_deployment(args.project, args.params, args.name, args.pool if args.apply else None)
    sched = deployment.schedules[0].schedule
    line = (f"deployment {deployment.flow_name}/{deployment.name}: cron '{sched.cron}' ({sched.timezone}), "
            f"parameters {deployment.parameters}")
    cfg = load_settings(args.project, args.params).pipeline.notify
    if args.show:
        print(f"{line}\n{alerts_line(cfg)}")
        return 0
    # serve applies the deployment again (an upsert: the same id), so the automation can name it first
    deployment_id = deployment.apply(work_pool_name=args.pool if args.apply else None)
    notify.sync_failure_automation(cfg, deployment_id, deployment.flow_name, deployment.name)
    if args.apply:
        print(f"{line}\napplied: {deployment_id}" + (f" on work pool {args.pool}" if args.pool else "")
              + f"\n{alerts_line(cfg)}")
        return 0
    print(f"{line}\n{alerts_line(cfg)}", flush=True)
    prefect.serve(deployment, pause_on_shutdown=False)  # a restart (upgrade, reboot) must not pause the nightly schedule
    return 0


if __name__ == "__main__":
    sys.exit(main())
