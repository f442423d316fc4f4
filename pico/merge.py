"""The merge driver: stream modules from the input adapters, calibrate, merge, and write one PEFT adapter.

Modules of equal shape (out, in, ranks) are batched (for Llama: the 32 layers of each projection) and processed on
the chosen device; the input is read and the output written batch by batch, so memory stays at one batch.
The unit of work is a batch of module names: ``calibrate_batch`` and ``merge_batch`` are pure functions of that
batch's factors, which is what the pipeline maps over workers.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from ._version import __version__
from .adapters import AdapterError, AdapterSet
from .batch import CalibratedBatch, load_batch
from .calibrate import calibrate, overlap_diagnostics
from .errors import RecipeError
from .output import AdapterWriter, natural_key, round_sig_rows
from .output import progress as progress_bar
from .recipe import Recipe
from .registry import Context, get_method
from .spaces import get_space

BATCH_BYTES = 128 << 20  # working-set budget of one batch (a merge holds two: one computing, one writing)
CUDA_BATCH_BYTES = 4 << 30  # on a GPU: room for all 32 layers of a Llama-8B projection at rank 128 in one batch


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RecipeError(f"--device {device} was asked for but CUDA is not available on this machine")
    return torch.device(device)


def plan_batches(aset: AdapterSet, space: str = "core", budget_bytes: int = BATCH_BYTES) -> list[list[str]]:
    """Group modules by shape and cut each group into batches that fit the working-set budget. Deterministic."""
    groups: dict[tuple, list[str]] = {}
    for module in sorted(aset.modules, key=natural_key):
        groups.setdefault(aset.shape(module), []).append(module)
    batches = []
    for (m, n, ranks), modules in groups.items():
        size = max(1, budget_bytes // get_space(space).bytes_per_module(m, n, ranks))
        batches += [modules[i:i + size] for i in range(0, len(modules), size)]
    return batches


@dataclass
class ModuleResult:
    module: str
    b: torch.Tensor  # (m, k) on the CPU
    a: torch.Tensor  # (k, n)
    info: dict


def calibrate_batch(aset: AdapterSet, modules: list[str], recipe: Recipe, device: torch.device | str = "cpu",
                    diagnostics: bool = True) -> CalibratedBatch:
    """Read one batch of modules and apply the recipe's calibration (Pico or a control); a no-op for 'none'.

    The recipe's space reads and calibrates it: the core space takes the Gram-form fast path (pico/factored.py)
    unless a module of the batch is too ill-conditioned for it or the calibration has no Gram form; otherwise, as
    for the other spaces, the calibrated factors are formed explicitly.
    """
    return get_space(recipe.space).calibrate(aset, modules, recipe, resolve_device(str(device)), diagnostics)


def merge_batch(cal: CalibratedBatch, recipe: Recipe, *, to_cpu: bool = True) -> list[ModuleResult]:
    """Merge one calibrated batch in the recipe's space and return exact-rank factors per module (on the CPU, or
    left on the batch's device with ``to_cpu=False``)."""
    space = get_space(recipe.space)
    merged, state, ratio, target = merge_in_space(cal, recipe)
    rank = recipe.rank if recipe.rank is not None else sum(cal.ranks)
    b, a, out_rank, kept = space.reconstruct(merged, state, rank)
    if to_cpu:
        b, a = b.cpu(), a.cpu()
    # the manifest entries: every diagnostic of the batch rounded in one vectorised pass per key
    columns = {"norm_ratio": ratio, "source_norm": target}
    if kept is not None:  # a truncating space (full)
        columns["kept_energy"] = kept
    columns.update(cal.diagnostics)
    rows = {key: round_sig_rows(value) for key, value in columns.items()}
    results = []
    for i, (module, k) in enumerate(zip(cal.modules, out_rank.tolist())):
        info = {"rank": k, **{key: row[i] for key, row in rows.items()}}
        results.append(ModuleResult(module, b[i, :, :k].contiguous(), a[i, :k, :].contiguous(), info))
    return results


def check_weights(aset: AdapterSet, recipe: Recipe) -> None:
    """One weight per adapter, checked before any work (a recipe is valid on its own; this is about the set)."""
    if recipe.weights is not None and len(recipe.weights) != len(aset):
        raise AdapterError(f"{len(recipe.weights)} weights given for {len(aset)} adapters")


def merge_in_space(cal: CalibratedBatch, recipe: Recipe):
    """The merged task matrices of one calibrated batch in the recipe's space, before reconstruction: (merged (L, p,
    q), the space's state for ``reconstruct``, ||merged|| / mean_t ||dW_t|| before any post rescale, that mean)."""
    method = get_method(recipe.method)
    space = get_space(recipe.space)
    T = len(cal.ranks)
    weights = torch.tensor(recipe.weights if recipe.weights is not None else [1.0] * T)
    taus, state = space.project(cal)
    ctx = Context(modules=cal.modules, ranks=cal.ranks, space=recipe.space, seed=recipe.seed,
                  factors=space.task_factors(cal, state))
    with space.compute(state, taus):
        merged = method.fn(taus, weights, ctx, **recipe.method_params()) * recipe.lam
    target = cal.source_norms.mean(-1)
    norm = torch.linalg.matrix_norm(merged)  # = ||dW_merged||_F: the bases of Core and KnOTS space are orthonormal
    ratio = norm / target.clamp_min(1e-30)
    if recipe.rescale == "post":  # pin ||dW_merged|| to mean_t ||dW_t|| of the uncalibrated updates
        factor = torch.where(norm > 0, target / norm.clamp_min(1e-30), torch.ones_like(norm))
        merged = merged * factor[:, None, None]
    return merged, state, ratio, target


def merge(aset: AdapterSet, recipe: Recipe, out: str | Path, *, device: str = "auto", overwrite: bool = False,
          progress: bool = True, dtype: torch.dtype = torch.float32) -> dict:
    """Merge ``aset`` with ``recipe`` into the PEFT adapter directory ``out`` and return its manifest.

    Atomic: ``out`` appears complete or not at all. Deterministic: same inputs and recipe give the same bytes.
    """
    check_weights(aset, recipe)
    dev = resolve_device(device)
    batches = plan_batches(aset, recipe.space, CUDA_BATCH_BYTES if dev.type == "cuda" else BATCH_BYTES)
    # Merged one batch ahead of the writer in a worker thread (torch and file I/O release the GIL), so reading and
    # merging batch i+1 overlap writing batch i. (Two single-threaded workers were tried on the 2-core benchmark
    # machine: no faster under load, more memory.)
    tasks = (functools.partial(_merge_one, aset, batch, recipe, dev) for batch in batches)
    return write_merged(aset, recipe, batches, ahead(tasks), out, overwrite=overwrite, progress=progress,
                        dtype=dtype)


def _merge_one(aset: AdapterSet, batch: list[str], recipe: Recipe, dev: torch.device) -> list[ModuleResult]:
    return merge_batch(calibrate_batch(aset, batch, recipe, dev), recipe)


def ahead(tasks: Iterable[Callable], *, workers: int = 1, depth: int = 1):
    """Yield the results of ``tasks`` (zero-argument callables) in order, computed by ``workers`` threads at most
    ``workers + depth - 1`` tasks ahead of the consumer. A task's exception is raised in the consumer; closing the
    consumer cancels the tasks not started and waits for the running ones."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pico-merge")
    pending: deque = deque()
    it = iter(tasks)
    try:
        for task in itertools.islice(it, workers + depth - 1):
            pending.append(pool.submit(task))
        while pending:
            result = pending.popleft().result()
            task = next(it, None)
            if task is not None:
                pending.append(pool.submit(task))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def write_merged(aset: AdapterSet, recipe: Recipe, batches: list[list[str]], results: Iterable[list[ModuleResult]],
                 out: str | Path, *, overwrite: bool = False, progress: bool = True,
                 dtype: torch.dtype = torch.float32) -> dict:
    """Write merged per-batch results (in ``batches`` order) as one PEFT adapter directory + manifest, atomically.

    ``results`` yields ``merge_batch`` outputs batch by batch (a generator streams: each batch is written as soon as
    it is computed). Used by :func:`merge` and by pipelines that compute the batches elsewhere (mapped tasks);
    the same batches and results give the same bytes either way.
    """
    check_weights(aset, recipe)
    hasher = threading.Thread(target=aset.hash_sources, daemon=True)  # hashes inputs while the merge computes
    hasher.start()
    plan = []
    for module in (m for batch in batches for m in batch):
        out_dim, in_dim, ranks = aset.shape(module)
        k = get_space(recipe.space).rank_bound(out_dim, in_dim, ranks, recipe.rank)  # upper bound of the output rank
        plan.append((module, k, out_dim, in_dim))
    layers = {}
    with AdapterWriter(out, aset, plan, dtype=dtype, overwrite=overwrite) as w:
        with progress_bar(len(aset.modules), progress, f"{recipe.method}/{recipe.space}") as bar:
            for batch, batch_results in zip(batches, results, strict=True):
                if [res.module for res in batch_results] != list(batch):
                    raise ValueError("merge results do not match the planned batch "
                                     f"{batch[0]}..{batch[-1]} (out of order?)")
                for res in batch_results:
                    w.write(res.module, res.b, res.a)
                    layers[res.module] = res.info
                bar.update(len(batch))
        config = w.close()
        hasher.join()
        return w.write_manifest({
            "pico_version": __version__,
            "base_model": {"name_or_path": config["base_model_name_or_path"], "revision": config["revision"]},
            "sources": [s.to_dict() for s in aset.sources],
            "recipe": recipe.to_dict(),
            "recipe_hash": recipe.hash(),
            "skipped_modules": aset.skipped,
            "output": w.output(),
            "layers": {m: layers[m] for m in sorted(layers, key=natural_key)},
        })


def inspect_adapters(aset: AdapterSet, device: str = "auto", kappa: float | None = None,
                     progress: bool = True) -> dict[str, dict]:
    """Pico's per-module diagnostics without merging: collision spectra, alphas, B versus A overlap."""
    dev = resolve_device(device)
    out = {}
    bar = progress_bar(len(aset.modules), progress, "inspect")
    for batch in plan_batches(aset, "core"):
        bs, as_ = load_batch(aset, batch, dev)
        _, _, diag = calibrate(bs, as_, mode="pico", kappa=kappa, modules=batch, diagnostics=False)
        diag.update(overlap_diagnostics(bs, as_))
        rows = {k: round_sig_rows(v) for k, v in diag.items()}
        for i, module in enumerate(batch):
            out[module] = {k: row[i] for k, row in rows.items()}
        bar.update(len(batch))
    bar.close()
    return {m: out[m] for m in sorted(out, key=natural_key)}
