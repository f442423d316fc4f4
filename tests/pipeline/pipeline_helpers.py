"""Plain helpers of the pipeline tests (no tests, no fixtures: those are in conftest.py): a throw-away project with
git, DVC (local remote), tiny real PEFT adapters, a catalog, params.yaml, the merge/eval stages, and a scripted scorer.

The scorer (``pipeline.eval.suite: callable``) scores a merged adapter from its manifest's recipe: ``lam`` sets
the score, so a test picks a better or worse merge by its recipe, in-process or in a subprocess alike.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
}

SCORER = '''
import json, pathlib

def score(base_dir, adapter_dir, split, limit):
    """Scripted scores: the base scores 0.3; a merge scores 0.5 + 0.1 * lam on t1, 0.4 + 0.2 * lam on t2."""
    if adapter_dir is None:
        return {"t1": 0.3, "t2": 0.3}
    manifest = pathlib.Path(adapter_dir) / "merge_manifest.json"
    lam = json.loads(manifest.read_text())["recipe"]["lam"] if manifest.exists() else 0.0
    return {"t1": 0.5 + 0.1 * lam, "t2": 0.4 + 0.2 * lam}
'''

DVC_YAML = {
    "stages": {
        "merge": {
            "cmd": "python -m flows.stages merge",
            "deps": ["adapters", "adapters.yaml"],
            "params": ["merge", "pipeline.catalog", "pipeline.dtype", "pipeline.calibrate"],
            "outs": ["build/pipeline/merged"],
        },
        "eval": {
            "cmd": "python -m flows.stages eval",
            "deps": ["build/pipeline/merged"],
            "params": ["pipeline.eval"],
            "metrics": [{"build/pipeline/eval/metrics.json": {"cache": False}}],
        },
    }
}


def run(cmd, cwd, check=True, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env or os.environ.copy(),
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dvc(project, *args, check=True):
    return run([PY, "-m", "dvc", *args], project, check=check)


def set_env(monkeypatch, tmp: Path) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PATH", f"{Path(PY).parent}{os.pathsep}{os.environ['PATH']}")


def make_project(root: Path, adapters: list[Path], base: Path, *, recipe: dict | None = None,
                 pipeline: dict | None = None, dvc_init: bool = True, pins: dict | None = None) -> Path:
    """A git + DVC project: adapters/ tracked by DVC (pushed to a local remote), catalog, params, dvc.yaml."""
    root.mkdir(parents=True)
    (root / "adapters").mkdir()
    for a in adapters:
        shutil.copytree(a, root / "adapters" / a.name)
    (root / "scorer.py").write_text(SCORER)
    catalog = {"base": {"source": str(base)},
               "adapters": [{"name": a.name, "source": f"dvc://adapters/{a.name}" if dvc_init else
                             f"adapters/{a.name}", **({"sha256": pins[a.name]} if pins and a.name in pins else {})}
                            for a in adapters]}
    (root / "adapters.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    params = {
        # rescale none: lam scales the merged bytes (with "post" the norm is pinned and lam cancels out)
        "merge": recipe or {"method": "ties", "space": "core", "calibrate": "pico", "rescale": "none", "lam": 1.0,
                            "params": {"density": 0.7}},
        "pipeline": {
            "catalog": "adapters.yaml",
            "dtype": "float32",
            "calibrate": {"layers_per_group": None, "threads": 1},
            "eval": {"suite": "callable", "callable": "scorer:score", "baselines": True},
            "mlflow": {"experiment": "test-nightly", "model_name": "merged-test"},
            "gate": {"floor": 0.2, "min_delta": 0.0},
            "schedule": {"cron": "30 3 * * 1-5", "timezone": "Europe/Paris"},
            **(pipeline or {}),
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/build/\n")
    run(["git", "init", "-q"], root)
    if dvc_init:
        (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
        dvc(root, "init", "-q")
        remote = root.parent / f"{root.name}-remote"
        dvc(root, "remote", "add", "-d", "local", str(remote))
        dvc(root, "add", "-q", "adapters")
        dvc(root, "push", "-q")
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "init"], root)
    return root


def add_flow_code(project: Path) -> None:
    """Make the project a team's pico-merge repository, as a worker clones it: this checkout's code (the files git
    tracks under pico/, pipeline/ and flows/, as they are on disk) committed beside its params.yaml and catalog."""
    for f in run(["git", "ls-files", "pico", "pipeline", "flows"], REPO).stdout.split():
        (project / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, project / f)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "the flow code"], project)


def tokenized_base(base: Path, dest: Path) -> Path:
    """A copy of the tiny base with the skills tokenizer beside its weights (lm-eval's HF model needs one)."""
    from skills.tokenizer import build_tokenizer

    shutil.copytree(base, dest)
    build_tokenizer().save_pretrained(dest)
    return dest


def file_hashes(path: Path) -> dict[str, str]:
    from pico.writer import sha256_file

    return {f.name: sha256_file(f) for f in sorted(Path(path).iterdir()) if f.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120, proc=None) -> None:
    import urllib.request

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts), startable/stoppable."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [str(Path(PY).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"]
        self.log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(self.url + "/health", proc=self.proc)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.proc = None


def prefect_server(root: Path, services: bool = False):
    """A real `prefect server start` on 127.0.0.1: (its API URL, a function that stops it; also run at exit).
    ``services``: with the server's services (the triggers and actions that run Automations)."""
    home = root / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, **ENV, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_PORT": str(port)}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([str(Path(PY).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                             str(port), *([] if services else ["--no-services"])], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"

    def stop():
        try:  # send buffered flow/task logs before the server goes
            from prefect.logging.handlers import APILogHandler

            APILogHandler.flush()
        except Exception:
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(30)

    atexit.register(stop)
    wait_http(url + "/health", timeout=180, proc=proc)
    create_registry_limit(url)
    return url, stop


def create_registry_limit(url: str, name: str = "pico-registry") -> None:
    """The alias guard's global concurrency limit (limit 1), as a team creates it once on its Prefect server: the
    night's preflight refuses a configured server without it (pipeline.mlflow.registry_limit)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as c:
        c.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


def start_prefect_server(root: Path) -> str:
    """A real Prefect server without services, and this process pointed at it (PREFECT_API_URL, PREFECT_HOME)."""
    url, _ = prefect_server(root)
    os.environ["PREFECT_API_URL"], os.environ["PREFECT_HOME"] = url, str(root / "prefect-home")
    return url


def clone_project(template: Path, dest: Path, mlflow_db: Path) -> Path:
    shutil.copytree(template, dest, symlinks=True)
    remote = template.parent / f"{template.name}-remote"
    if remote.exists():
        shutil.copytree(remote, dest.parent / f"{dest.name}-remote")
        cfg = dest / ".dvc" / "config"
        cfg.write_text(cfg.read_text().replace(str(remote), str(dest.parent / f"{dest.name}-remote")))
    (dest / "build" / "mlflow").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mlflow_db, dest / "build" / "mlflow" / "mlflow.db")
    return dest


def set_params(project: Path, **changes) -> None:
    """Edit params.yaml like a user would: keys 'merge.lam', 'pipeline.gate.floors', ..."""
    path = project / "params.yaml"
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        node = data
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def client(project: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{project / 'build' / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def champion_version(project: Path, model: str = "merged-test") -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client(project).get_model_version_by_alias(model, "champion").version)
    except MlflowException:
        return None


def versions(project: Path, model: str = "merged-test") -> list[str]:
    return sorted(str(v.version) for v in client(project).search_model_versions(f"name = '{model}'"))


def reference_merge(project: Path, out: Path) -> dict:
    """What `pico merge` writes for the project's adapters and recipe."""
    import pico

    params = yaml.safe_load((project / "params.yaml").read_text())
    names = [e["name"] for e in yaml.safe_load((project / "adapters.yaml").read_text())["adapters"]]
    aset = pico.load_adapters([project / "adapters" / n for n in names])
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the pipeline's pipeline.calibrate.threads default
    try:
        pico.merge(aset, pico.Recipe.from_dict(params["merge"]), out, progress=False)
    finally:
        torch.set_num_threads(before)
    return file_hashes(out)


def nightly(project: Path, **overrides) -> dict:
    """Run the flow in-process (threads task runner unless overridden): its NightlyResult, as the JSON the main
    command's --json writes (a dict)."""
    from flows.nightly import nightly_merge
    from pipeline.records import NightlyResult

    night = nightly_merge(project=str(project), overrides=overrides or None)
    assert isinstance(night, NightlyResult)
    return night.model_dump()


def subprocess_env(prefect_url: str | None = None, **extra) -> dict:
    env = {**os.environ, **ENV, **extra}
    env["PATH"] = f"{Path(PY).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if prefect_url:
        env["PREFECT_API_URL"] = prefect_url
    return env


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def read_json(path: Path):
    return json.loads(Path(path).read_text())
