"""The registered version is an MLflow model: `models:/<name>@champion` loads through mlflow.pyfunc and generates with
the tiny skills suite's base plus the merged adapter (the base named, never copied), also on another host (its base
resolved from its dvc:// source and verified), `mlflow models serve` answers over HTTP on 127.0.0.1 (this environment
and MLflow's default one), the scores are metrics on the run and on the logged model, and an unchanged rerun uploads
nothing.

The night here runs the real skills suite through its `callable` alias (`suite: skills`) on a tiny trained suite."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import PY, client, free_port, make_project, nightly, run, set_env, subprocess_env, wait_http


def client_of(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


PROMPTS = ["12+34=", "rev abc=", "sort dcba="]


@pytest.fixture(scope="module")
def night(tmp_path_factory, mlflow_template, prefect_api):
    """A project of two tiny skills adapters (add, rev) on the tiny suite's base, after one night: v1 champion."""
    import shutil

    from skills.tiny import build_tiny_suite

    root = tmp_path_factory.mktemp("model")
    mp = pytest.MonkeyPatch()
    set_env(mp, root)
    suite = build_tiny_suite(root / "suite", adapters=["add", "rev"])
    project = make_project(root / "proj", [Path(p) for p in suite["adapters"].values()], Path(suite["base"]),
                           dvc_init=False)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["suite"] = {"paths": {"data": suite["data"]}}
    params["pipeline"]["eval"] = {"suite": "skills", "skills": ["add", "rev"], "limit": 4, "batch_size": 8,
                                  "baselines": False}
    params["pipeline"]["gate"] = {"floor": 0.0}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "build" / "mlflow").mkdir(parents=True)
    shutil.copyfile(mlflow_template, project / "build" / "mlflow" / "mlflow.db")
    summary = nightly(project)
    yield project, summary, Path(suite["base"])
    mp.undo()


def reference_generate(base_dir: Path, adapter_dir: Path, prompts: list[str], max_new_tokens: int,
                       stop: str) -> list[str]:
    """Greedy continuations of base + adapter through PEFT directly, encoded and cut as lm-eval does (no special
    tokens added, the reply up to the first stop string)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    out = []
    for p in prompts:
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        out.append(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).split(stop)[0])
    return out


def test_champion_loads_through_pyfunc_and_generates_with_the_merged_adapter(night, monkeypatch):
    import mlflow

    project, summary, base = night
    assert summary["decision"]["alias"] == "champion" and summary["registered"]["version"] == "1"
    assert set(summary["eval"]["scores"]) == {"add", "rev"}  # the skills suite ran, through the callable hook
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'build' / 'mlflow' / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/merged-test@champion")
    got = model.predict(PROMPTS)
    assert isinstance(got, list) and len(got) == len(PROMPTS) and all(isinstance(t, str) for t in got)
    store = Path(summary["store"])
    assert got == reference_generate(base, store, PROMPTS, 10, "\n")  # the suite's max_gen_toks and `until`

    # the version is a logged model: model code + the adapter files, the base named in its config, never copied
    c = client(project)
    v = c.get_model_version("merged-test", "1")
    assert v.source.startswith("models:/m-")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=v.source))
    files = {p.relative_to(local).as_posix(): p.stat().st_size for p in local.rglob("*") if p.is_file()}
    adapter = next(k for k in files if k.endswith("adapter_model.safetensors"))
    assert sum(files.values()) < files[adapter] + 64 * 1024
    assert not any(k.endswith(("model.safetensors", "pytorch_model.bin")) and k != adapter for k in files)
    config = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]["config"]
    assert config["base_model"] == str(base) and config["base_sha256"] == v.tags["base.sha256"]

    # scores are metrics on the logged model and on the run; the run's system tags come from MLflow's providers
    logged = c.get_logged_model(v.source[len("models:/"):])
    metrics = {m.key: m.value for m in logged.metrics}
    assert metrics["score.mean"] == pytest.approx(summary["eval"]["mean"])
    assert {f"score.{t}" for t in summary["eval"]["scores"]} <= set(metrics)
    run_ = c.get_run(summary["registered"]["run_id"])
    assert run_.data.metrics["score.mean"] == pytest.approx(summary["eval"]["mean"])
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert run_.data.tags["mlflow.source.git.commit"] == head and run_.data.tags["mlflow.user"]
    assert run_.data.tags["git.commit"] == head  # the lineage tags stay


def test_unchanged_rerun_uploads_nothing(night):
    project, first, _ = night
    c = client(project)
    root = project / "build" / "mlflow" / "artifacts"
    before = {p: p.stat().st_size for p in root.rglob("*") if p.is_file()}
    exp = first["experiment_id"]
    models_before = len(c.search_logged_models([exp]))
    again = nightly(project)
    assert again["registered"]["reused"] and again["registered"]["version"] == "1"
    assert again["decision"]["unchanged"]
    after = {p: p.stat().st_size for p in root.rglob("*") if p.is_file()}
    assert {p: after.get(p) for p in before} == before  # nothing replaced
    # no model, no adapter uploaded again: only this night's own small evidence records (the paired gate's inputs
    # and verdict), which an audit of the night needs even when the version is reused
    new = {p: n for p, n in after.items() if p not in before}
    assert {p.name for p in new} <= {"gate.json", "outcomes.json"} and sum(new.values()) < 64 * 1024, new
    assert len(c.search_logged_models([exp])) == models_before
    assert c.get_run(again["registered"]["run_id"]).data.tags["pico.reused_version"] == "1"



def test_a_reused_version_gets_the_search_tags_it_lacks_and_keeps_its_own(tmp_path, adapters, base, monkeypatch):
    """Issue 25 item 9: a night SIGKILLed right after registering its version never tagged it with its search and
    stderr record; the rerun reuses the version and adds what it lacks, never overwriting what the version's own
    night wrote."""
    from types import SimpleNamespace

    from pipeline.records import EvalResult, Evaluation, Registration
    from pipeline.settings import load_settings
    from pipeline.tracking import runs

    settings = load_settings(make_project(tmp_path / "p", adapters, base, dvc_init=False))
    written: dict[str, str] = {}
    own = {"eval.mean_stderr": "0.010000"}  # what the version's own night wrote before it died
    fake = SimpleNamespace(log_table=lambda *a, **k: None, log_dict=lambda *a, **k: None,
                           get_model_version=lambda name, version: SimpleNamespace(tags=dict(own)),
                           set_model_version_tag=lambda name, version, k, v: written.__setitem__(k, v))
    monkeypatch.setattr(runs, "client", lambda s: fake)
    merged = EvalResult(key="k", scores={"t1": 0.5, "t2": 0.7}, mean=0.6, seconds=0.0, label="merged",
                        stderr={"t1": 0.02, "t2": 0.03}, mean_stderr=0.02)
    ev = Evaluation(benchmark={}, fingerprint="f" * 64, merged=merged)
    reg = Registration(run_id="r", experiment_id="e", model=settings.model_name, version="1", reused=True,
                       artifact_uri="x")
    runs.record_search_and_gate(settings, reg, ev, None)
    assert written == {"eval.stderr": json.dumps({"t1": 0.02, "t2": 0.03}, sort_keys=True)}
    runs.record_search_and_gate(settings, reg.model_copy(update={"reused": False}), ev, None)  # a new version: all
    assert written["eval.mean_stderr"] == "0.020000"


LOAD_ELSEWHERE = """
import json, os, shutil, sys
for name in ("pico", "pipeline", "flows", "skills"):  # the version must load with none of the project's code
    sys.modules[name] = None
import mlflow
out = {"predictions": mlflow.pyfunc.load_model("models:/merged-test@champion").predict(json.loads(sys.argv[1]))}
cached = os.path.join(os.environ["PICO_BASE_CACHE"], os.listdir(os.environ["PICO_BASE_CACHE"])[0])
tampered = shutil.copytree(cached, sys.argv[2])
with open(os.path.join(tampered, "config.json"), "a") as f:
    f.write(" ")
os.environ["PICO_BASE_MODEL"] = tampered
try:
    mlflow.pyfunc.load_model("models:/merged-test@champion")
except Exception as exc:
    out["tampered"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def dvc_base_night(night, tmp_path_factory, mlflow_template):
    """A night of a git + DVC project whose base is DVC-tracked (``dvc://base``, pushed to a folder remote), with its
    MLflow store outside the project: the tiny suite's base (it has a tokenizer) and two of its adapters."""
    import shutil

    from pipeline_helpers import dvc

    first, _, base = night
    root = tmp_path_factory.mktemp("dvcbase")
    mp = pytest.MonkeyPatch()
    set_env(mp, root)
    store = root / "mlflow"
    store.mkdir()
    shutil.copyfile(mlflow_template, store / "mlflow.db")
    project = make_project(root / "proj", [first / "adapters" / n for n in ("add", "rev")], base, pipeline={
        "eval": {"suite": "callable", "callable": "scorer:score", "baselines": False}, "dvc": {"enabled": False},
        "mlflow": {"experiment": "test-nightly", "model_name": "merged-test",
                   "tracking_uri": f"sqlite:///{store / 'mlflow.db'}", "artifact_root": str(store / "artifacts")}})
    shutil.copytree(base, project / "base")
    dvc(project, "add", "-q", "base")
    dvc(project, "push", "-q")
    catalog = yaml.safe_load((project / "adapters.yaml").read_text())
    catalog["base"] = {"name": "base", "source": "dvc://base"}
    (project / "adapters.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "the base, DVC-tracked"], project)
    summary = nightly(project)
    yield project, summary, store
    mp.undo()


def test_the_champion_loads_on_another_host_from_its_dvc_source(dvc_base_night, tmp_path, monkeypatch):
    """The night's checkout is gone (moved), so is its base directory; in a fresh process started in a clone of the
    project at another path, with only the MLflow URI (and an empty base cache), the champion resolves its base
    through ``dvc://base`` at the night's commit (the clone's DVC remote), verifies its digest and generates what it
    generated on the night's host; a tampered copy of the base is refused, naming both digests."""
    import mlflow

    project, summary, store = dvc_base_night
    assert summary["decision"]["alias"] == "champion"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    here = mlflow.pyfunc.load_model("models:/merged-test@champion").predict(PROMPTS)  # on the night's host
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=client_of(uri).get_model_version("merged-test", summary["registered"]["version"]).source))
    config = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]["config"]
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert (config["base_uri"], config["base_git_commit"], config["base_project"]) == ("dvc://base", head, str(project))
    assert config["base_model"] == str(project / "base") and config["base_git_url"] is None
    reqs = (local / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("dvc==") for r in reqs) and any(r.startswith("torch==") for r in reqs)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    project.rename(tmp_path / "moved")  # the night's host: gone
    try:
        env = subprocess_env(None, MLFLOW_TRACKING_URI=uri, PICO_BASE_CACHE=str(tmp_path / "cache"))
        env.pop("PYTHONPATH")
        env.pop("PICO_BASE_MODEL", None)
        proc = subprocess.run([PY, "-c", LOAD_ELSEWHERE, json.dumps(PROMPTS), str(tmp_path / "tampered")], cwd=clone,
                              env=env, capture_output=True, text=True, timeout=600)
    finally:
        (tmp_path / "moved").rename(project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["predictions"] == here and all(isinstance(t, str) for t in here)
    assert (tmp_path / "cache" / config["base_sha256"]).is_dir()  # fetched through DVC, verified, cached
    assert "BaseModelError" in out["tampered"] and f"expected {config['base_sha256']}" in out["tampered"]


@pytest.mark.slow
@pytest.mark.parametrize("env_manager", ["local", "default"])
def test_served_champion_answers_over_http(night, tmp_path, monkeypatch, env_manager):
    """`mlflow models serve` of the champion, in this environment (``--env-manager local``) and with MLflow's default
    environment manager (virtualenv: a fresh Python environment from the version's pinned requirements, built in a
    temporary MLFLOW_ENV_ROOT, packages from this machine's pip configuration)."""
    import mlflow

    project, _, _ = night
    uri = f"sqlite:///{project / 'build' / 'mlflow' / 'mlflow.db'}"
    port = free_port()
    extra = {"MLFLOW_ENV_ROOT": str(tmp_path / "envs")} if env_manager == "default" else {}
    env = subprocess_env(None, MLFLOW_TRACKING_URI=uri, **extra)
    log = open(tmp_path / "serve.log", "wb")
    flags = ["--env-manager", "local"] if env_manager == "local" else []  # default: virtualenv
    proc = subprocess.Popen([str(Path(PY).parent / "mlflow"), "models", "serve", "-m", "models:/merged-test@champion",
                             *flags, "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=300 if env_manager == "local" else 1500, proc=proc)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                     data=json.dumps({"inputs": PROMPTS}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            answer = json.loads(resp.read())
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert answer["predictions"] == mlflow.pyfunc.load_model("models:/merged-test@champion").predict(PROMPTS)
    if env_manager == "default":  # it did serve from its own environment, not this one
        assert list((tmp_path / "envs").rglob("mlflow-*/bin/python"))


@pytest.fixture(scope="module")
def instruct_night(tmp_path_factory, mlflow_template, prefect_api):
    """A night on the SmolLM2 suite's miniature (a chat-templated instruct model, benchmarked with lm-eval's
    ``apply_chat_template``): the repository's smollm2 settings pointed at the miniature; v1 champion."""
    import shutil

    from skills.smollm2.tiny import build_tiny, tiny_params

    root = tmp_path_factory.mktemp("instruct")
    mp = pytest.MonkeyPatch()
    set_env(mp, root)
    mini = build_tiny(root / "mini")
    project = make_project(root / "proj", [Path(mini["adapters"][n]) for n in ("math", "json")], Path(mini["base"]),
                           dvc_init=False)
    params = yaml.safe_load((project / "params.yaml").read_text())
    repo = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["smollm2"] = repo["smollm2"]
    params["smollm2"]["paths"].update(data=mini["data"], base=mini["base"])
    params["smollm2"]["eval"] = tiny_params()["eval"]
    params["pipeline"]["eval"] = {"suite": "callable", "callable": "skills.smollm2.scorer:suite",
                                  "skills": ["math", "json"], "limit": 4, "baselines": False}
    params["pipeline"]["gate"] = {"floor": 0.0}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "build" / "mlflow").mkdir(parents=True)
    shutil.copyfile(mlflow_template, project / "build" / "mlflow" / "mlflow.db")
    summary = nightly(project)
    yield project, summary, mini
    mp.undo()


def test_instruct_champion_serves_the_way_it_was_benchmarked(instruct_night, monkeypatch):
    """Issue 21: the champion of an instruct-model night, loaded through mlflow.pyfunc, gives the reply the
    benchmark (lm-eval, chat template, max_gen_toks, `until`) scored for the same item; its config records those
    settings; chat requests and per-request params work; it carries an input example."""
    import mlflow

    from skills.smollm2.data import read_jsonl
    from skills.smollm2.evaluate import evaluate
    from skills.smollm2.lmeval import STOP, task_name
    from skills.smollm2.tiny import tiny_params

    project, summary, mini = instruct_night
    assert summary["decision"]["alias"] == "champion"
    store = Path(summary["store"])
    _, res = evaluate(mini["base"], store, ["math"], "test", 2, data_dir=mini["data"],
                      tasks_dir=project / "build" / "ref_tasks", settings=tiny_params()["eval"], return_details=True)
    samples = res["samples"][task_name("math", "test")]
    prompts = [s["doc"]["prompt"] for s in samples]
    scored = [s["resps"][0][0] for s in samples]  # lm-eval's raw generation, cut at `until`
    assert prompts == [r["prompt"] for r in read_jsonl(Path(mini["data"]) / "math" / "test.jsonl")[:2]]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'build' / 'mlflow' / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/merged-test@champion")
    assert model.predict(prompts) == scored

    # the config records how it was benchmarked; the signature's param defaults are those settings
    c = client(project)
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=c.get_model_version("merged-test", summary["registered"]["version"]).source))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    config = mlmodel["flavors"]["python_function"]["config"]
    from transformers import AutoTokenizer

    assert config["apply_chat_template"] is True and config["stop"] == STOP
    assert config["max_new_tokens"] == tiny_params()["eval"]["max_gen_toks"]
    assert config["chat_template"] == AutoTokenizer.from_pretrained(mini["base"]).chat_template
    params = {p["name"]: p["default"] for p in json.loads(mlmodel["signature"]["params"])}
    assert params == {"max_new_tokens": config["max_new_tokens"], "stop": STOP, "temperature": 0.0}
    assert (local / mlmodel["saved_input_example_info"]["artifact_path"]).is_file()

    # MLflow's chat request schema: the same reply as the plain prompt (the prompt is the user's turn)
    chat = model.predict({"messages": [{"role": "user", "content": prompts[0]}]})
    assert chat[0]["choices"][0]["message"] == {"role": "assistant", "content": scored[0]}
    # per-request generation params: fewer tokens give a prefix of the full reply
    short = model.predict(prompts[:1], params={"max_new_tokens": 1})[0]
    assert len(short) <= 1 and scored[0].startswith(short)
    two = model.predict([{"messages": [{"role": "user", "content": prompts[0]}], "max_tokens": 2}])
    assert len(two[0]["choices"][0]["message"]["content"]) <= 2
