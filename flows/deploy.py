"""The nightly deployment: ``nightly-merge`` on the cron schedule of params.yaml (``pipeline.schedule``).

    python -m flows.deploy                 # serve: register the deployment and run it on schedule (long-running)
    python -m flows.deploy --apply --pool pico-nightly   # register it on a work pool, from source: each run clones
                                           # the git repository (the checkout's `origin`, or --source URL) at this
                                           # branch (or --branch); `prefect worker start --pool pico-nightly` runs it
    python -m flows.deploy --show          # print the deployment that would be served

Serving needs a persistent Prefect API (``prefect server start`` and ``PREFECT_API_URL``, or Prefect Cloud); with
the ephemeral API the schedule lives only as long as this process. A served process that restarts keeps the
schedule running (``pause_on_shutdown=False``). One run at a time (``concurrency_limit``).

On a work pool the deployment is built with ``flow.from_source``: Prefect's ``GitRepository`` storage, whose pull
step clones the repository into the run's own folder on the worker host (any path), then loads the entrypoint
``flows/nightly.py:nightly_merge`` from that clone. The repository is the team's pico-merge repository (the code
and the project's params.yaml, catalog and dvc.yaml); the ``project`` parameter is the project's path inside it
(usually ``.``), resolved against the clone. What a night writes into its clone (dvc.lock, build/, the DVC
experiment) leaves with the clone: the DVC outputs are pushed to the DVC remote, the experiment to
``pipeline.dvc.exp_push``; the merge store and caches live in ``pipeline.paths.work``, which a worker host points
at a persistent (shared) folder with ``PICO_WORK_DIR``. The flow applies ``pipeline.schedule.flow_timeout_s`` itself
when it starts (pipeline/runtime.py ``flow_timeout``), so a worker's run, which loads the flow from its entrypoint,
times out as the project says.

With ``pipeline.notify.block`` set, the deployment gets a server-side failure alert (pipeline/notify.py
``failure_automation``): a Prefect Automation on its runs' Crashed, Failed and TimedOut events that sends through that
block, so a run killed with its process (SIGKILL, OOM, a lost host) is still reported. It is created or updated each
time the deployment is applied or served here, and deleted when the block is removed from params.yaml.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import prefect
from prefect.runner.storage import GitRepository
from prefect.schedules import Cron

from flows.nightly import nightly_merge
from pipeline import notify
from pipeline.settings import NotifySettings, load_settings

ENTRYPOINT = "flows/nightly.py:nightly_merge"  # in the repository a worker clones (a pico-merge repository)


class DeployError(RuntimeError):
    """A work-pool deployment that could not be built from source (no git checkout, no remote, no flow code)."""


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def git_source(project: Path, source: str | None = None, branch: str | None = None) -> tuple[GitRepository, str]:
    """The repository a worker clones for each run (``source``, default: the checkout's ``origin``) at ``branch``
    (default: the checkout's current branch), and the project's path inside it."""
    top = _git(project, "rev-parse", "--show-toplevel")
    if not top:
        raise DeployError(f"{project} is not in a git checkout: a work-pool deployment runs the code and params.yaml "
                          "of a git repository, cloned by the worker")
    root = Path(top).resolve()
    if not (root / ENTRYPOINT.split(":")[0]).is_file():
        raise DeployError(f"{root} has no {ENTRYPOINT.split(':')[0]}: the repository a worker clones must hold "
                          "the flow code beside the project (a pico-merge repository with its params.yaml)")
    url = source or _git(root, "remote", "get-url", "origin")
    if not url:
        raise DeployError(f"{root} has no git remote `origin`: give the repository workers clone with --source URL")
    if urlparse(url).password:
        raise DeployError("the repository URL carries a credential, which the deployment would store in clear on the "
                          "Prefect server: give workers access with the host's git credentials (an SSH key, a "
                          "credential helper) instead")
    branch = branch or _git(root, "symbolic-ref", "--short", "-q", "HEAD")
    if not branch:
        raise DeployError(f"{root} is on a detached HEAD: give the branch workers clone with --branch")
    rel = project.resolve().relative_to(root).as_posix()
    return GitRepository(url=url, branch=branch, pull_interval=None), rel or "."


def build_deployment(project: str = ".", params: str = "params.yaml", name: str | None = None,
                     pool: str | None = None, source: str | None = None, branch: str | None = None):
    """The deployment: served from this process (``pool`` None: this checkout's flow and project path), or on a
    work pool from source (the git repository, ``flows/nightly.py:nightly_merge`` and the project's relative path)."""
    settings = load_settings(project, params)
    sched = settings.pipeline.schedule
    night, project_param = nightly_merge, str(settings.project)
    if pool:
        repo, project_param = git_source(settings.project, source, branch)
        night = nightly_merge.from_source(repo, entrypoint=ENTRYPOINT)
    return night.to_deployment(
        name=name or sched.deployment,
        schedules=[Cron(sched.cron, timezone=sched.timezone)],
        parameters={"project": project_param, "params": params},
        concurrency_limit=sched.concurrency_limit,
        tags=["pico", "nightly"],
        description=f"Nightly pico merge of {settings.catalog.path.name} with the recipe in {params}",
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
    ap.add_argument("--source", default=None, metavar="URL",
                    help="with --pool: the git repository workers clone (default: the checkout's origin)")
    ap.add_argument("--branch", default=None, help="with --pool: the branch workers clone (default: the current one)")
    ap.add_argument("--name", default=None, help="deployment name (default: pipeline.schedule.deployment)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="register the deployment and exit")
    mode.add_argument("--show", action="store_true", help="print the schedule and exit")
    args = ap.parse_args(argv)
    try:
        deployment = build_deployment(args.project, args.params, args.name, args.pool if args.apply else None,
                                      args.source, args.branch)
    except DeployError as exc:
        print(f"flows.deploy: {exc}", file=sys.stderr)
        return 2
    sched = deployment.schedules[0].schedule
    line = (f"deployment {deployment.flow_name}/{deployment.name}: cron '{sched.cron}' ({sched.timezone}), "
            f"parameters {deployment.parameters}")
    if deployment.storage is not None:
        clone = deployment.storage.to_pull_step()["prefect.deployments.steps.git_clone"]
        line += f"\ncode: {ENTRYPOINT} from git {clone['repository']} branch {clone['branch']}, cloned by each run"
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
