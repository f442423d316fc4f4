"""Validate, plan, calibrate/merge per group, write: the merge as steps a flow can map over workers, and
:func:`merge_into_store`, the one sequence the search, the DVC stage and the flow all run.

The merged adapter lives in a content-addressed store, ``<work>/store/<key>``, where the key hashes everything that
decides its bytes (the sources' sha256 in order, the recipe hash, pico's version, the dtype).  A rerun with unchanged
inputs finds it there (verified against the manifest's file hashes) and skips calibration and merge entirely.
Writes go through pico's streaming atomic writer: a crash leaves no partial output, and a rerun completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

import pico
from pico.merge import check_weights, plan_batches, write_merged
from pico.output import MANIFEST_NAME, natural_key
from pico.tara import TaraConfig, tara_merge
from pico.writer import AtomicDir, json_digest, sha256_file

from .errors import PipelineError
from .files import project_lock
from .records import Candidate, CandidateRecord, FetchedSource, MergeResult
from .render import recipe_summary
from .settings import Settings


def load_set(fetched: list[FetchedSource]) -> pico.AdapterSet:
    """Validate the fetched adapters together (pico's checks); sources carry their catalog names and URIs."""
    uris: list[str | Path] = [f.uri if f.uri.startswith("hf://") else f.path for f in fetched]
    aset = pico.load_adapters(uris)
    for adapter, f in zip(aset.adapters, fetched):
        adapter.source.name, adapter.source.uri, adapter.source.revision = f.name, f.uri, f.revision
    return aset


_CODE_DIGEST: str | None = None


def pico_code_digest() -> str:
    """sha256 over pico's source files: a code change (even without a version bump) never reuses a stale merge."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        root = Path(pico.__file__).parent
        _CODE_DIGEST = json_digest({p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*.py"))})
    return _CODE_DIGEST


def device_class(settings: Settings) -> str:
    """Where the merge math will run: "cpu" or "cuda". CPU and GPU kernels round differently, so the class is part
    of the merge key (bytes are identical across runners and thread counts within a class, not across classes)."""
    device, runner = settings.pipeline.device, settings.pipeline.task_runner
    if device != "auto":
        return "cuda" if device.startswith("cuda") else "cpu"
    if runner.kind == "dask" and runner.gpu_resource:
        return "cuda"
    if runner.kind == "dask" and runner.address:
        return "dask-auto"  # the remote workers decide
    return "cuda" if torch.cuda.is_available() else "cpu"


def merge_key(fetched: list[FetchedSource], recipe: pico.Recipe, dtype: str, device: str = "cpu") -> str:
    """Everything that decides the merged bytes: the sources' bytes in order, the recipe, pico's code, the dtype,
    the device class."""
    return json_digest({"sources": [f.sha256 for f in fetched], "recipe": recipe.hash(), "pico": pico.__version__,
                   "pico_code": pico_code_digest(), "dtype": dtype, "device": device})


def store_dir(settings: Settings, key: str) -> Path:
    return settings.work / "store" / key[:32]


def verify_dir(path: Path) -> dict | None:
    """The manifest of a complete merged adapter directory whose files match it; None otherwise."""
    manifest_path = Path(path) / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["output"]["files"]
    except (ValueError, KeyError):
        return None
    for name, sha in files.items():
        if not (Path(path) / name).is_file() or sha256_file(Path(path) / name) != sha:
            return None
    return manifest


def plan_groups(aset: pico.AdapterSet, recipe: pico.Recipe, layers_per_group: int | None = None) -> list[list[str]]:
    """The units of calibration work: pico's shape batches (the grain of `pico merge`, so the bytes match), or those
    batches cut into groups of ``layers_per_group`` consecutive layers for more parallel tasks."""
    batches = plan_batches(aset, recipe.space)
    if not layers_per_group:
        return batches
    groups = []
    for batch in batches:
        current: list[str] = []
        layers: list[int | None] = []
        for module in batch:
            layer = next((int(p) for p in module.split(".") if p.isdigit()), None)
            if layer not in layers:
                if len(layers) == layers_per_group:
                    groups.append(current)
                    current, layers = [], []
                layers.append(layer)
            current.append(module)
        if current:
            groups.append(current)
    return groups


def pin_threads(threads: int | None) -> None:
    """Fix torch's intra-op thread count for the merge math. BLAS/LAPACK results depend on it in the last bits (the
    work is split differently), so every runner -- a thread pool, Dask worker processes (which Dask starts with one
    thread), the DVC stage -- computes with the same count and writes the same bytes. Not restored inside a task:
    tasks of one map run concurrently and must not see the count change under them."""
    if threads:
        torch.set_num_threads(int(threads))


def calibrate_group(aset: pico.AdapterSet, modules: list[str], recipe: pico.Recipe, device: str = "auto",
                    threads: int | None = 1):
    """Pico calibration of one group (pure function of the group's factors); runs on the worker's GPU if any."""
    pin_threads(threads)
    return pico.calibrate_batch(aset, modules, recipe, device=device)


def merge_group(cal, recipe: pico.Recipe, threads: int | None = 1):
    pin_threads(threads)
    return pico.merge_batch(cal, recipe)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def clean_stale(store: Path, name: str) -> None:
    """Remove temporary folders killed writers left: this key's (we hold its lock, nobody else is writing it) and
    any other key's whose writer process is gone (a SIGKILL leaves `.<key>.tmp-<pid>` behind)."""
    for tmp in list(store.glob(".*.tmp-*")) + list(store.glob(".*.old-*")):
        pid = tmp.name.rsplit("-", 1)[-1]
        if tmp.name.startswith(f".{name}.") or (pid.isdigit() and not _alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)


def write_store(settings: Settings, key: str, aset: pico.AdapterSet, recipe: pico.Recipe, groups: list[list[str]],
                results, dtype: str) -> tuple[Path, dict, bool]:
    """Write the merged adapter into the store under the key's lock. Returns (dir, manifest, reused)."""
    out = store_dir(settings, key)
    with project_lock(settings.work, f"merge-{out.name}"):
        manifest = verify_dir(out)
        if manifest is not None:  # another run finished the same merge meanwhile
            return out, manifest, True
        clean_stale(out.parent, out.name)
        manifest = write_merged(aset, recipe, groups, results, out, overwrite=out.exists(), progress=False,
                                dtype=getattr(torch, dtype))
    return out, manifest, False


class SourceChanged(PipelineError):
    """A source's bytes changed between fetch and merge (retrying the merge would not make the run consistent)."""

    permanent = True


def check_sources(manifest: dict, fetched: list[FetchedSource]) -> None:
    """The merge read exactly the bytes fetch hashed (and the pins approved)."""
    for src, f in zip(manifest["sources"], fetched):
        if src["sha256"] != f.sha256:
            raise SourceChanged(f"{f.name}: {f.uri} changed during the run (fetched {f.sha256[:12]}, merged "
                                f"{src['sha256'][:12]}); nothing was registered")


Groups = list[list[str]]
ComputeGroups = Callable[[pico.AdapterSet, Groups, pico.Recipe], list]


def compute_groups(settings: Settings) -> ComputeGroups:
    """Calibrate and merge each group here, one after the other (the search's candidates, the DVC stage); the flow
    maps the same two functions over its task runner's workers instead."""
    p = settings.pipeline

    def compute(aset: pico.AdapterSet, groups: Groups, recipe: pico.Recipe) -> list:
        return [merge_group(calibrate_group(aset, g, recipe, p.device, p.calibrate.threads), recipe,
                            p.calibrate.threads) for g in groups]

    return compute


def merge_into_store(settings: Settings, aset: pico.AdapterSet, fetched: list[FetchedSource], recipe: pico.Recipe,
                     compute: ComputeGroups | None = None, key: str | None = None) -> MergeResult:
    """The merged adapter of ``recipe`` in the content-addressed store: a verified copy if there is one, else planned,
    calibrated and merged group by group (``compute``; default: here, sequentially), written under the key's lock,
    and checked against the fetched bytes. ``key``: the merge key when the caller has it already."""
    p = settings.pipeline
    check_weights(aset, recipe)
    key = key or merge_key(fetched, recipe, p.dtype, device_class(settings))
    store = store_dir(settings, key)
    manifest = verify_dir(store)
    cached = manifest is not None
    if manifest is None:  # (write_store's third value: a concurrent run wrote it meanwhile)
        groups = plan_groups(aset, recipe, p.calibrate.layers_per_group)
        results = (compute or compute_groups(settings))(aset, groups, recipe)
        store, manifest, _ = write_store(settings, key, aset, recipe, groups, results, p.dtype)
    check_sources(manifest, fetched)
    return MergeResult(key=key, store=str(store), manifest=manifest, cached=cached)


def learned_key(settings: Settings, fetched: list[FetchedSource], base: FetchedSource, config: TaraConfig) -> str:
    """Everything that decides a learned merge's bytes: the adapters' and their prompts' bytes in order, the base
    model's, the resolved TARA config (its init recipe included), pico's code, dtype, device class and the torch
    thread count of the training (BLAS rounds differently with another count)."""
    return json_digest({"sources": [f.sha256 for f in fetched], "prompts": [f.prompts and f.prompts.sha256
                                                                             for f in fetched],
                        "base": base.sha256, "tara": config.resolve(len(fetched)).to_dict(), "pico": pico.__version__,
                        "pico_code": pico_code_digest(), "dtype": settings.pipeline.dtype,
                        "device": device_class(settings), "threads": learn_threads(settings)})


def learn_threads(settings: Settings) -> int:
    """torch threads of a learned candidate's training: ``pipeline.learn.threads``, else every core. Set explicitly:
    the night's merge tasks pin the process-wide count to ``pipeline.calibrate.threads`` (1) before it trains."""
    return settings.pipeline.learn.threads or os.cpu_count() or 1


def check_prompts(fetched: list[FetchedSource], label: str) -> list[str]:
    """Each adapter's prompts file (catalog ``prompts:``): a learned merge needs one per adapter."""
    missing = [f.name for f in fetched if f.prompts is None]
    if missing:
        raise PipelineError(f"the learned candidate {label!r} needs unlabeled prompts for every adapter; the catalog "
                            f"gives none for {', '.join(missing)} (add `prompts:` to those entries)", permanent=True)
    return [f.prompts.path for f in fetched if f.prompts is not None]


def learn_into_store(settings: Settings, aset: pico.AdapterSet, fetched: list[FetchedSource], base: FetchedSource,
                     config, key: str, label: str = "learned", report=None) -> tuple[MergeResult, dict]:
    """The learned merge (``pico.tara.tara_merge``: each adapter the teacher of its own prompts) in the store: a
    verified copy if there is one, else trained and written atomically under the key's lock. Teacher replies are
    cached by content under ``<work>/teacher-cache``. ``report``: a pico progress reporter (progress lines for the
    night's log, in place of pico's terminal bars) when ``pipeline.learn.progress`` is on. Returns the merge and its
    training record (init, steps, loss curve, seconds; the seconds are this night's, 0 when the store had it)."""
    p = settings.pipeline
    out = store_dir(settings, key)
    manifest = verify_dir(out)
    cached = manifest is not None
    seconds = {"seconds_prepare": 0.0, "seconds_train": 0.0}
    if manifest is None:
        prompts = check_prompts(fetched, label)
        with project_lock(settings.work, f"merge-{out.name}"):
            manifest = verify_dir(out)
            if manifest is None:
                clean_stale(out.parent, out.name)
                with torch_threads(learn_threads(settings)):
                    manifest = tara_merge(base.path, aset, prompts, out, config, device=p.device,
                                          dtype=getattr(torch, p.dtype), overwrite=out.exists(),
                                          progress=(report or True) if p.learn.progress else False,
                                          cache_dir=settings.work / "teacher-cache")
                seconds = {k: round(manifest.pop(k), 2) for k in ("seconds_prepare", "seconds_train")}
                manifest.pop("seconds", None)
    check_sources(manifest, fetched)
    t = manifest["training"]
    training = {"init": manifest["recipe"].get("init"), "variant": manifest["recipe"].get("variant"),
                "objective": manifest["recipe"].get("objective"), "steps": t["steps"],
                "coefficients": t["coefficients"], "loss": t["loss"], **seconds,
                "prompts": {i["adapter"]: {"sha256": i["sha256"], "n": i["n"]} for i in manifest["inputs"]}}
    return MergeResult(key=key, store=str(out), manifest=manifest, cached=cached), training


def merge_chosen(settings: Settings, aset: pico.AdapterSet, fetched: list[FetchedSource], base: FetchedSource | None,
                 chosen: Candidate | CandidateRecord, compute: ComputeGroups | None = None) -> MergeResult:
    """The night's merge of its chosen candidate (the flow and the DVC stage): a learned one from the store (trained
    during the search; again if the store lost it), a data-free one through :func:`merge_into_store` (``compute``:
    the flow's workers)."""
    if chosen.kind == "learned":
        if base is None:
            raise PipelineError(f"the learned candidate {chosen.label!r} needs the base model", permanent=True)
        cand = chosen.candidate() if isinstance(chosen, CandidateRecord) else chosen
        config = cand.tara_config()
        return learn_into_store(settings, aset, fetched, base, config, learned_key(settings, fetched, base, config),
                                cand.label)[0]
    return merge_into_store(settings, aset, fetched, pico.Recipe.from_dict(chosen.recipe), compute=compute)


@contextlib.contextmanager
def torch_threads(n: int | None = None):
    """torch's intra-op thread count set to ``n`` inside the block (None: left as it is), restored after: tasks that
    pin it for identical bytes leave the rest of the run its own count."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def diagnostics(manifest: dict) -> dict:
    """Per-module Pico diagnostics from the manifest, plus a summary."""
    layers = manifest["layers"]
    summary = {"modules": len(layers), "max_rank": manifest["output"]["max_rank"]}
    ratios = [v["norm_ratio"] for v in layers.values() if "norm_ratio" in v]
    if ratios:
        summary["norm_ratio_min"], summary["norm_ratio_mean"] = min(ratios), sum(ratios) / len(ratios)
    alphas = [min(v["alpha"]) for v in layers.values() if v.get("alpha")]
    if alphas:
        summary["alpha_min"], summary["alpha_min_mean"] = min(alphas), sum(alphas) / len(alphas)
    for key in ("overlap_B", "overlap_A"):
        vals = [v[key] for v in layers.values() if key in v]
        if vals:
            summary[f"{key}_mean"] = sum(vals) / len(vals)
    return {"summary": summary, "layers": layers}


def plot_diagnostics(manifest: dict, path: Path) -> Path:
    """A PNG of per-module diagnostics: merged/source norm ratio, Pico's smallest alpha, B/A cross-task overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = manifest["layers"]
    modules = sorted(layers, key=natural_key)
    if all("norm_ratio" in layers[m] for m in modules):
        series = {"norm ratio (merged / mean source)": [layers[m]["norm_ratio"] for m in modules]}
    else:  # a learned merge's manifest (pico tara) has no norm ratios
        series = {"rank": [layers[m]["rank"] for m in modules]}
    if all("alpha" in layers[m] for m in modules):
        series["Pico min alpha"] = [min(layers[m]["alpha"]) for m in modules]
    for key in ("overlap_B", "overlap_A"):
        if all(key in layers[m] for m in modules):
            series[f"cross-task {key.replace('_', ' ')}"] = [layers[m][key] for m in modules]
    fig, ax = plt.subplots(figsize=(11, 4))
    for label, values in series.items():
        ax.plot(values, marker=".", label=label)
    ax.set_xlabel("module (model order)")
    ax.set_title(recipe_summary(manifest["recipe"]))
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def materialize(src: Path, dest: Path) -> None:
    """Replace ``dest`` with a copy of ``src`` atomically (the DVC stage output is a plain folder, not a link)."""
    with AtomicDir(dest, overwrite=True) as tmp:
        for f in sorted(Path(src).iterdir()):
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
