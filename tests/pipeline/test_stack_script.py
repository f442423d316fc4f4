"""stack/stack.py's start-up guards, with the PostgreSQL binaries and the service probes stubbed (no services run).

CI clones to a fixed path and, as root, the cluster lives in /var/tmp outside the clone: a second CI run found the
first run's cluster, made with credentials its fresh secrets.env no longer had, and MLflow died on "password
authentication failed". These tests pin what `up` does about such leftovers.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("pico_stack_script", ROOT / "stack" / "stack.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    home = tmp_path / "pghome"
    for name, value in {"STATE": tmp_path / "state", "LOGS": tmp_path / "state" / "logs",
                        "PIDS": tmp_path / "state" / "pids", "PG_HOME": home, "PGDATA": home / "pg",
                        "PG_LOG": home / "postgres.log"}.items():
        monkeypatch.setattr(mod, name, value)
    monkeypatch.setattr(mod.os, "geteuid", lambda: 1000)  # the non-root path: no chown to `postgres`
    monkeypatch.setattr(mod, "ensure_postgres_installed", lambda: None)
    calls: list[str] = []

    def fake_pg(args, **kw):  # initdb makes a cluster; pg_ctl status says "not running"; psql succeeds
        tool = Path(args[0]).name
        calls.append(tool if tool != "pg_ctl" else f"pg_ctl {args[3]}")
        if tool == "initdb":
            (home / "pg" / "PG_VERSION").write_text("15\n")
        rc = 3 if tool == "pg_ctl" and args[3] == "status" else 0
        return mod.subprocess.CompletedProcess(args, rc, "", "")

    monkeypatch.setattr(mod, "as_pg_user", fake_pg)

    def no_spawn(name, *a, **kw):  # a regression must fail here, not start a real service on the stack's ports
        raise AssertionError(f"the test tried to start {name}")

    monkeypatch.setattr(mod, "spawn", no_spawn)
    mod.calls = calls
    return mod


def secrets(stack, value: str) -> dict[str, str]:
    return {k: f"{value}-{k}" for k in stack.SECRET_KEYS}


def test_cluster_made_with_other_credentials_is_recreated(stack):
    old, new = secrets(stack, "old"), secrets(stack, "new")
    stack.postgres_up(old)
    stamp = stack.PG_HOME / "credentials.sha256"
    assert stack.calls.count("initdb") == 1 and stamp.read_text().strip() == hashlib.sha256(
        "\n".join(old[k] for k in stack.CLUSTER_KEYS).encode()).hexdigest()
    (stack.PGDATA / "old-data").write_text("x")

    stack.calls.clear()
    stack.postgres_up(old)  # same credentials: the cluster and its data are kept
    assert "initdb" not in stack.calls and (stack.PGDATA / "old-data").is_file()

    stack.calls.clear()
    stack.postgres_up({**old, "PREFECT_API_PASSWORD": "rotated"})  # a secret the cluster does not hold: kept
    assert "initdb" not in stack.calls and (stack.PGDATA / "old-data").is_file()

    stack.calls.clear()
    stack.postgres_up(new)  # a fresh secrets.env (a new clone at the same path): the old cluster goes
    assert stack.calls.count("initdb") == 1 and "pg_ctl stop" in stack.calls
    assert not (stack.PGDATA / "old-data").exists()
    assert stamp.read_text().strip() == hashlib.sha256("\n".join(new[k] for k in stack.CLUSTER_KEYS).encode()).hexdigest()
    assert sum(c == "psql" for c in stack.calls) == 5  # roles and databases made again, with the new passwords


def test_cluster_without_stamp_is_recreated(stack):
    stack.PGDATA.mkdir(parents=True)
    (stack.PGDATA / "PG_VERSION").write_text("15\n")  # made before clusters were stamped: credentials unknown
    stack.postgres_up(secrets(stack, "s"))
    assert stack.calls.count("initdb") == 1


def test_up_refuses_ports_held_by_a_stack_it_did_not_start(stack, monkeypatch):
    monkeypatch.setattr(stack, "ensure_python_packages", lambda: None)
    monkeypatch.setattr(stack, "listening", lambda port: port == stack.PORTS["mlflow"])
    with pytest.raises(SystemExit, match=r"127\.0\.0\.1:15001 \(mlflow\).*stop those processes first"):
        stack.up()
    assert not stack.calls  # refused before PostgreSQL was touched


def test_startup_failure_shows_the_end_of_the_service_log(stack):
    stack.LOGS.mkdir(parents=True)
    (stack.LOGS / "mlflow.log").write_text("".join(f"line {i}\n" for i in range(100)) + "FATAL: password failed\n")
    with pytest.raises(stack.StartupError, match=r"mlflow exited during start-up(.|\n)*FATAL: password failed"):
        stack.wait_port(1, "mlflow", timeout=5)  # no pid file: the service is gone


def test_no_secret_on_any_command_line_and_the_password_file_is_never_readable(stack, monkeypatch):
    """Issue 25 item 8: argv is world-readable (/proc/<pid>/cmdline, ps): the PostgreSQL passwords reach psql on stdin
    and MLflow's store URI through its environment; initdb's password file is 0600 from its creation. The Prefect
    API's credential (item 3) reaches the server, its CLI calls, the worker and env.sh through the environment."""
    argvs, modes = [], []
    real = stack.as_pg_user

    def recording_pg(args, **kw):
        argvs.append(list(args))
        if Path(args[0]).name == "initdb":
            pw = Path(args[args.index("--pwfile") + 1])
            modes.append(pw.stat().st_mode & 0o777)
        return real(args, **kw)

    monkeypatch.setattr(stack, "as_pg_user", recording_pg)
    spawned = {}
    monkeypatch.setattr(stack, "spawn", lambda name, args, env: spawned.setdefault(name, (list(args), dict(env))))
    monkeypatch.setattr(stack, "wait_port", lambda *a, **kw: None)
    monkeypatch.setattr(stack, "ensure_mlflow_users", lambda s: None)
    cli = []
    monkeypatch.setattr(stack.subprocess, "run", lambda args, **kw: cli.append((list(args), kw["env"])) or
                        stack.subprocess.CompletedProcess(args, 0, "", ""))

    class Healthy:  # the health probe's answer (unauthenticated, as on the real server)
        status = 200

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **kw: Healthy())
    s = secrets(stack, "pw")
    stack.postgres_up(s)
    stack.mlflow_up(s)
    stack.prefect_up(s)
    assert modes == [0o600]
    argvs += [args for args, _ in spawned.values()] + [args for args, _ in cli]
    assert {"mlflow", "prefect", "prefect-worker"} <= set(spawned) and len(cli) == 2
    for argv in argvs:
        for key, value in s.items():
            assert not any(value in a for a in argv), f"{key} on the command line {argv[:3]}..."
    assert s["PG_MLFLOW_PASSWORD"] in spawned["mlflow"][1]["MLFLOW_BACKEND_STORE_URI"]  # where it goes instead
    auth = f"pico:{s['PREFECT_API_PASSWORD']}"
    assert spawned["prefect"][1]["PREFECT_SERVER_API_AUTH_STRING"] == auth
    assert "PREFECT_API_AUTH_STRING" not in spawned["prefect"][1]
    assert spawned["prefect-worker"][1]["PREFECT_API_AUTH_STRING"] == auth
    assert all(env["PREFECT_API_AUTH_STRING"] == auth for _, env in cli)  # work pool and limit created with it
    assert stack.pipeline_env(s)["PREFECT_API_AUTH_STRING"] == auth  # env.sh: the pipeline and the tests


def test_secrets_are_generated_once_with_mode_600_and_missing_ones_added(stack):
    """secrets.env is created 0600; a key added later (PREFECT_API_PASSWORD for an older stack) joins the existing
    values, which stay as they were."""
    first = stack.secrets_env()
    path = stack.STATE / "secrets.env"
    assert set(first) == set(stack.SECRET_KEYS) and path.stat().st_mode & 0o777 == 0o600
    assert len({*first.values()}) == len(first) and all(len(v) >= 20 for v in first.values())
    path.write_text("".join(f"{k}={v}\n" for k, v in first.items() if k != "PREFECT_API_PASSWORD"))
    again = stack.secrets_env()
    assert {k: v for k, v in again.items() if k != "PREFECT_API_PASSWORD"} == \
        {k: v for k, v in first.items() if k != "PREFECT_API_PASSWORD"}
    assert again["PREFECT_API_PASSWORD"] != first["PREFECT_API_PASSWORD"] and stack.secrets_env() == again
