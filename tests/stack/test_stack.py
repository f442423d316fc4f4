"""The pipeline against the team stack (./dev stack up): MLflow on PostgreSQL with basic auth and S3 artifacts,
Prefect on PostgreSQL with a process work pool and worker, DVC on an S3 remote, a Dask cluster with GPU-labelled
workers. Each fault named in docs/stack.md is one test here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from pipeline_helpers import add_flow_code, dvc, make_project, nightly, run, set_params
from stack_support import (REPO, champion, commit_all, mlflow_client, model_name, stack_script, stack_secrets,
                           use_s3_remote, versions)


def test_nights_on_the_stack_history_and_lineage_from_a_fresh_clone(stack_project, tmp_path):
    """Two nights on the stack; each is a DVC experiment (dvc exp show / metrics diff compare them); a fresh clone
    that has only git and the S3 remote verifies the champion ALL MATCH; the lineage is not dirty."""
    from pipeline.audit import walk
    from pipeline.settings import load_settings

    project, name = stack_project, model_name(stack_project)
    first = nightly(project)
    assert first["decision"]["promoted"] and first["dvc"]["pushed"] and first["dvc"]["exp"]["name"]
    v1 = mlflow_client().get_model_version(name, first["registered"]["version"])
    assert v1.tags["git.dirty"] == "false"  # the pipeline's own dvc.lock write is not a dirty tree
    run1 = mlflow_client().get_run(v1.run_id)
    assert run1.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server into the S3 bucket
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["PICO_DVC_REMOTE_ENDPOINT"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow-artifacts")
            for o in page.get("Contents", [])]
    assert any(v1.run_id in k and k.endswith("lineage.json") for k in keys)

    set_params(project, merge__lam=1.5)  # a better recipe, committed like a team would
    commit_all(project, "recipe: lam 1.5")
    second = nightly(project)
    assert second["decision"]["promoted"] and champion(name) == second["registered"]["version"] != "1"
    exps = [first["dvc"]["exp"], second["dvc"]["exp"]]

    shown = json.loads(dvc(project, "exp", "show", "--all-commits", "--json").stdout)  # nights on both commits
    names = {e.get("name") for row in shown for e in (row.get("experiments") or []) for e in (e.get("revs") or [])}
    assert {e["name"] for e in exps} <= names, names
    diff = json.loads(dvc(project, "metrics", "diff", exps[0]["sha"], exps[1]["sha"], "--json").stdout)
    mean = diff["build/pipeline/eval/metrics.json"]["mean"]
    assert mean["old"] == pytest.approx(first["eval"]["mean"]) and mean["new"] == pytest.approx(second["eval"]["mean"])

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / ".dvc" / "cache").exists() and not (clone / "build").exists()
    ok, lines = walk(load_settings(clone), name, "champion")
    assert ok, "\n".join(lines)
    assert any("merged adapter in DVC" in ln and "remote stack" in ln for ln in lines), "\n".join(lines)
    ok, lines = walk(load_settings(clone), name, "1")  # an older night too
    assert ok, "\n".join(lines)


def test_storage_remote_down_during_push_registers_nothing(stack, tmp_path, adapters, base):
    tag = os.urandom(4).hex()
    project = make_project(tmp_path / "proj", adapters, base,
                           pipeline={"mlflow": {"experiment": f"stack-{tag}", "model_name": f"stack-{tag}"}})
    use_s3_remote(project, f"tests/{tag}")
    dvc(project, "remote", "modify", "stack", "endpointurl", "http://127.0.0.1:15099")  # nothing listens there
    commit_all(project, "remote down")
    from pipeline.dvcio import DvcError

    with pytest.raises(DvcError, match="push"):
        nightly(project)
    assert versions(f"stack-{tag}") == [] and champion(f"stack-{tag}") is None


def test_a_user_without_permission_cannot_move_the_champion(stack, stack_project):
    """Basic auth with default permission READ: the pipeline's user owns its model; a viewer cannot move aliases."""
    name = model_name(stack_project)
    c = mlflow_client()
    c.create_registered_model(name)
    run_ = c.create_run(c.create_experiment(name))
    v = c.create_model_version(name, source=f"{run_.info.artifact_uri}/adapter", run_id=run_.info.run_id)
    c.set_registered_model_alias(name, "champion", v.version)
    secrets = stack_secrets()
    url = os.environ["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/registered-models/alias"
    body = {"name": name, "alias": "champion", "version": str(v.version)}
    viewer = requests.post(url, json=body, auth=("pico-viewer", secrets["MLFLOW_VIEWER_PASSWORD"]), timeout=30)
    assert viewer.status_code == 403, viewer.text
    anonymous = requests.post(url, json=body, timeout=30)
    assert anonymous.status_code == 401
    got = requests.get(os.environ["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/registered-models/alias",
                       params={"name": name, "alias": "champion"},
                       auth=("pico-viewer", secrets["MLFLOW_VIEWER_PASSWORD"]), timeout=30)
    assert got.status_code == 200 and got.json()["model_version"]["version"] == str(v.version)  # it may read
    owner = requests.post(url, json=body, auth=(os.environ["MLFLOW_TRACKING_USERNAME"],
                                                os.environ["MLFLOW_TRACKING_PASSWORD"]), timeout=30)
    assert owner.status_code == 200


def _flow_run_logs(flow_run_id) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


def test_the_worker_runs_the_deployment_from_git_and_no_credential_leaks(stack, stack_project, tmp_path):
    """Issue 25 item 1: the team's repository (the flow code beside the project) is pushed to a git remote; a clone
    at one path registers the deployment on the work pool (flow.from_source of its origin); the stack's worker
    clones the repository into its own folder and runs the night there (project ".", the work folder on the
    worker's PICO_WORK_DIR), leaving the registering checkout untouched and pushing the night's experiment to the
    remote; a commit that sets flow_timeout_s to 2 s makes the next run TimedOut (the worker pulled it; the project's
    timeout applies to a worker's run). Then every record the runs left (Prefect logs, artifacts and the deployment,
    MLflow params/tags/artifacts, lineage, manifest, DVC config and dvc.lock) is scanned for the stack's
    credentials."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from stack_support import STATE

    from flows import deploy

    project, name, pool = stack_project, model_name(stack_project), os.environ["PICO_PREFECT_POOL"]
    set_params(project, pipeline__dvc__exp_push="origin")  # the night's history leaves with the run's clone
    commit_all(project, "nightly experiments pushed to origin")
    add_flow_code(project)
    remote = tmp_path / "team.git"
    run(["git", "clone", "-q", "--bare", str(project), str(remote)], tmp_path)
    here = tmp_path / "laptop" / "pico"  # the checkout that registers the deployment
    run(["git", "clone", "-q", f"file://{remote}", str(here)], tmp_path)
    assert deploy.main(["--project", str(here), "--apply", "--pool", pool, "--name", name]) == 0

    flow_run = run_deployment(f"nightly-merge/{name}", timeout=900, poll_interval=3)
    assert flow_run.state.is_completed(), flow_run.state
    assert champion(name) == "1"
    logs = _flow_run_logs(flow_run.id)
    assert any("git_clone" in log.message for log in logs), "the run did not clone the repository"
    [where] = [log.message for log in logs if log.message.startswith("project ")]
    ran_in, code, work = (part.split(" ", 1)[1] for part in where.split(", "))
    print(f"the worker's run: {where}")
    assert ran_in == code and Path(ran_in).name != here.name and not ran_in.startswith(str(tmp_path)), where
    assert work == str(STATE / "work")  # the worker's PICO_WORK_DIR, outside the clone
    v1 = mlflow_client().get_model_version(name, "1")
    key = mlflow_client().get_run(v1.run_id).data.tags["pico.merge_key"]
    assert (STATE / "work" / "store" / key[:32]).is_dir()
    assert run(["git", "status", "--porcelain"], here).stdout == "" and not (here / "build").exists()
    assert run(["git", "for-each-ref", "refs/exps"], here).stdout == ""
    exps = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], remote).stdout.split()
    assert len(exps) == 1, exps  # the night's DVC experiment, pushed from the worker's clone

    set_params(here, pipeline__schedule__flow_timeout_s=2)
    commit_all(here, "a 2 s night")
    run(["git", "push", "-q", "origin", "HEAD"], here)
    timed_out = run_deployment(f"nightly-merge/{name}", timeout=900, poll_interval=3)
    assert timed_out.state.name == "TimedOut", timed_out.state
    assert "pipeline.schedule.flow_timeout_s (2 s)" in timed_out.state.message
    assert versions(name) == ["1"] and champion(name) == "1"

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
        deployment = client.read_deployment_by_name(f"nightly-merge/{name}")
    texts = {"prefect logs": "\n".join(log.message for log in logs + _flow_run_logs(timed_out.id)),
             "prefect artifacts": "\n".join(json.dumps(a.model_dump(mode="json")) for a in artifacts),
             "prefect deployment": json.dumps(deployment.model_dump(mode="json"))}
    c = mlflow_client()
    r = c.get_run(v1.run_id)
    texts["mlflow params"] = json.dumps(r.data.params)
    texts["mlflow run tags"] = json.dumps(r.data.tags)
    texts["mlflow version tags"] = json.dumps(v1.tags)
    import mlflow.artifacts

    for art in ("lineage.json", "merge_manifest.json", "eval.json", "config/params.yaml"):
        local = mlflow.artifacts.download_artifacts(run_id=v1.run_id, artifact_path=art)
        texts[f"artifact {art}"] = Path(local).read_text()
    texts["dvc config"] = run(["git", "show", f"{exps[0]}:.dvc/config"], remote).stdout
    texts["dvc.lock"] = run(["git", "show", f"{exps[0]}:dvc.lock"], remote).stdout
    assert "merged" in texts["dvc.lock"]
    for s, value in stack_secrets().items():
        for where, text in texts.items():
            assert value not in text, f"credential {s} appears in {where}"


def test_the_prefect_api_refuses_requests_without_its_credential(stack):
    """Issue 25 item 3: the stack's Prefect server runs with API auth (PREFECT_SERVER_API_AUTH_STRING): no or a
    wrong credential gets 401; the clients' PREFECT_API_AUTH_STRING (env.sh: the worker's, the pipeline's, these
    tests') works; the health probe stays open."""
    from prefect import get_client

    api = os.environ["PREFECT_API_URL"]
    user, password = os.environ["PREFECT_API_AUTH_STRING"].split(":", 1)
    assert requests.post(f"{api}/flows/filter", json={}, timeout=30).status_code == 401
    assert requests.post(f"{api}/flows/filter", json={}, auth=(user, password + "x"), timeout=30).status_code == 401
    assert requests.get(f"{api}/work_pools/{os.environ['PICO_PREFECT_POOL']}", timeout=30).status_code == 401
    ok = requests.post(f"{api}/flows/filter", json={}, auth=(user, password), timeout=30)
    assert ok.status_code == 200 and isinstance(ok.json(), list)
    assert requests.get(f"{api}/health", timeout=30).status_code == 200
    with get_client(sync_client=True) as client:  # Prefect's own client, from the environment
        pool = client.read_work_pool(os.environ["PICO_PREFECT_POOL"])
        workers = client.read_workers_for_work_pool(pool.name)
    assert pool.type == "process" and any(w.status.value == "ONLINE" for w in workers)  # the worker got in too


def _stack_processes() -> dict[int, str]:
    """pid -> command line of every process of the stack: the services started by stack.py (pid files) and all
    their descendants (gunicorn workers, the worker's flow runs, PostgreSQL's backends)."""
    from stack_support import STATE

    roots = {int(p.read_text()) for p in (STATE / "pids").glob("*.pid")}
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = {}, list(roots)
    while todo:
        pid = todo.pop()
        try:
            out[pid] = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        todo += children.get(pid, [])
    for d in Path("/proc").iterdir():  # PostgreSQL (started by pg_ctl, not a pid file): its postmaster and backends
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith(("postgres", "/usr/lib/postgresql")):
                out[int(d.name)] = cmd
    return out


def test_no_credential_in_service_logs_or_on_the_process_table(stack):
    """Issue 25 item 8: every stack service's log file and the command line (/proc/<pid>/cmdline, what `ps` shows
    every user) of every stack process are free of the stack's credentials.

    One exception, in the S3 server's access log only: the S3 access key *ID*. It is the public half of the key pair
    by AWS's design (SigV4 sends it in clear in every request, and a presigned URL carries it in its query string, so
    any access log of presigned downloads shows it); the secret key never leaves the client. The ID is still checked
    on every command line and in every other log."""
    from stack_support import STATE

    procs = _stack_processes()
    assert any("mlflow" in c for c in procs.values()) and any("postgres" in c for c in procs.values()), procs
    logs = {p.name: p.read_text(errors="replace") for p in (STATE / "logs").glob("*.log")}
    assert logs
    for key, value in stack_secrets().items():
        for pid, cmd in procs.items():
            assert value not in cmd, f"credential {key} on the command line of pid {pid}: {cmd[:60]}..."
        for name, text in logs.items():
            if key == "S3_ACCESS_KEY" and name == "s3.log":
                continue
            assert value not in text, f"credential {key} in the service log {name}"


PROMOTE = """
import sys, time
from pipeline.settings import load_settings
from pipeline.tracking import promote as promotion
project, work, version, mean = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
settings = load_settings(project, overrides={"paths": {"work": work}})
real = promotion.get_alias
def slow_get_alias(*a):  # widen the window between reading the champion and moving it
    got = real(*a)
    time.sleep(4)
    return got
promotion.get_alias = slow_get_alias
print(promotion.promote(settings, version, {"t1": mean, "t2": mean}, "f" * 64, None).alias)
"""


def test_two_workers_promoting_at_once_leave_one_champion(stack_project, tmp_path):
    """Two hosts (separate work folders: no shared file lock) promote at once, both having read "no champion".
    The Prefect global concurrency limit serialises them: the better version ends champion, the other candidate.
    (Unguarded, the worse one, started second, would overwrite the alias last.)"""
    name = model_name(stack_project)
    c = mlflow_client()
    c.create_registered_model(name)
    exp = c.create_experiment(name)

    def version(mean):
        run_ = c.create_run(exp)
        tags = {"eval.scores": json.dumps({"t1": mean, "t2": mean}), "eval.mean": str(mean),
                "eval.fingerprint": "f" * 64}
        return str(c.create_model_version(name, source=f"{run_.info.artifact_uri}/adapter", run_id=run_.info.run_id,
                                          tags=tags).version)

    better, worse = version(0.7), version(0.5)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = []
    for host, (v, mean) in enumerate([(better, 0.7), (worse, 0.5)]):
        procs.append(subprocess.Popen([sys.executable, "-c", PROMOTE, str(stack_project), str(tmp_path / f"host{host}"),
                                       v, str(mean)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
        time.sleep(1.5)
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert [o[0].strip().splitlines()[-1] for o in outs] == ["champion", "candidate"]
    assert champion(name) == better
    tags = {v: c.get_model_version(name, v).tags for v in (better, worse)}
    assert tags[better]["promotion"] == "champion" and tags[worse]["promotion"] == "candidate"


def test_storage_and_database_faults_during_register_lose_nothing(stack_project, monkeypatch, tmp_path):
    """Issue 25 item 9, faults at the exact moment in the register step, three nights on one model:
    1. the S3 server (moto) SIGKILLed while the logged model's files are uploaded (one file is in): the night fails
       with RegistryUnavailable, no version exists (none points at missing files; the logged model is FAILED), no
       alias; moto is started again (it forgets its objects: the buckets are made anew);
    2. PostgreSQL (MLflow's and Prefect's database) stopped as the version is created and kept down until that call
       has failed, MLflow's HTTP retries included: RegistryUnavailable, no version, no alias;
    3. PostgreSQL restarted just before register: the night completes (MLflow's pool pre-pings and reconnects) or
       fails clearly with no alias, and a next night completes: one version, champion, every file of it readable."""
    import signal

    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
    from mlflow.tracking import MlflowClient

    from pipeline_helpers import file_hashes

    from pipeline.settings import load_settings
    from pipeline.tracking import client
    from pipeline.tracking import runs as registry
    from pipeline.tracking.models import download_version

    stack = stack_script()
    name = model_name(stack_project)
    killed: list[str] = []
    real_put = HttpArtifactRepository.log_artifact

    def put_then_kill_s3(self, local_file, artifact_path=None):
        real_put(self, local_file, artifact_path)
        if not killed and "/models/m-" in self.artifact_uri:  # the logged model's first file is in; the rest not
            os.killpg(stack.read_pid("s3"), signal.SIGKILL)
            killed.append(f"{self.artifact_uri} after {Path(local_file).name}")

    monkeypatch.setattr(HttpArtifactRepository, "log_artifact", put_then_kill_s3)
    try:
        with pytest.raises(client.RegistryUnavailable, match=r"\(registering\).*mlflow-artifacts") as failed:
            nightly(stack_project)
    finally:
        stack.stop("s3")  # forget the dead process's pid file
        stack.s3_up(stack.secrets_env())  # moto forgets its objects: the buckets again, empty
    print(f"S3 killed during the upload ({killed}): {str(failed.value)[:300]}")
    assert killed, "the logged model's upload never ran"
    assert versions(name) == [] and champion(name) is None
    exp = mlflow_client().get_experiment_by_name(name).experiment_id  # the half-uploaded model is marked so
    assert [str(m.status) for m in mlflow_client().search_logged_models([exp])] == ["FAILED"]
    monkeypatch.undo()

    real_create = MlflowClient.create_model_version
    down: list[float] = []

    def create_while_postgres_is_down(self, *args, **kw):  # down for the whole call, MLflow's HTTP retries included
        stack.pg_ctl("stop", "-m", "fast", "-w")
        t0 = time.monotonic()
        try:
            return real_create(self, *args, **kw)
        finally:
            down.append(time.monotonic() - t0)
            stack.pg_ctl("start", "-w", "-t", "60", "-l", str(stack.PG_LOG))

    monkeypatch.setattr(MlflowClient, "create_model_version", create_while_postgres_is_down)
    with pytest.raises(client.RegistryUnavailable, match=r"\(registering\).*model-versions/create") as failed:
        nightly(stack_project)
    print(f"PostgreSQL down {down} s during register: {str(failed.value)[:300]}")
    assert down and versions(name) == [] and champion(name) is None
    monkeypatch.undo()

    real_register, restarted = registry.register, []

    def register_after_a_restart(*args, **kw):
        if not restarted:
            stack.pg_ctl("restart", "-m", "fast", "-w", "-l", str(stack.PG_LOG))
            restarted.append(time.monotonic())
        return real_register(*args, **kw)

    monkeypatch.setattr(registry, "register", register_after_a_restart)
    try:
        out = nightly(stack_project)
    except client.RegistryUnavailable as exc:  # a clear failure is allowed; a moved alias is not
        print(f"PostgreSQL restarted before register: the night failed: {exc!r}"[:400])
        assert versions(name) == [] and champion(name) is None
        out = nightly(stack_project)
    assert restarted
    version = out["registered"]["version"]
    assert out["decision"]["promoted"] and champion(name) == version and versions(name) == [version]
    source = mlflow_client().get_model_version(name, version).source  # every file of it is there, byte for byte
    got = download_version(load_settings(stack_project), source, tmp_path / "downloaded")
    assert file_hashes(got) == file_hashes(out["store"])


KILLED_BEFORE_PROMOTE = """
import os, signal, sys
from flows.nightly import nightly_merge
from pipeline.tracking import runs
def killed(*args, **kw):  # the night's process dies the moment its version exists: before its records, the promote
    os.kill(os.getpid(), signal.SIGKILL)
runs.record_search_and_gate = killed
nightly_merge(project=sys.argv[1])
"""


def test_a_night_killed_or_cut_from_prefect_before_promote_moves_no_alias(stack_project, monkeypatch):
    """Issue 25 item 9, between register and promote, three nights on one model:
    1. the night's process SIGKILLed the moment its version is registered (before the run's search and gate records
       and the promote step): one version, no alias;
    2. a rerun during which the Prefect server is stopped as the promote step starts: it registers nothing new (the
       version with this identity is reused) and moves no alias: the promote cannot take the alias guard (the
       Prefect global concurrency limit) and does not proceed without it;
    3. Prefect back, the next night completes: the same version, champion, aliases and tags consistent."""
    from pipeline import steps
    from pipeline.tracking.client import GuardUnavailable
    from pipeline_helpers import subprocess_env

    stack = stack_script()
    project, name = stack_project, model_name(stack_project)
    proc = subprocess.run([sys.executable, "-c", KILLED_BEFORE_PROMOTE, str(project)], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert versions(name) == ["1"] and champion(name) is None
    assert not mlflow_client().get_registered_model(name).aliases

    real_promote = steps.promote
    raised: list[BaseException] = []

    def promote_without_prefect(*args, **kw):
        stack.stop("prefect")
        try:
            return real_promote(*args, **kw)
        except BaseException as exc:
            raised.append(exc)
            raise

    monkeypatch.setattr(steps, "promote", promote_without_prefect)
    try:
        with pytest.raises(Exception) as failed:
            nightly(project)
    finally:
        monkeypatch.setattr(steps, "promote", real_promote)
        stack.prefect_up(stack.secrets_env())
    print(f"Prefect stopped before promote: the night failed: {failed.value!r}"[:400],
          f"; the promote step: {raised[0]!r}"[:400] if raised else "")
    assert raised and isinstance(raised[0], GuardUnavailable), raised
    assert versions(name) == ["1"]  # reused, not a duplicate
    assert not mlflow_client().get_registered_model(name).aliases  # nothing moved without the guard

    out = nightly(project)
    assert (out["registered"]["version"], out["registered"]["reused"]) == ("1", True)
    assert out["decision"]["promoted"] and versions(name) == ["1"]
    model = mlflow_client().get_registered_model(name)
    assert dict(model.aliases) == {"champion": "1"}
    assert mlflow_client().get_model_version(name, "1").tags["promotion"] == "champion"


def test_a_dask_worker_killed_mid_merge_is_rescheduled_with_identical_bytes(stack_project, tmp_path):
    """The night's calibrate/merge tasks on the stack's Dask cluster (GPU-labelled workers); the first worker seen
    processing one is SIGKILLed; its nanny restarts it, the tasks run again elsewhere, the bytes equal `pico merge`."""
    import signal
    import threading

    from distributed import Client
    from pipeline_helpers import file_hashes, reference_merge

    project = stack_project
    set_params(project, pipeline__task_runner={"kind": "dask", "address": os.environ["PICO_DASK_ADDRESS"],
                                               "gpu_resource": "GPU"})
    commit_all(project, "the team's Dask cluster")
    ref = reference_merge(project, tmp_path / "ref")
    client = Client(os.environ["PICO_DASK_ADDRESS"], timeout=60)
    pids = client.run(os.getpid)  # worker address -> pid
    killed, stop = [], threading.Event()

    def kill_a_busy_worker():
        while not stop.is_set():
            busy = client.run_on_scheduler(
                lambda dask_scheduler: sorted(w for w, ws in dask_scheduler.workers.items() if ws.processing))
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_a_busy_worker, daemon=True)
    watcher.start()
    try:
        out = nightly(project)
    finally:
        stop.set()
        watcher.join(30)
    print(f"Dask worker killed mid-merge: {killed}; night runner {out['runner']}")
    assert killed, "no worker was seen processing a task"
    got = file_hashes(out["store"])
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert got[name] == ref[name], name
    client.wait_for_workers(2, timeout=120)  # the nanny brought the killed worker back
    client.close()


SERVE_PROMPTS = ["12+34=", "rev abc=", "sort dcba="]
LOAD = """
import json, sys
for name in ("pico", "pipeline", "flows", "skills"):  # the version must load with none of the project's code
    sys.modules[name] = None
import mlflow
print(json.dumps(mlflow.pyfunc.load_model(sys.argv[1]).predict(json.loads(sys.argv[2]))))
"""


def test_the_champion_loads_and_serves_from_a_second_clone(stack, tmp_path):
    """Issue 25 item 2: a night on the stack whose base is DVC-tracked (``dvc://base`` on the S3 remote); then the
    night's checkout is moved away, and in a second clone at another path, with only the MLflow and S3 variables
    (no PICO_*, no Prefect), the champion loads in a fresh process and serves over HTTP: its base is read through
    DVC at the night's commit, verified against the recorded digest, and it generates what it generated on the
    night's host."""
    import shutil
    import urllib.request
    import uuid

    import mlflow
    import yaml
    from pipeline_helpers import PY, free_port, wait_http

    from skills.tiny import build_tiny_suite

    tag = uuid.uuid4().hex[:10]
    suite = build_tiny_suite(tmp_path / "suite", adapters=["add", "rev"])  # a base with a tokenizer
    project = make_project(tmp_path / "proj", [Path(p) for p in suite["adapters"].values()], Path(suite["base"]),
                           pipeline={"mlflow": {"experiment": f"stack-{tag}", "model_name": f"stack-{tag}",
                                                "registry_limit": os.environ["PICO_REGISTRY_LIMIT"]},
                                     "eval": {"suite": "callable", "callable": "scorer:score", "baselines": False}})
    shutil.copytree(suite["base"], project / "base")
    dvc(project, "add", "-q", "base")
    catalog = yaml.safe_load((project / "adapters.yaml").read_text())
    catalog["base"] = {"name": "base", "source": "dvc://base"}
    (project / "adapters.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    commit_all(project, "the base, DVC-tracked")
    use_s3_remote(project, f"tests/{tag}")  # pushes the base too
    name = model_name(project)
    night = nightly(project)
    assert night["decision"]["promoted"] and champion(name) == night["registered"]["version"]
    uri = f"models:/{name}@champion"
    here = mlflow.pyfunc.load_model(uri).predict(SERVE_PROMPTS)  # on the night's host

    clone = tmp_path / "second" / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    project.rename(tmp_path / "moved")  # the night's checkout (its base, its DVC cache): gone
    keep = ("PATH", "HOME", "LANG", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PICO_BASE_CACHE"] = str(tmp_path / "cache")
    try:
        loaded = subprocess.run([PY, "-c", LOAD, uri, json.dumps(SERVE_PROMPTS)], cwd=clone, env=env,
                                capture_output=True, text=True, timeout=600)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        assert json.loads(loaded.stdout.strip().splitlines()[-1]) == here
        sha = mlflow_client().get_model_version(name, night["registered"]["version"]).tags["base.sha256"]
        assert (tmp_path / "cache" / sha).is_dir()  # fetched from the S3 remote through DVC, verified, cached

        shutil.rmtree(tmp_path / "cache")  # the server resolves it again, by itself
        port = free_port()
        log = open(tmp_path / "serve.log", "wb")
        proc = subprocess.Popen([str(Path(PY).parent / "mlflow"), "models", "serve", "-m", uri, "--env-manager",
                                 "local", "-h", "127.0.0.1", "-p", str(port)], cwd=clone, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", timeout=300, proc=proc)
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                         data=json.dumps({"inputs": SERVE_PROMPTS}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as resp:
                assert json.loads(resp.read())["predictions"] == here
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)
    finally:
        (tmp_path / "moved").rename(project)
