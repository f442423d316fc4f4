"""The nightly merge: fetch -> validate -> calibrate (mapped over layer groups) -> merge -> benchmark -> version (DVC)
-> register (MLflow) -> promote.

Run it (builds the skills suite with ``dvc repro`` first if it is missing, then prints the leaderboard, the promotion
decision and where to look)::

    python -m flows.nightly                   # embedded default: SQLite MLflow, Prefect ephemeral API, DVC local
    MLFLOW_TRACKING_URI=http://host:5000 python -m flows.nightly
    python -m flows.nightly --set merge.method=ties --set merge.params.density=0.5

The schedule lives in ``flows/deploy.py`` (``python -m flows.deploy``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tasks.config import quiet_env

quiet_env()

import torch  # noqa: E402
from prefect import flow, get_run_logger, unmapped  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from prefect import runtime as prefect_runtime  # noqa: E402
from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from flows import artifacts as artifacts_mod  # noqa: E402
from flows.search import search_flow  # noqa: E402
from tasks import benchmark, gate, merging, notify, registry, scoring, search, steps, tracking  # noqa: E402
from tasks import candidates as cand_mod  # noqa: E402
from tasks.config import Settings, digest, load_settings  # noqa: E402


def make_task_runner(settings: Settings):
    """The task runner of the calibrate/merge map: threads (default) or Dask (prefect-dask)."""
    cfg = settings.pipeline["task_runner"]
    if cfg["kind"] == "threads":
        return ThreadPoolTaskRunner(max_workers=int(cfg["max_workers"]))
    if cfg["kind"] != "dask":
        raise ValueError(f"pipeline.task_runner.kind must be threads or dask, got {cfg['kind']!r}")
    from prefect_dask import DaskTaskRunner

    if cfg["address"]:
        return DaskTaskRunner(address=cfg["address"])
    kwargs = {"n_workers": int(cfg["n_workers"]), "threads_per_worker": 1, "processes": bool(cfg["processes"]),
              "dashboard_address": None}
    if cfg["gpu_resource"]:
        kwargs["resources"] = {cfg["gpu_resource"]: 1}
    _share_api_with_workers()
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


def _share_api_with_workers() -> None:
    """Point local Dask worker processes at this process's Prefect API (else each starts its own, ~15-30 s)."""
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        os.environ["PREFECT_API_URL"] = str(url)
        return
    with contextlib.suppress(Exception):
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()
        os.environ["PREFECT_API_URL"] = server.api_url


@flow(name="calibrate-and-merge", log_prints=True)
def calibrate_and_merge(settings: Settings, aset, groups: list[list[str]], key: str, fetched: list[dict]):
    """Calibrate each group of layers (mapped over the task runner's workers), merge each, write one adapter."""
    recipe = settings.recipe_obj()
    cfg = settings.pipeline["task_runner"]
    annotate = contextlib.nullcontext()
    if cfg["kind"] == "dask" and cfg["gpu_resource"]:
        import dask

        annotate = dask.annotate(resources={cfg["gpu_resource"]: 1})  # calibration runs on GPU workers
    threads = settings.pipeline["calibrate"]["threads"]
    before = torch.get_num_threads()
    try:
        with annotate:
            cals = steps.calibrate.map(unmapped(aset), groups, unmapped(recipe), unmapped(settings.pipeline["device"]),
                                       unmapped(threads))
            merged = steps.merge_group.map(cals, unmapped(recipe), unmapped(threads))
        results = [f.result() for f in merged]
    finally:
        torch.set_num_threads(before)  # (the pool's threads pinned it; the rest of the run gets it back)
    return steps.write(settings, key, aset, recipe, groups, results, fetched)


def git_info(project: Path) -> dict:
    def git(*args):
        proc = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {"commit": commit, "dirty": dirty}


@flow(name="nightly-merge", log_prints=True, on_failure=[notify.on_failure_hook], on_crashed=[notify.on_failure_hook])
def nightly_merge(project: str = ".", params: str = "params.yaml", overrides: dict | None = None) -> dict:
    """Choose the recipe on validation (when params.yaml's merge: is a search space), merge the catalog's adapters,
    benchmark on the test split, version, register and promote through the statistical gate."""
    log = get_run_logger()
    t = {"start": time.perf_counter()}
    marks = []

    def mark(step):
        marks.append((step, time.perf_counter()))

    settings = load_settings(project, params, overrides)
    if settings.pipeline["eval"]["suite"] != "callable" and not benchmark._PREWARM:
        benchmark.prewarm(settings)
    preflight = steps.mlflow_preflight.submit(settings)
    fetch = steps.fetch_adapter.with_options(retries=int(settings.pipeline["fetch"]["retries"]),
                                             retry_delay_seconds=float(settings.pipeline["fetch"]["retry_delay_s"]))
    futures = [fetch.submit(settings, e) for e in settings.catalog.adapters]
    base_f = steps.fetch_base.submit(settings)
    baseline_fs = [fetch.submit(settings, e) for e in settings.catalog.baselines]
    fetched = [f.result() for f in futures]
    mark("fetch")

    base = benchmark.resolve_base(settings, base_f.result(), fetched[0]["path"])
    space = search.expand(settings.recipe)
    raw_recipe, found = settings.recipe, None
    if not space.single:  # merge: is a search space: the validation argmax becomes the night's recipe
        log.info("recipe search: %s", space.describe())
        runner = make_task_runner(settings)
        found = search_flow.with_options(task_runner=runner)(
            settings, [dataclasses.asdict(c) for c in space.candidates], merging.load_set(fetched), fetched, base)
        settings = dataclasses.replace(settings, recipe=found["chosen"]["recipe"])
        mark("search")

    aset, groups, key, cached = steps.validate(settings, fetched)
    mark("validate")
    fingerprint_obj = benchmark.benchmark_fingerprint(settings)
    fingerprint = digest(fingerprint_obj)

    runner_name = None
    if cached is not None:
        store, manifest = str(merging.store_dir(settings, key)), cached
        merging.check_sources(manifest, fetched)
        log.info("merge cache hit: %s (same sources, recipe and pico version)", store)
    else:
        runner = make_task_runner(settings)
        runner_name = type(runner).__name__
        store, manifest = calibrate_and_merge.with_options(task_runner=runner)(settings, aset, groups, key, fetched)
    mark("calibrate_merge")

    merged_eval = test_benchmark(settings, base, store, "merged")  # the only test-split read of a new merge
    mark("benchmark")
    baseline_runs = []  # after the merge, never beside it (evaluation changes torch's thread count)
    if settings.pipeline["eval"]["baselines"]:  # cached by content: free after the first night
        baseline_runs.append(test_benchmark.submit(settings, base, None, "base"))
        baseline_runs += [test_benchmark.submit(settings, base, b.result()["path"], b.result()["name"])
                          for b in baseline_fs]
    experiment = preflight.result()  # raises RegistryUnavailable: nothing below runs, no alias moves
    champ = steps.champion(settings, base, fingerprint)
    champ_eval = champion_outcomes(settings, base, champ) if champ is not None else None
    baselines = [_compact(f.result()) for f in baseline_runs]
    mark("baselines_champion")
    verdict = statistical_gate(settings, merged_eval, champ, champ_eval)

    lineage = {
        "pico_version": manifest["pico_version"], "merge_key": key, "recipe": manifest["recipe"],
        "recipe_hash": manifest["recipe_hash"],
        "sources": [{k: f[k] for k in ("name", "uri", "path", "revision", "sha256", "files", "dvc")}
                    for f in fetched],
        "base": {k: base[k] for k in ("name", "uri", "revision", "sha256")},
        "output": {"files": manifest["output"]["files"]},
        "git": git_info(settings.project),
        "eval": {"fingerprint": fingerprint, "benchmark": fingerprint_obj, "scores": merged_eval["scores"],
                 "mean": merged_eval["mean"]},
        "project": str(settings.project),
    }
    dvc = steps.version_dvc(settings, store, merged_eval["scores"],
                            dvc_consistent(settings, project, params, raw_recipe))
    mark("version")
    if dvc["enabled"]:
        lineage["output"]["dvc"] = {"path": dvc["path"], "md5": dvc["md5"], "pushed": dvc["pushed"]}
        lineage["dvc_lock"] = dvc["lock"]

    timings = _durations(t["start"], marks)
    params_logged = {"merge": settings.recipe, "recipe_hash": manifest["recipe_hash"],
                     "catalog": [e.to_dict() for e in settings.catalog.adapters],
                     "eval": settings.pipeline["eval"], "gate": settings.pipeline["gate"],
                     "task_runner": settings.pipeline["task_runner"]["kind"], "dtype": settings.pipeline["dtype"],
                     "merge_key": key}
    metrics = {f"score.{k}": v for k, v in merged_eval["scores"].items()}
    metrics["score.mean"] = merged_eval["mean"]
    metrics.update({f"score.{k}_stderr": v for k, v in (merged_eval.get("stderr") or {}).items() if v == v})
    if merged_eval.get("mean_stderr") is not None:
        metrics["score.mean_stderr"] = merged_eval["mean_stderr"]
    if found is not None:
        metrics.update({"search.candidates": len(found["records"]), "search.cached": found["cached"],
                        "search.validation_mean": found["chosen"]["validation"]["mean"]})
        if found["margin"] is not None:
            metrics["search.runner_up_margin"] = found["margin"]
        params_logged["search"] = raw_recipe
    if verdict is not None and verdict.get("comparison"):
        metrics.update({"gate.gain": verdict["comparison"]["gain"], "gate.p_gain": verdict["comparison"]["p_gain"],
                        "gate.gain_stderr": verdict["comparison"]["gain_stderr"]})
    for b in baselines:
        metrics[f"baseline.{b['label']}.mean"] = b["mean"]
    if champ is not None:
        metrics["champion.mean"] = champ["mean"]
    metrics.update({f"time.{k}_s": v for k, v in timings.items()})
    plot = merging.plot_diagnostics(manifest, settings.work / "plots" / f"{key[:16]}.png")
    artifacts = {"merge_manifest.json": Path(store) / "merge_manifest.json",
                 "diagnostics.json": merging.diagnostics(manifest), "plots/diagnostics.png": plot,
                 "eval.json": {"merged": _compact(merged_eval), "baselines": baselines, "champion": champ},
                 "lineage.json": lineage, "config/params.yaml": settings.params_path,
                 "config/catalog.yaml": settings.catalog.path}
    reg = steps.register(settings, lineage, store, params_logged, metrics, artifacts)
    record_search_and_gate(settings, reg, found, merged_eval, champ, champ_eval, verdict)
    mark("register")
    decided = (verdict["promote"], verdict["reasons"]) if verdict is not None else None
    decision = steps.promote(settings, reg["version"], merged_eval["scores"], fingerprint, champ, decided)
    mark("promote")
    timings = _durations(t["start"], marks)
    summary = {"project": str(settings.project), "merge_key": key, "fingerprint": fingerprint, "store": store,
               "cached_merge": cached is not None, "runner": runner_name,
               "eval": _compact(merged_eval), "baselines": baselines, "champion_before": champ, "registered": reg,
               "decision": decision, "dvc": dvc, "experiment_id": experiment, "timings": timings,
               "tracking_uri": settings.tracking_uri, "model": settings.pipeline["mlflow"]["model_name"],
               "recipe_label": search.label(settings.recipe_obj()), "gate": verdict,
               "mlflow_url": tracking.run_url(settings, reg["experiment_id"], reg["run_id"]),
               "flow_run_id": str(prefect_runtime.flow_run.id),
               "search": None if found is None else {
                   "chosen": found["chosen"]["label"], "why": found["why"], "margin": found["margin"],
                   "runner_up": found["runner_up"]["label"] if found["runner_up"] else None,
                   "candidates": len(found["records"]), "cached": found["cached"], "seconds": found["seconds"],
                   "skipped": space.skipped,
                   "leaderboard": cand_mod.leaderboard_rows(found["records"], found["chosen"]["key"])}}
    board = registry.leaderboard(settings, limit=8, fingerprint=fingerprint)
    summary["artifacts"] = artifacts_mod.publish(summary, board, summary["search"] and summary["search"]["leaderboard"])
    if decision["promoted"] and not decision["unchanged"]:
        notify.send(settings.pipeline["notify"], "promotion", *notify.promotion_message(summary))
    return summary


def _compact(rec: dict) -> dict:
    """An evaluation record without its per-sample outcomes (those go to the MLflow table)."""
    return {k: v for k, v in rec.items() if k != "outcomes"}


@task(name="benchmark-test", cache_policy=NO_CACHE, task_run_name="benchmark-test-{label}")
def test_benchmark(settings: Settings, base: dict, adapter_dir: str | None, label: str) -> dict:
    """The test split with per-sample outcomes (lm-eval log_samples), cached by content."""
    rec = scoring.score_test(settings, base, adapter_dir, label)
    get_run_logger().info("%s: test mean %.4f%s %s%s", label, rec["mean"],
                          f" ± {rec['mean_stderr']:.4f}" if rec.get("mean_stderr") is not None else "",
                          rec["scores"], " (cached)" if rec["cached"] else f" ({rec['seconds']} s)")
    return rec


@task(name="champion-outcomes", cache_policy=NO_CACHE)
def champion_outcomes(settings: Settings, base: dict, champ: dict) -> dict | None:
    """The champion's per-sample test outcomes: its merged adapter from the local store (same merge key, verified)
    or from MLflow, scored on this benchmark (a cache hit when it was scored here before)."""
    path = None
    if champ.get("merge_key"):
        local = merging.store_dir(settings, champ["merge_key"])
        if merging.verify_dir(local) is not None:
            path = local
    if path is None:
        dest = settings.work / "registry-cache" / f"v{champ['version']}-{(champ['merge_key'] or 'x')[:12]}"
        path = registry.download_version(settings, champ["source"], dest)
    return scoring.score_test(settings, base, str(path), f"champion v{champ['version']}")


@task(name="gate", cache_policy=NO_CACHE)
def statistical_gate(settings: Settings, merged_eval: dict, champ: dict | None, champ_eval: dict | None):
    """The paired test (tasks/gate.py) when per-sample outcomes exist; None: the scorer gives plain scores, and the
    promotion step compares means as before."""
    if not merged_eval.get("outcomes") or (champ is not None and not (champ_eval or {}).get("outcomes")):
        get_run_logger().warning("no per-sample outcomes from the scorer: the gate compares means (no test)")
        return None
    d = gate.decide(merged_eval["outcomes"], champ_eval["outcomes"] if champ is not None else None,
                    settings.pipeline["gate"], champion_name=f"the champion v{champ['version']}" if champ else "")
    get_run_logger().info("gate: %s: %s", "promote" if d.promote else "refuse", "; ".join(d.reasons))
    return d.to_dict()


@task(name="record-search-and-gate", cache_policy=NO_CACHE)
def record_search_and_gate(settings: Settings, reg: dict, found: dict | None, merged_eval: dict, champ: dict | None,
                           champ_eval: dict | None, verdict: dict | None) -> None:
    """Child runs per candidate, the outcomes table and gate statistics on the night's run, tags on the version."""
    if found is not None:
        tracking.log_candidates(settings, reg["run_id"], found)
    models = {"merged": merged_eval}
    if champ_eval is not None:
        models[f"champion v{champ['version']}"] = champ_eval
    tracking.log_night(settings, reg["run_id"], outcomes_table=scoring.outcomes_table(models),
                       search=found, gate=verdict)
    tags = tracking.search_tags(found, merged_eval) if found is not None else {}
    if found is None and merged_eval.get("mean_stderr") is not None:
        tags = {"eval.mean_stderr": f"{merged_eval['mean_stderr']:.6f}"}
    if tags and not reg["reused"]:
        tracking.tag_version(settings, reg["version"], tags)


def dvc_consistent(settings: Settings, project: str, params: str, recipe: dict | None = None) -> str | None:
    """Why dvc.lock must not record this run (None: it may): overrides of what the DVC stages read. ``recipe``: the
    merge: section as read (a search space; settings.recipe then holds the chosen recipe)."""
    if settings.params_path != settings.project / "params.yaml":
        return f"the run read {settings.params_path.name}, but the DVC stages read params.yaml"
    on_disk = load_settings(project, params)
    if on_disk.recipe != (settings.recipe if recipe is None else recipe):
        return "the recipe was overridden (not what params.yaml says)"
    for key in ("catalog", "dtype", "calibrate", "eval", "paths", "search"):
        if on_disk.pipeline[key] != settings.pipeline[key]:
            return f"pipeline.{key} was overridden (not what params.yaml says)"
    return None


def _durations(start: float, marks: list[tuple[str, float]]) -> dict[str, float]:
    out, prev = {}, start
    for step, at in marks:
        out[step] = round(at - prev, 2)
        prev = at
    out["total"] = round(prev - start, 2)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The main command


def parse_set(items: list[str]) -> dict:
    """--set a.b.c=value (YAML value) -> nested overrides; `merge.` keys go to the recipe."""
    import yaml

    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def ensure_suite(settings: Settings) -> None:
    """Build (with `dvc repro`) the DVC stages that produce the catalog's dvc:// sources, when any is missing."""
    from tasks import dvcio

    wanted = [e.source[len("dvc://"):].partition("@")[0] for e in
              settings.catalog.adapters + settings.catalog.baselines + ([settings.catalog.base]
                                                                          if settings.catalog.base else [])
              if e.source.startswith("dvc://") and "@" not in e.source]
    need = [p for p in wanted if not (settings.project / p).exists()]
    if settings.pipeline["eval"]["suite"] == "skills" and not benchmark.suite_data_dir(settings).is_dir():
        need.append(str(benchmark.suite_data_dir(settings).relative_to(settings.project)))
    if not need:
        return
    listing = dvcio.dvc_cmd(settings.project, "stage", "list")
    stages = set()
    for line in listing.splitlines():
        name, _, rest = line.partition(" ")
        outs = [o.strip() for o in rest.strip().removeprefix("Outputs").split(",") if o.strip()]
        for p in need:
            if any(p == o or p.startswith(o.rstrip("/") + "/") for o in outs):
                stages.add(name)
    if not stages:
        raise SystemExit(f"missing {', '.join(need)} and no DVC stage produces it; build the suite first")
    print(f"building the skills suite: dvc repro {' '.join(sorted(stages))} (one-off, minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "dvc", "repro", *sorted(stages)], cwd=settings.project, check=True,
                   env=dvcio.venv_env())


def warm_up(settings: Settings):
    """Start the run's fixed costs side by side instead of one after the other: Prefect's ephemeral API (a
    subprocess, ~15 s here), the lm-eval import (~12 s) and opening the MLflow store. Returns the thread starting the
    API (join it before the flow runs); the others finish on their own (their steps wait for them or redo them)."""
    import threading

    if settings.pipeline["eval"]["suite"] != "callable" and not benchmark._PREWARM:
        benchmark.prewarm(settings)

    def _mlflow():
        with contextlib.suppress(Exception):  # the flow's pre-flight step reports problems
            from tasks import registry

            registry.preflight(settings)

    threading.Thread(target=_mlflow, name="prewarm-mlflow", daemon=True).start()
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    api = threading.Thread(target=SubprocessASGIServer().start, name="prewarm-prefect-api", daemon=True)
    api.start()
    return api


def report(summary: dict, settings: Settings) -> str:
    from tasks import registry

    lines = []
    ev = summary["eval"]
    tasks_ = list(ev["scores"])
    head = f"{'':<30}" + "".join(f"{t[:9]:>10}" for t in tasks_) + f"{'mean':>10}{'± se':>8}"
    bench = settings.eval_config()
    what = {"skills": f"skills suite, {bench['split']} split", "lm-eval": "lm-eval: " + ", ".join(bench["tasks"]),
            "callable": f"scorer {bench['callable']}"}.get(bench["suite"], bench["suite"])
    what += f", limit {bench['limit']}" if bench["limit"] else ""
    lines += ["", f"Leaderboard ({what}; registered versions by mean, then baselines)", head]

    def row(label, scores, mean, se=None):
        return (f"{label:<30}" + "".join(f"{scores.get(t, float('nan')):>10.3f}" for t in tasks_) + f"{mean:>10.3f}"
                + (f"{float(se):>8.3f}" if se not in (None, "", "none") else ""))

    for r in registry.leaderboard(settings, limit=8, fingerprint=summary["fingerprint"]):
        recipe = r["recipe"]
        tag = f"v{r['version']} {recipe.get('method', '?')}/{recipe.get('calibrate', '?')}"
        if r["aliases"]:
            tag += " [" + ",".join(sorted(r["aliases"])) + "]"
        if r["version"] == summary["registered"]["version"]:
            tag += " *"
        lines.append(row(tag, r["scores"], r["mean"], r.get("mean_stderr")))
    champ = summary.get("champion_before")
    shown = {r["version"] for r in registry.leaderboard(settings, limit=8, fingerprint=summary["fingerprint"])}
    if champ and champ["version"] not in shown and champ.get("scores"):
        lines.append(row(f"v{champ['version']} [champion before]", champ["scores"], champ["mean"]))
    for b in summary["baselines"]:
        lines.append(row(f"({b['label']})", b["scores"], b["mean"], b.get("mean_stderr")))
    lines.append("* this run; (..) baselines, not registered")
    s = summary.get("search")
    if s:
        lines += ["", f"Recipe search ({s['candidates']} candidates, {s['cached']} cached, {s['seconds']} s; chosen on "
                      "the validation split, the test split read only for the chosen merge):"]
        for r in s["leaderboard"][:5]:
            lines.append(f"  {r['rank']:>2}. {r['candidate']:<44} val mean {r['val mean']}"
                         + ("   <- chosen" if r["chosen"] else ""))
        lines.append(f"  Chosen: {s['chosen']} ({s['why']})")
    d = summary["decision"]
    verdict = ("PROMOTED to champion" if d["promoted"] and not d["unchanged"] else
               "champion unchanged" if d["unchanged"] else "NOT promoted: set as candidate")
    lines += ["", f"Decision: {summary['model']} v{d['version']} {verdict}: " + "; ".join(d["reasons"])]
    uri = summary["tracking_uri"]
    ui = f"mlflow ui --backend-store-uri {uri}" if not uri.startswith("http") else uri
    tm = summary["timings"]
    lines += [
        f"Timings (s): " + ", ".join(f"{k} {v}" for k, v in tm.items()),
        "",
        "Where to look:",
        f"  MLflow UI:  {ui}   (run {summary['registered']['run_id']})",
        f"  Lineage:    pico lineage {summary['model']} {d['version']}   (or: champion)",
        f"  Merged:     {summary['store']}" + (f"  (DVC: {summary['dvc']['path']} md5 {summary['dvc']['md5']}, "
                                                 "dvc.lock)" if summary["dvc"].get("enabled") else ""),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.nightly", description=__doc__.splitlines()[0])
    ap.add_argument("--project", default=".", help="project directory holding params.yaml (default: .)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a pipeline:/merge: key, e.g. --set merge.method=ties --set eval.limit=50")
    ap.add_argument("--no-build", action="store_true", help="do not build missing suite outputs with dvc repro")
    ap.add_argument("--json", type=Path, help="also write the run summary as JSON here")
    args = ap.parse_args(argv)
    overrides = parse_set(args.set)
    try:
        settings = load_settings(args.project, args.params, overrides)
        if not args.no_build:
            ensure_suite(settings)
        t0 = time.perf_counter()
        api = warm_up(settings)
        if api is not None:
            api.join()
        summary = nightly_merge(project=str(settings.project), params=args.params, overrides=overrides)
        summary["timings"]["wall_with_prefect_start"] = round(time.perf_counter() - t0, 2)
    except Exception as exc:  # one clear line; Prefect has logged the traceback of the failed task
        print(f"\nnightly-merge FAILED: {type(exc).__name__}: {exc}\nNo alias was moved.", file=sys.stderr)
        return 1
    print(report(summary, settings))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
