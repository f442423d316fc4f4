"""The team stack on 127.0.0.1, for development and the `stack` test lane: ``./dev stack up|down|status|env``.

What runs (fixed ports, all bound to 127.0.0.1; state, logs and generated credentials under build/stack/):

  15000  PostgreSQL 15 (Debian's `postgresql`), its own cluster in build/stack/pg (not the system one), run by the
         `postgres` user when this script runs as root; databases `mlflow`, `mlflow_auth`, `prefect`
  15001  `mlflow server` on PostgreSQL, with MLflow's basic-auth app, proxying artifacts to s3://mlflow-artifacts
  15002  `prefect server start` on PostgreSQL (asyncpg), with API auth (basic, user `pico`); work pool
         `pico-nightly` (process) + one `prefect worker`; global concurrency limit `pico-registry` (1)
  15003  moto's S3-compatible server: buckets `mlflow-artifacts` (MLflow) and `dvc-remote` (the DVC remote)
  15004  `dask scheduler`; workers `gpu-0` (15006/15007) and `gpu-1` (15008/15009), `--resources GPU=1`

Credentials are generated once into build/stack/secrets.env (mode 600, never committed: build/ is ignored) and
handed to the pipeline only through environment variables (build/stack/env.sh, `./dev stack env`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / "build" / "stack"
LOGS = STATE / "logs"
PIDS = STATE / "pids"


def _pg_home() -> Path:
    """Where the PostgreSQL cluster lives: build/stack/ normally. As root, initdb and the server run as `postgres`,
    which must reach the data directory and its log, and a checkout may sit in a folder only root can enter (CI's
    `mktemp -d` is 0700): then the cluster goes to /var/tmp/pico-stack-<hash of this checkout's path>/."""
    if os.geteuid() != 0:
        return STATE
    return Path("/var/tmp") / f"pico-stack-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"


PG_HOME = _pg_home()
PGDATA = PG_HOME / "pg"
PG_LOG = PG_HOME / "postgres.log"
HOST = "127.0.0.1"
# PICO_STACK_PORT_BASE moves every port (default 15000): two checkouts on one machine can each run a stack.
BASE_PORT = int(os.environ.get("PICO_STACK_PORT_BASE", "15000"))
PORTS = {"postgres": BASE_PORT, "mlflow": BASE_PORT + 1, "prefect": BASE_PORT + 2, "s3": BASE_PORT + 3,
         "dask": BASE_PORT + 4, "gpu-0": (BASE_PORT + 6, BASE_PORT + 7), "gpu-1": (BASE_PORT + 8, BASE_PORT + 9)}
POOL, GCL = "pico-nightly", "pico-registry"
WORK = STATE / "work"  # the worker's pipeline.paths.work (PICO_WORK_DIR): outside the clone each run pulls
BUCKETS = ("mlflow-artifacts", "dvc-remote")
PIPELINE_USER, VIEWER_USER, PREFECT_USER = "pico-pipeline", "pico-viewer", "pico"
PY = Path(sys.executable)
BIN = PY.parent
SERVICE_PORTS = {"s3": PORTS["s3"], "mlflow": PORTS["mlflow"], "prefect": PORTS["prefect"],
                 "dask-scheduler": PORTS["dask"], "dask-gpu-0": PORTS["gpu-0"][0], "dask-gpu-1": PORTS["gpu-1"][0]}
ORDER = ["s3", "mlflow", "prefect", "prefect-worker", "dask-scheduler", "dask-gpu-0", "dask-gpu-1"]


def log(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


# ---------------------------------------------------------------- credentials and the pipeline's environment
SECRET_KEYS = ("PG_SUPER_PASSWORD", "PG_MLFLOW_PASSWORD", "PG_PREFECT_PASSWORD", "MLFLOW_ADMIN_PASSWORD",
               "MLFLOW_PIPELINE_PASSWORD", "MLFLOW_VIEWER_PASSWORD", "MLFLOW_FLASK_SECRET", "S3_ACCESS_KEY",
               "S3_SECRET_KEY", "PREFECT_API_PASSWORD")
# what the PostgreSQL cluster holds (its roles, MLflow's users) or was stamped with: a new key elsewhere (the Prefect
# API's password) must not re-create a cluster
CLUSTER_KEYS = tuple(k for k in SECRET_KEYS if k != "PREFECT_API_PASSWORD")


def secrets_env() -> dict[str, str]:
    """Generated once (mode 600): database, MLflow and S3 credentials of this stack (missing ones are added)."""
    path = STATE / "secrets.env"
    STATE.mkdir(parents=True, exist_ok=True)
    have = dict(line.split("=", 1) for line in path.read_text().split("\n") if "=" in line) if path.is_file() else {}
    missing = [k for k in SECRET_KEYS if k not in have]
    if missing:
        for k in missing:
            have[k] = "AKIA" + secrets.token_hex(8).upper() if k == "S3_ACCESS_KEY" else secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in have.items())
    return have


def pg_url(user: str, password: str, db: str, driver: str = "postgresql+psycopg2") -> str:
    return f"{driver}://{user}:{password}@{HOST}:{PORTS['postgres']}/{db}"


def prefect_auth(s: dict[str, str]) -> str:
    """The Prefect API's basic-auth credential, `user:password`: the server's PREFECT_SERVER_API_AUTH_STRING and every
    client's PREFECT_API_AUTH_STRING (environment only)."""
    return f"{PREFECT_USER}:{s['PREFECT_API_PASSWORD']}"


def pipeline_env(s: dict[str, str]) -> dict[str, str]:
    """What the pipeline (and a team member's shell) needs: service URLs and the pipeline user's credentials."""
    return {
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{PORTS['mlflow']}",
        "MLFLOW_TRACKING_USERNAME": PIPELINE_USER,
        "MLFLOW_TRACKING_PASSWORD": s["MLFLOW_PIPELINE_PASSWORD"],
        "PREFECT_API_URL": f"http://{HOST}:{PORTS['prefect']}/api",
        "PREFECT_API_AUTH_STRING": prefect_auth(s),
        "AWS_ACCESS_KEY_ID": s["S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": s["S3_SECRET_KEY"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{HOST}:{PORTS['s3']}",
        "PICO_DVC_REMOTE_URL": "s3://dvc-remote/pico",
        "PICO_DVC_REMOTE_ENDPOINT": f"http://{HOST}:{PORTS['s3']}",
        "PICO_DASK_ADDRESS": f"tcp://{HOST}:{PORTS['dask']}",
        "PICO_PREFECT_POOL": POOL,
        "PICO_REGISTRY_LIMIT": GCL,
    }


def write_env_file(env: dict[str, str]) -> Path:
    path = STATE / "env.sh"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# generated by ./dev stack up: source it to point the pipeline at this stack (never commit)\n")
        f.writelines(f"export {k}='{v}'\n" for k, v in env.items())
    return path


def base_env() -> dict[str, str]:
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
           "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_URL",
              "PREFECT_API_AUTH_STRING", "PICO_WORK_DIR"):
        env.pop(k, None)
    return env


# ---------------------------------------------------------------- processes
def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


class StartupError(SystemExit):
    """A service died or stayed silent while starting; the message carries the end of its log."""


def log_tail(name: str, lines: int = 30) -> str:
    """The last lines of a service's log, so CI output shows why it failed (the log itself is not kept)."""
    path = LOGS / f"{name}.log"
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return f"last {len(tail)} lines of {path}:\n" + "\n".join("    " + line for line in tail)


def wait_port(port: int, name: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if listening(port):
            return
        pid = read_pid(name)
        if name != "postgres" and pid is None:
            raise StartupError(f"{name} exited during start-up; {log_tail(name)}")
        time.sleep(0.3)
    raise StartupError(f"{name} did not listen on {HOST}:{port} within {timeout:.0f} s; {log_tail(name)}")


def read_pid(name: str) -> int | None:
    path = PIDS / f"{name}.pid"
    if not path.is_file():
        return None
    pid = int(path.read_text())
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child and has exited (else it lingers as a zombie)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return None
    return pid


def spawn(name: str, args: list[str], env: dict[str, str]) -> int:
    """Start a service in its own process group (so `down` ends it and all its children), logging to logs/."""
    if (pid := read_pid(name)) is not None:
        return pid
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    (PIDS / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def stop(name: str, timeout: float = 20) -> bool:
    pid = read_pid(name)
    if pid is None:
        return False
    with _suppress():
        os.killpg(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while time.monotonic() < end and read_pid(name) is not None:
        time.sleep(0.2)
        with _suppress():
            os.waitpid(pid, os.WNOHANG)
    if read_pid(name) is not None:
        with _suppress():
            os.killpg(pid, signal.SIGKILL)
    (PIDS / f"{name}.pid").unlink(missing_ok=True)
    return True


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (ProcessLookupError, ChildProcessError, PermissionError))


# ---------------------------------------------------------------- PostgreSQL
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def ensure_postgres_installed() -> None:
    if (PG_BIN / "pg_ctl").is_file():
        return
    if os.geteuid() != 0:
        raise SystemExit("PostgreSQL 15 is not installed: run `sudo apt-get install -y postgresql` (Debian)")
    log("installing PostgreSQL (apt-get install postgresql)")
    subprocess.run(["apt-get", "update", "-q"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def as_pg_user(args: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a PostgreSQL binary as the cluster's owner: `postgres` when we are root (initdb refuses root)."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, **kw)


def pg_ctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return as_pg_user([str(PG_BIN / "pg_ctl"), "-D", str(PGDATA), *args], capture_output=True, text=True, check=check)


def postgres_up(s: dict[str, str]) -> None:
    ensure_postgres_installed()
    LOGS.mkdir(parents=True, exist_ok=True)
    PG_HOME.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        uid, gid = pwd.getpwnam("postgres")[2:4]
        os.chown(PG_HOME, uid, gid)  # the cluster and its server log are written by postgres
        PG_HOME.chmod(0o700)
    stamp = PG_HOME / "credentials.sha256"  # which secrets.env the cluster's roles and MLflow users were made with
    want = hashlib.sha256("\n".join(s[k] for k in CLUSTER_KEYS).encode()).hexdigest()
    if (PGDATA / "PG_VERSION").is_file() and (not stamp.is_file() or stamp.read_text().strip() != want):
        # A cluster made with other credentials: an earlier checkout at this same path (CI clones to a fixed path;
        # as root the cluster lives in /var/tmp, outside the clone) or build/stack/ was removed. Its passwords are
        # gone with the old secrets.env, so nothing could log in: start it afresh rather than fail later.
        log(f"the PostgreSQL cluster in {PGDATA} was made with other credentials (an earlier checkout here, or "
            "build/stack/ was removed); re-creating it")
        pg_ctl("stop", "-m", "fast", "-w", check=False)
        shutil.rmtree(PGDATA)
        stamp.unlink(missing_ok=True)
    fresh = not (PGDATA / "PG_VERSION").is_file()
    if fresh:
        PGDATA.mkdir(parents=True, exist_ok=True)
        pwfile = PG_HOME / "pg.pw"
        pwfile.unlink(missing_ok=True)
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600 from the start, never readable
        with os.fdopen(fd, "w") as f:
            f.write(s["PG_SUPER_PASSWORD"] + "\n")
        if os.geteuid() == 0:
            os.chown(PGDATA, uid, gid)
            os.chown(pwfile, uid, gid)
        try:
            as_pg_user([str(PG_BIN / "initdb"), "-D", str(PGDATA), "-U", "postgres", "--pwfile", str(pwfile),
                        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                       check=True, capture_output=True, text=True)
        finally:
            pwfile.unlink(missing_ok=True)
        with open(PGDATA / "postgresql.conf", "a") as f:
            f.write(f"\nlisten_addresses = '{HOST}'\nport = {PORTS['postgres']}\nunix_socket_directories = '{PGDATA}'\n"
                    "max_connections = 200\nshared_buffers = 64MB\nfsync = on\n")
    if pg_ctl("status", check=False).returncode != 0:
        proc = pg_ctl("start", "-w", "-t", "60", "-l", str(PG_LOG), check=False)
        if proc.returncode != 0:
            raise SystemExit(f"PostgreSQL did not start: {proc.stderr.strip() or proc.stdout.strip()}; "
                             f"see {PG_LOG}")
    if fresh:
        sql = (f"CREATE ROLE mlflow LOGIN PASSWORD '{s['PG_MLFLOW_PASSWORD']}';"
               f"CREATE ROLE prefect LOGIN PASSWORD '{s['PG_PREFECT_PASSWORD']}';"
               "CREATE DATABASE mlflow OWNER mlflow; CREATE DATABASE mlflow_auth OWNER mlflow;"
               "CREATE DATABASE prefect OWNER prefect;")
        for stmt in sql.rstrip(";").split(";"):  # on stdin, never on psql's command line (the process table)
            as_pg_user([str(PG_BIN / "psql"), "-h", str(PGDATA), "-p", str(PORTS["postgres"]), "-U", "postgres",
                        "-q", "-v", "ON_ERROR_STOP=1"], input=stmt + ";\n", check=True, capture_output=True,
                       text=True)
        stamp.write_text(want + "\n")


def postgres_down() -> None:
    if (PGDATA / "PG_VERSION").is_file() and pg_ctl("status", check=False).returncode == 0:
        pg_ctl("stop", "-m", "fast", "-w", check=False)


# ---------------------------------------------------------------- the services
def ensure_python_packages() -> None:
    """moto[server], dvc-s3, boto3, psycopg2 in this venv (pinned in constraints.txt; the `stack` extra)."""
    try:
        import boto3  # noqa: F401
        import dvc_s3  # noqa: F401
        import flask_wtf  # noqa: F401
        import moto  # noqa: F401
        import psycopg2  # noqa: F401
    except ImportError:
        log("installing the stack extra (moto[server], dvc-s3, boto3, psycopg2-binary, mlflow[auth])")
        subprocess.run([str(PY), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c",
                        str(ROOT / "constraints.txt"), "-e", f"{ROOT}[stack]"], check=True)


def s3_up(s: dict[str, str]) -> None:
    env = {**base_env(), "AWS_ACCESS_KEY_ID": s["S3_ACCESS_KEY"], "AWS_SECRET_ACCESS_KEY": s["S3_SECRET_KEY"]}
    spawn("s3", [str(BIN / "moto_server"), "-H", HOST, "-p", str(PORTS["s3"])], env)
    wait_port(PORTS["s3"], "s3")
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://{HOST}:{PORTS['s3']}", region_name="us-east-1",
                      aws_access_key_id=s["S3_ACCESS_KEY"], aws_secret_access_key=s["S3_SECRET_KEY"])
    have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS:
        if bucket not in have:
            s3.create_bucket(Bucket=bucket)


def mlflow_up(s: dict[str, str]) -> None:
    ini = STATE / "mlflow_auth.ini"
    fd = os.open(ini, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:  # READ by default: only a model's creator (and admins) may move its aliases
        f.write("[mlflow]\ndefault_permission = READ\n"
                f"database_uri = {pg_url('mlflow', s['PG_MLFLOW_PASSWORD'], 'mlflow_auth')}\n"
                "admin_username = admin\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = {**base_env(), "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": s["MLFLOW_ADMIN_PASSWORD"],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": s["MLFLOW_FLASK_SECRET"],
           "MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{PORTS['s3']}", "AWS_ACCESS_KEY_ID": s["S3_ACCESS_KEY"],
           "AWS_SECRET_ACCESS_KEY": s["S3_SECRET_KEY"], "AWS_DEFAULT_REGION": "us-east-1",
           # the server's job runner (huey, on /dev/shm) serves GenAI judges the pipeline never uses: one less
           # process to fail at start-up
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           # the store's URI holds the PostgreSQL password: the environment (MLflow's CLI reads it), never argv
           "MLFLOW_BACKEND_STORE_URI": pg_url("mlflow", s["PG_MLFLOW_PASSWORD"], "mlflow")}
    spawn("mlflow", [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", HOST,
                     "--port", str(PORTS["mlflow"]), "--workers", "2",
                     "--artifacts-destination", "s3://mlflow-artifacts", "--serve-artifacts"], env)
    wait_port(PORTS["mlflow"], "mlflow", timeout=180)
    ensure_mlflow_users(s)


def _mlflow_call(method: str, path: str, auth: tuple[str, str], **kw):
    import requests

    return requests.request(method, f"http://{HOST}:{PORTS['mlflow']}{path}", auth=auth, timeout=30, **kw)


def ensure_mlflow_users(s: dict[str, str]) -> None:
    """The pipeline's user and a read-only viewer (created by the admin; default permission READ)."""
    admin = ("admin", s["MLFLOW_ADMIN_PASSWORD"])
    end = time.monotonic() + 120
    while True:  # the port opens before every worker has its database ready
        try:
            r = _mlflow_call("GET", "/api/2.0/mlflow/users/get", admin, params={"username": "admin"})
            if r.status_code == 200:
                break
        except Exception:
            pass
        if time.monotonic() > end:
            raise SystemExit(f"MLflow's auth API did not answer; {log_tail('mlflow')}")
        time.sleep(1)
    for user, key in ((PIPELINE_USER, "MLFLOW_PIPELINE_PASSWORD"), (VIEWER_USER, "MLFLOW_VIEWER_PASSWORD")):
        r = _mlflow_call("GET", "/api/2.0/mlflow/users/get", admin, params={"username": user})
        if r.status_code != 200:
            r = _mlflow_call("POST", "/api/2.0/mlflow/users/create", admin, json={"username": user, "password": s[key]})
            if r.status_code != 200:
                raise SystemExit(f"creating MLflow user {user} failed: HTTP {r.status_code}")


def prefect_env(s: dict[str, str]) -> dict[str, str]:
    return {**base_env(), "PREFECT_HOME": str(STATE / "prefect"),
            "PREFECT_API_URL": f"http://{HOST}:{PORTS['prefect']}/api", "PREFECT_API_AUTH_STRING": prefect_auth(s)}


def prefect_up(s: dict[str, str]) -> None:
    env = {**prefect_env(s), "PREFECT_API_DATABASE_CONNECTION_URL": pg_url(
        "prefect", s["PG_PREFECT_PASSWORD"], "prefect", "postgresql+asyncpg"), "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_API_AUTH_STRING": prefect_auth(s)}  # API auth: every request but the health probe
    env.pop("PREFECT_API_URL")
    env.pop("PREFECT_API_AUTH_STRING")
    spawn("prefect", [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(PORTS["prefect"])], env)
    wait_port(PORTS["prefect"], "prefect", timeout=180)
    import urllib.request

    end = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{PORTS['prefect']}/api/health", timeout=5) as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        if time.monotonic() > end:
            raise SystemExit(f"Prefect's API is not healthy; {log_tail('prefect')}")
        time.sleep(0.5)
    penv = prefect_env(s)
    for args in (["work-pool", "create", POOL, "--type", "process", "--overwrite"],
                 ["global-concurrency-limit", "create", GCL, "--limit", "1"]):
        proc = subprocess.run([str(BIN / "prefect"), *args], env=penv, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0 and "already exists" not in proc.stdout + proc.stderr:
            raise SystemExit(f"prefect {' '.join(args)} failed: {(proc.stdout + proc.stderr).strip()[-400:]}")
    # the worker runs each flow run in a subprocess with its own environment: the pipeline's, nothing more, and the
    # shared work folder (a deployment's run clones the code afresh: its merge store and caches live outside it)
    wenv = {**penv, **pipeline_env(s), "PICO_WORK_DIR": str(WORK)}
    spawn("prefect-worker", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", "stack-worker",
                             "--limit", "1"], wenv)


def dask_up(s: dict[str, str]) -> None:
    env = {**base_env(), **pipeline_env(s), "PREFECT_HOME": str(STATE / "prefect")}
    spawn("dask-scheduler", [str(BIN / "dask"), "scheduler", "--host", HOST, "--port", str(PORTS["dask"]),
                             "--no-dashboard"], env)
    wait_port(PORTS["dask"], "dask-scheduler")
    for name in ("gpu-0", "gpu-1"):
        wport, nport = PORTS[name]
        spawn(f"dask-{name}", [str(BIN / "dask"), "worker", f"tcp://{HOST}:{PORTS['dask']}", "--name", name,
                               "--host", HOST, "--worker-port", str(wport), "--nanny-port", str(nport),
                               "--nthreads", "1", "--resources", "GPU=1", "--no-dashboard",
                               "--local-directory", str(STATE / "dask" / name)], env)
    for name in ("gpu-0", "gpu-1"):
        wait_port(PORTS[name][0], f"dask-{name}")


# ---------------------------------------------------------------- commands
def up() -> int:
    t0 = time.monotonic()
    ensure_python_packages()
    busy = [f"{HOST}:{port} ({name})" for name, port in SERVICE_PORTS.items()
            if read_pid(name) is None and listening(port)]
    if busy:  # else a stranger's service would pass our start-up checks and fail later on credentials
        raise SystemExit(f"in use by processes this checkout's stack did not start: {', '.join(busy)}. A stack from "
                         "another checkout, or build/stack/ was removed while the stack ran: stop those processes first")
    s = secrets_env()
    postgres_up(s)
    log(f"postgres   {HOST}:{PORTS['postgres']}  ({time.monotonic() - t0:.1f} s)")
    s3_up(s)
    log(f"s3 (moto)  http://{HOST}:{PORTS['s3']}  buckets {', '.join(BUCKETS)}  ({time.monotonic() - t0:.1f} s)")
    mlflow_up(s)
    log(f"mlflow     http://{HOST}:{PORTS['mlflow']}  (basic auth)  ({time.monotonic() - t0:.1f} s)")
    prefect_up(s)
    log(f"prefect    http://{HOST}:{PORTS['prefect']}/api  (API auth)  pool {POOL}, worker, limit {GCL}  "
        f"({time.monotonic() - t0:.1f} s)")
    dask_up(s)
    log(f"dask       tcp://{HOST}:{PORTS['dask']}  workers gpu-0, gpu-1 (GPU=1)  ({time.monotonic() - t0:.1f} s)")
    # the port base too: the stack tests restart single services through this script (tests/stack/stack_support.py)
    env_file = write_env_file({**pipeline_env(s), "PICO_STACK_PORT_BASE": str(BASE_PORT)})
    log(f"up in {time.monotonic() - t0:.1f} s; point the pipeline at it with: source {env_file.relative_to(ROOT)}")
    return 0


def down() -> int:
    for name in reversed(ORDER):
        if stop(name):
            log(f"stopped {name}")
    postgres_down()
    log("stopped postgres")
    return 0


def status() -> int:
    rows, ok = [], True
    checks = [("postgres", PORTS["postgres"]), *((name, SERVICE_PORTS.get(name)) for name in ORDER)]
    for name, port in checks:
        up_ = listening(port) if port else read_pid(name) is not None
        ok &= up_
        rows.append(f"{name:<15} {'up' if up_ else 'DOWN':<5} {f'{HOST}:{port}' if port else ''}")
    print("\n".join(rows))
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "status"
    if cmd == "up":
        return up()
    if cmd == "down":
        return down()
    if cmd == "status":
        return status()
    if cmd == "env":  # for `eval "$(./dev stack env)"`
        print((STATE / "env.sh").read_text() if (STATE / "env.sh").is_file() else "# the stack is not up")
        return 0
    if cmd == "json":
        print(json.dumps({"ports": PORTS, "pool": POOL, "limit": GCL, "state": str(STATE)}))
        return 0
    print("usage: ./dev stack up|down|status|env", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
