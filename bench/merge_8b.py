#!/usr/bin/env python
"""Issue 6: merge speed and memory at Llama-3-8B scale, side by side with what users would run instead.

    .venv/bin/python bench/merge_8b.py                  # full run on this machine's CPU, writes bench/RESULTS.md
    .venv/bin/python bench/merge_8b.py --device cuda    # GPU figures -> bench/results-gpu.json (folded into RESULTS.md)
    .venv/bin/python bench/merge_8b.py --smoke          # tiny shapes, seconds (tests/test_bench_smoke.py)

One run, same files: the workload (bench/workload.py) is generated once and cached under build/bench/. Every timed
configuration runs in its own child process (this script with --child), so each has its own peak resident memory
(from os.wait4's rusage of that child) and nothing is shared between them; the page cache is warm for all of them
(the inputs were just written or read), and ``sync`` runs before each so no run pays for another's writeback.
Children run with OMP_WAIT_POLICY=PASSIVE: on a machine shared with other busy processes, OpenMP's default spinning
barriers slow multi-threaded torch code several-fold, and that would hurt the competitors most.

What is measured (see bench/README.md):
- floor: read every input file, write one output of the merged size (rank R = sum of ranks, float32) and fsync;
- pico merge in core space with Pico + TA / TIES / TSV (pico.merge(pico.load_adapters(...), Recipe(...), out)),
  whole model, and Pico + TIES in KnOTS space (our exact KnOTS), whole model;
- per layer, on a sample: pico full-space TIES (dense deltas, TIES, SVD truncation to R), the official full-space
  KnOTS-TIES path (SVD of [dW_1 .. dW_T] in float64, capped), PEFT add_weighted_adapter cat / svd / ties_svd at
  svd_rank = R through PEFT's own code on a module tree of Llama-8B-shaped Linear layers, and mergekit's LoRA path
  (base+lora -> merge_and_unload -> dense TIES -> mergekit-extract-lora at rank R) on a one-layer 8B-shaped model;
- correctness: every module of the Pico + TIES output against a straightforward float64 reference
  (bench/reference.py); determinism: a second Pico + TIES run must give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
for p in (str(ROOT), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

DENSITY = 0.7  # TIES fraction kept (Core-Space Llama setting); the same for every TIES variant below
SHAPES = {"8b": dict(layers=32, hidden=4096, kv=1024, mlp=14336),
          "tiny": dict(layers=2, hidden=64, kv=16, mlp=160)}
KINDS = {"q_proj": 2, "k_proj": 2, "gate_proj": 2, "down_proj": 1}  # one module per distinct shape, x its count


# ----------------------------------------------------------------------------------------------- child processes

def _now():
    return time.perf_counter()


def vm_hwm() -> int:
    """Peak resident set of this process's address space (VmHWM), in bytes. Unlike getrusage's maxrss it starts
    afresh at exec, so a child's figure does not include the parent's memory at fork time."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _sync_cuda(device):
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def child_floor(spec):
    """Read every input (64 MiB chunks, streaming), write out_bytes of it to one file, fsync. No math."""
    t0 = _now()
    chunk = 64 << 20
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    written, read = 0, 0
    with open(out / "adapter_model.safetensors", "wb") as f:
        while written < spec["out_bytes"]:
            for path in spec["paths"]:
                with open(Path(path) / "adapter_model.safetensors", "rb") as src:
                    while (block := src.read(chunk)) and written < spec["out_bytes"]:
                        read += len(block)
                        block = block[: spec["out_bytes"] - written]
                        f.write(block)
                        written += len(block)
        f.flush()
        t1 = _now()
        os.fsync(f.fileno())
    return {"time_s": _now() - t0, "fsync_s": _now() - t1, "read_bytes": read, "written_bytes": written}


def child_ours(spec):
    """pico.merge of the whole model, exactly as a user calls it."""
    import torch

    import pico

    if spec["device"].startswith("cuda"):
        torch.zeros(1, device=spec["device"])  # CUDA context outside the timed region
    t0 = _now()
    aset = pico.load_adapters(spec["paths"])
    recipe = pico.Recipe(method=spec["method"], space=spec["space"], calibrate="pico",
                         params={"density": DENSITY} if "ties" in spec["method"] else {})
    pico.merge(aset, recipe, spec["out"], device=spec["device"], progress=False, overwrite=True)
    _sync_cuda(spec["device"])
    return {"time_s": _now() - t0}


def _sample_modules(shape, layer, kinds):
    from workload import Shape

    mods = [(name, m, n) for name, m, n in Shape(**shape).modules() if name.split(".")[2] == str(layer)]
    return [(name, m, n) for name, m, n in mods if name.rsplit(".", 1)[1] in kinds]


def child_ours_layer(spec):
    """Math of one layer (7 modules) through the library's batch functions, inputs hot in the page cache."""
    import torch

    import pico
    from pico.merge import calibrate_batch, merge_batch, plan_batches

    aset = pico.load_adapters(spec["paths"])
    layer = [m for m, _, _ in _sample_modules(spec["shape"], spec["layer"], ("q_proj", "k_proj", "v_proj", "o_proj",
                                                                            "gate_proj", "up_proj", "down_proj"))]
    space = spec.get("space", "core")
    recipe = pico.Recipe(method="ties", space=space, calibrate="pico", params={"density": DENSITY})
    batches = [[m for m in b if m in layer] for b in plan_batches(aset, space)]
    batches = [b for b in batches if b]
    times = []
    for _ in range(4 if space == "core" else 2):
        t0 = _now()
        for b in batches:
            merge_batch(calibrate_batch(aset, b, recipe, spec["device"]), recipe, to_cpu=False)
        _sync_cuda(spec["device"])
        times.append(_now() - t0)
    del torch
    return {"time_s": sorted(times[1:])[len(times[1:]) // 2], "runs": times}


def child_full_ties(spec):
    """pico full-space Pico + TIES (dense deltas, TIES, SVD truncated to R), one module per distinct shape."""
    import pico
    from pico.merge import calibrate_batch, merge_batch

    aset = pico.load_adapters(spec["paths"])
    R = sum(aset.shape(aset.modules[0])[2])
    recipe = pico.Recipe(method="ties", space="full", calibrate="pico", rank=R, params={"density": DENSITY})
    per = {}
    for module, _, _ in _sample_modules(spec["shape"], spec["layer"], KINDS):
        t0 = _now()
        merge_batch(calibrate_batch(aset, [module], recipe, spec["device"]), recipe)
        _sync_cuda(spec["device"])
        per[module.rsplit(".", 1)[1]] = _now() - t0
    return {"per_module_s": per, "time_s": sum(per[k] * c for k, c in KINDS.items())}


def child_knots_full(spec):
    """The official KnOTS-TIES path on one module (spec section 2): X = [dW_1 | .. | dW_T] (m x Tn) in float64,
    thin SVD, keep s > 1e-5, TIES (trim/elect/disjoint mean) on diag(s) V_t^T, output factors (U, merged)."""
    import torch

    import pico
    from reference import ties_cores

    dev = spec["device"]
    aset = pico.load_adapters(spec["paths"])
    pairs = aset.factors(spec["module"])
    t0 = _now()
    x = torch.cat([(b.to(dev) @ a.to(dev)).double() for b, a in pairs], dim=1)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = int((s > 1e-5).sum())
    u, s, vh = u[:, :k], s[:k], vh[:k]
    n = pairs[0][1].shape[1]
    reps = torch.stack([s[:, None] * vh[:, t * n:(t + 1) * n] for t in range(len(pairs))])
    merged = ties_cores(reps, DENSITY)
    b_out, a_out = u.float().cpu(), merged.float().cpu()
    _sync_cuda(dev)
    return {"time_s": _now() - t0, "rank": k, "shape": list(x.shape), "out": [list(b_out.shape), list(a_out.shape)]}


def _peft_tree(shape, layer, kinds, device):
    """A torch module tree with Llama-3-8B's names and shapes, holding only the sampled Linear layers
    (weights allocated but never initialised or touched: PEFT's LoRA math never reads them)."""
    import torch.nn as nn
    from torch.nn.utils import skip_init

    class Node(nn.Module):
        pass

    root, inner = Node(), Node()
    root.model = inner
    inner.layers = nn.ModuleList(Node() for _ in range(layer + 1))
    for name, m, n in _sample_modules(shape, layer, kinds):
        _, _, i, part, proj = name.split(".")
        block = inner.layers[int(i)]
        if not hasattr(block, part):
            setattr(block, part, Node())
        setattr(getattr(block, part), proj, skip_init(nn.Linear, n, m, bias=False, device=device))
    return root


def child_peft(spec):
    """PEFT add_weighted_adapter (cat / svd / ties_svd at svd_rank = R, density 0.7) through PEFT's own code:
    PeftModel.from_pretrained / load_adapter on the module tree, then LoraModel.add_weighted_adapter. Per-module
    times come from a timer around PEFT's own per-module function (its code path is unchanged)."""
    import torch
    from peft import LoraConfig, PeftModel
    from peft.tuners.lora.model import LoraModel

    import warnings

    warnings.filterwarnings("ignore")
    dev = spec["device"]
    paths = spec["paths"]
    cfg = LoraConfig.from_pretrained(paths[0])
    cfg.task_type = None  # a plain module tree, not a transformers model
    R = cfg.r * len(paths)
    tree = _peft_tree(spec["shape"], spec["layer"], KINDS, dev)
    t0 = _now()
    model = PeftModel.from_pretrained(tree, paths[0], adapter_name="a0", config=cfg)
    for i, path in enumerate(paths[1:], 1):
        model.load_adapter(path, adapter_name=f"a{i}")
    model.to(dev)
    load_s = _now() - t0
    names = [f"a{i}" for i in range(len(paths))]
    per = {}
    original = LoraModel._svd_generalized_task_arithmetic_weighted_adapter

    def timed(self, combination_type, adapters, weights, new_rank, target, *args, **kwargs):
        t = _now()
        out = original(self, combination_type, adapters, weights, new_rank, target, *args, **kwargs)
        _sync_cuda(dev)
        shape = tuple(target.base_layer.weight.shape)
        per.setdefault(combination_type, {})[str(shape)] = _now() - t
        return out

    LoraModel._svd_generalized_task_arithmetic_weighted_adapter = timed
    w = torch.randn(256, 256, device=dev)  # one-time LAPACK / cuSOLVER start-up outside the timed calls
    torch.linalg.svd(w, full_matrices=True)
    _sync_cuda(dev)
    out = {"load_s": load_s, "rank": R, "warmed_up": True}
    for ctype in spec["types"]:
        kwargs = {"svd_rank": R} if ctype != "cat" else {}
        if "ties" in ctype:
            kwargs["density"] = DENSITY
        t = _now()
        with torch.no_grad():
            model.add_weighted_adapter(names, [1.0] * len(names), f"m_{ctype}", combination_type=ctype, **kwargs)
        _sync_cuda(dev)
        total = _now() - t
        ranks = {tuple(mod.lora_A[f"m_{ctype}"].weight.shape)[0] for mod in model.modules()
                 if hasattr(mod, "lora_A") and f"m_{ctype}" in mod.lora_A}
        entry = {"total_s": total, "out_ranks": sorted(ranks)}
        if ctype in per:
            by_shape = per[ctype]
            per_kind = {}
            for name, m, n in _sample_modules(spec["shape"], spec["layer"], KINDS):
                per_kind[name.rsplit(".", 1)[1]] = by_shape[str((m, n))]
            entry["per_module_s"] = per_kind
            entry["time_s"] = sum(per_kind[k] * c for k, c in KINDS.items())
        else:  # cat: no per-module function; the call covers the sampled modules, scaled to a layer
            entry["time_s"] = total * 7 / len(KINDS)
        out[ctype] = entry
    return out


def child_mergekit(spec):
    """mergekit's LoRA path on a one-layer Llama-3-8B-shaped model (runs in mergekit's own virtualenv):
    for each adapter, model 'base+lora' is merged densely (PeftModel.merge_and_unload, cached), then TIES on the
    dense deltas (density 0.7, bfloat16 like the 8B base), then mergekit-extract-lora back to a rank-R LoRA."""
    import yaml

    work = Path(spec["work"]).resolve()
    for d in ("cache", "merged", "lora"):
        shutil.rmtree(work / d, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    config = {"merge_method": "ties", "base_model": spec["base"], "dtype": "bfloat16",
              "models": [{"model": f"{spec['base']}+{p}", "parameters": {"weight": 1.0, "density": DENSITY}}
                         for p in spec["loras"]]}
    (work / "config.yml").write_text(yaml.safe_dump(config))
    bindir = Path(sys.executable).parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    peaks = []

    def run(cmd):  # each mergekit command in its own process: its peak RSS from wait4 (this process is tiny)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err = proc.stderr.read()
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {err.decode()[-2000:]}")
        peaks.append(rusage.ru_maxrss * 1024)

    t0 = _now()
    run([str(bindir / "mergekit-yaml"), str(work / "config.yml"), str(work / "merged"),
         "--lora-merge-cache", str(work / "cache"), "--no-copy-tokenizer", "--lazy-unpickle"])
    t1 = _now()
    run([str(bindir / "mergekit-extract-lora"), "--model", str(work / "merged"), "--base-model", spec["base"],
         "--out-path", str(work / "lora"), "--max-rank", str(spec["rank"])])
    t2 = _now()
    lora_cfg = json.loads((work / "lora" / "adapter_config.json").read_text())
    merged_cache = sorted(p.name for p in (work / "cache").iterdir())
    return {"merge_s": t1 - t0, "extract_s": t2 - t1, "time_s": t2 - t0, "tool_peak_rss": max(peaks),
            "out_rank": lora_cfg.get("r"), "dense_merges_cached": len(merged_cache)}


def child_check(spec):
    """Every module (or a sample) of a Pico + TIES output against the float64 reference; and, given a second
    output, the largest difference between the two (CPU versus GPU)."""
    import torch
    from safetensors import safe_open

    import pico
    from reference import pico_ties_module, relative_difference

    del torch
    return _check(spec)


def _check(spec):
    from safetensors import safe_open

    import pico
    from reference import pico_ties_module, relative_difference

    aset = pico.load_adapters(spec["paths"])
    modules = aset.modules
    layers = spec.get("layers")

    def factors(out, module):
        with safe_open(str(Path(out) / "adapter_model.safetensors"), framework="pt") as f:
            return (f.get_tensor(f"base_model.model.{module}.lora_B.weight"),
                    f.get_tensor(f"base_model.model.{module}.lora_A.weight"))

    worst, worst_module, other, checked = 0.0, None, 0.0, 0
    for module in modules:
        b, a = factors(spec["out"], module)
        if layers is None or int(module.split(".")[2]) in layers:
            rb, ra = pico_ties_module(aset.factors(module), density=DENSITY)
            d = relative_difference(b, a, rb, ra)
            checked += 1
            if d > worst:
                worst, worst_module = d, module
        if spec.get("other"):  # every module
            b2, a2 = factors(spec["other"], module)
            other = max(other, relative_difference(b2, a2, b, a))
    return {"modules": checked, "max_rel_diff": worst, "worst_module": worst_module,
            "other_modules": len(modules) if spec.get("other") else 0,
            "other_max_rel_diff": other if spec.get("other") else None}


def child_gpu_math(spec):
    """Merge math of the whole model on the GPU, inputs already resident there: for each batch (32 layers of one
    projection), Pico calibration + core projection + method + reconstruction, results left on the GPU."""
    import torch

    import pico
    from pico import factored
    from pico.merge import CUDA_BATCH_BYTES, CalibratedBatch, merge_batch, plan_batches

    dev = torch.device(spec["device"])
    aset = pico.load_adapters(spec["paths"])
    batches = plan_batches(aset, "core", CUDA_BATCH_BYTES)
    stacks = [factored.load(aset, b, dev) for b in batches]
    raw = [(s.b_all, s.a_all, s.ranks) for s in stacks]
    torch.cuda.synchronize()
    out = {"batches": len(batches), "batch_sizes": [len(b) for b in batches]}
    for method in spec["methods"]:
        recipe = pico.Recipe(method=method, space="core", calibrate="pico",
                             params={"density": DENSITY} if "ties" in method else {})

        def run():
            for (b_all, a_all, ranks), batch in zip(raw, batches):
                st = factored.Stacked(b_all, a_all, ranks)  # the Grams are part of the timed math
                fc, norms, diag = factored.calibrate(st, mode="pico", diagnostics=True)
                merge_batch(CalibratedBatch(batch, ranks, None, None, norms, diag, factored=fc), recipe,
                            to_cpu=False)

        run()
        torch.cuda.synchronize()
        times = []
        for _ in range(spec.get("reps", 5)):
            t0 = _now()
            run()
            torch.cuda.synchronize()
            times.append(_now() - t0)
        out[method] = {"time_s": sorted(times)[len(times) // 2], "runs": times}
    return out


CHILDREN = {f.__name__[len("child_"):]: f for f in (child_floor, child_ours, child_ours_layer, child_full_ties,
                                                   child_knots_full, child_peft, child_mergekit, child_check,
                                                   child_gpu_math)}


# ----------------------------------------------------------------------------------------------------- the parent

class Runner:
    def __init__(self, workdir: Path, python: str = sys.executable, log=print, inprocess: bool = False):
        self.workdir = workdir
        self.python = python
        self.log = log
        self.inprocess = inprocess
        self.n = 0

    def run(self, kind: str, spec: dict, *, timeout: float | None = None, python: str | None = None,
            threads: int | None = None) -> dict:
        """Run one child; return its result plus wall_s (the whole process) and peak_rss (the child's VmHWM).
        In-process mode (the smoke test) calls the same function here: fast, but memory figures are this process's."""
        self.n += 1
        spec = {**spec, "kind": kind}
        if self.inprocess:
            t0 = _now()
            out = CHILDREN[kind](spec)
            return {"wall_s": _now() - t0, "load_before": os.getloadavg()[0], "timed_out": False,
                    "peak_rss": vm_hwm(), **out}
        result_path = self.workdir / f"child-{self.n}.json"
        log_path = self.workdir / f"child-{self.n}.log"
        result_path.unlink(missing_ok=True)
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": f"{ROOT}:{BENCH}",
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        os.sync()
        load = os.getloadavg()[0]
        t0 = _now()
        with open(log_path, "w") as logf:
            proc = subprocess.Popen([python or self.python, str(Path(__file__).resolve()), "--child",
                                     json.dumps(spec), "--child-result", str(result_path)],
                                    stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            status, rusage, timed_out = None, None, False
            while status is None:
                pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    status, rusage = st, ru
                    break
                if timeout is not None and _now() - t0 > timeout:
                    proc.kill()
                    _, status, rusage = os.wait4(proc.pid, 0)
                    timed_out = True
                    break
                time.sleep(0.02)
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = _now() - t0
        # rusage maxrss of a child includes the parent's RSS at fork (kept across exec): an upper bound only
        out = {"wall_s": wall, "peak_rss": rusage.ru_maxrss * 1024, "rusage_maxrss": rusage.ru_maxrss * 1024,
               "cpu_s": rusage.ru_utime + rusage.ru_stime, "load_before": load, "load_after": os.getloadavg()[0],
               "timed_out": timed_out}
        if timed_out:
            out["time_s"] = timeout
            self.log(f"    {kind}: stopped at the {timeout:.0f} s cap")
            return out
        if proc.returncode != 0 or not result_path.exists():
            tail = log_path.read_text()[-3000:]
            raise RuntimeError(f"child {kind} failed (exit {proc.returncode}):\n{tail}")
        out.update(json.loads(result_path.read_text()))
        return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def files_identical(a: Path, b: Path) -> bool:
    import hashlib

    def digest(p):
        return hashlib.sha256(Path(p).read_bytes()).hexdigest()

    return all(digest(a / name) == digest(b / name) for name in ("adapter_model.safetensors", "adapter_config.json"))


def git_commit() -> str:
    """The code measured: HEAD, with '+changes' when the work tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    info = {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    return info


def make_mergekit_base(path: Path, shape: dict, log):
    """A one-layer Llama with Llama-3-8B's layer shapes (small vocab), bfloat16, for mergekit's LoRA path."""
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    log(f"  writing the one-layer 8B-shaped base model for mergekit: {path}")
    head_dim = 128 if shape["hidden"] >= 512 else 16
    config = LlamaConfig(vocab_size=256, hidden_size=shape["hidden"], intermediate_size=shape["mlp"],
                         num_hidden_layers=1, num_attention_heads=shape["hidden"] // head_dim,
                         num_key_value_heads=shape["kv"] // head_dim, head_dim=head_dim,
                         max_position_embeddings=256, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    tmp = path.parent / (path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    os.rename(tmp, path)
    return path


def layer_adapters(paths, root: Path, shape: dict, layer: int) -> list[Path]:
    """The adapters cut down to one layer (same tensors), for tools that work on a one-layer model."""
    from safetensors.torch import load_file, save_file

    out = []
    root.mkdir(parents=True, exist_ok=True)
    for p in paths:
        dst = root / Path(p).name
        if not (dst / "adapter_model.safetensors").exists():
            dst.mkdir(parents=True, exist_ok=True)
            tensors = load_file(str(Path(p) / "adapter_model.safetensors"))
            keep = {k: v for k, v in tensors.items() if f".layers.{layer}." in k}
            if layer != 0:
                keep = {k.replace(f".layers.{layer}.", ".layers.0."): v for k, v in keep.items()}
            save_file(keep, str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
            cfg = json.loads((Path(p) / "adapter_config.json").read_text())
            (dst / "adapter_config.json").write_text(json.dumps(cfg, indent=1))
        out.append(dst)
    return out


def mib(x):
    return x / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, every part, seconds (the test)")
    ap.add_argument("--shape", choices=SHAPES, default=None)
    ap.add_argument("--layers", type=int, default=None, help="override the layer count")
    ap.add_argument("--main", default=None, help="T x r of the main configuration (default 8x16; smoke 3x4)")
    ap.add_argument("--growth", default=None,
                    help="further T x r configurations, ours and floor (default 2x16,4x16,8x64; smoke none)")
    ap.add_argument("--competitors", default=None,
                    help="comma list of full_ties,knots_full,peft,mergekit,knots_space, or 'none' (default all; "
                         "smoke: no mergekit)")
    ap.add_argument("--sample-layer", type=int, default=0)
    ap.add_argument("--knots-cap", type=float, default=None,
                    help="seconds per module for full-space KnOTS (default 900; GPU 120)")
    ap.add_argument("--check-layers", default=None,
                    help="'all' or a count of layers for the reference check (default all; GPU 4)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs of the floor and of core Pico+TIES in the main configuration, alternating; medians "
                         "are reported (default 3; smoke 2; GPU 1)")
    ap.add_argument("--inprocess", action="store_true", help="run every part in this process (default for --smoke)")
    ap.add_argument("--cache", default=str(ROOT / "build" / "bench"))
    ap.add_argument("--results", default=None, help="markdown results file (default bench/RESULTS.md)")
    ap.add_argument("--json", default=None, help="raw results (default: beside the markdown, or results-gpu.json)")
    ap.add_argument("--mergekit-python", default=str(ROOT / "build" / "mergekit-venv" / "bin" / "python"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        result = CHILDREN[spec["kind"]](spec)
        result["peak_rss"] = vm_hwm()
        Path(args.child_result).write_text(json.dumps(result))
        return 0

    import torch

    from workload import Shape, ensure_adapters, write_adapter  # noqa: F401

    smoke = args.smoke
    gpu = args.device.startswith("cuda")
    if args.main is None:
        args.main = "3x4" if smoke else "8x16"
    if args.growth is None:
        args.growth = "" if smoke or gpu else "2x16,4x16,8x64"
    if args.competitors is None:
        args.competitors = "full_ties,knots_full,peft,knots_space" + ("" if smoke or gpu else ",mergekit")
    if args.knots_cap is None:
        args.knots_cap = 120.0 if gpu else 900.0
    if args.repeat is None:
        args.repeat = 2 if smoke else (1 if gpu else 3)
    if args.check_layers is None:
        args.check_layers = "4" if gpu else "all"
    shape_name = args.shape or ("tiny" if smoke else "8b")
    shape = dict(SHAPES[shape_name])
    if args.layers:
        shape["layers"] = args.layers
    cache = Path(args.cache).resolve() / ("smoke" if smoke else "")
    work = cache / "runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    cuda = args.device.startswith("cuda")
    results_md = Path(args.results) if args.results else (None if cuda else BENCH / "RESULTS.md")
    json_path = Path(args.json) if args.json else (BENCH / "results-gpu.json" if cuda else
                                                   results_md.with_suffix(".json"))
    log = print
    runner = Runner(work, log=lambda *a: print(*a, flush=True), inprocess=args.inprocess or smoke)
    configs = [tuple(int(v) for v in c.split("x")) for c in [args.main] + [g for g in args.growth.split(",") if g]]
    comps = [] if args.competitors == "none" else args.competitors.split(",")
    R_main = configs[0][0] * configs[0][1]
    t_start = time.time()
    res = {"machine": machine(), "shape": shape, "device": args.device, "density": DENSITY, "configs": [],
           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git_commit()}
    log(f"machine: {res['machine']}")

    # 1. the workload
    sh = Shape(**shape)
    max_t = {}
    for T, r in configs:
        max_t[r] = max(max_t.get(r, 0), T)
    family = {r: ensure_adapters(cache, sh, r, T, log=lambda *a: print(*a, flush=True)) for r, T in max_t.items()}

    # 2. whole-model runs per configuration: floor, ours (TA, TIES, TSV); main config: + determinism, KnOTS space
    methods = ["ta", "ties", "tsv"]
    for ci, (T, r) in enumerate(configs):
        paths = [str(p) for p in family[r][:T]]
        in_bytes = sum((Path(p) / "adapter_model.safetensors").stat().st_size for p in paths)
        out_bytes = sum((m + n) * T * r * 4 for _, m, n in sh.modules())  # merged rank R = T r, float32
        entry = {"T": T, "r": r, "R": T * r, "input_bytes": in_bytes, "output_data_bytes": out_bytes, "runs": {}}
        log(f"\n== T={T} r={r}: {len(paths)} adapters, {mib(in_bytes):.0f} MiB in")
        floor = runner.run("floor", {"paths": paths, "out": str(work / f"floor-{T}x{r}"), "out_bytes": out_bytes})
        entry["runs"]["floor"] = floor
        log(f"  floor: {floor['time_s']:.2f} s (fsync {floor['fsync_s']:.2f} s), peak RSS {mib(floor['peak_rss']):.0f} MiB")
        shutil.rmtree(work / f"floor-{T}x{r}", ignore_errors=True)
        for method in methods:
            out = work / f"ours-{method}-{T}x{r}"
            run = runner.run("ours", {"paths": paths, "method": method, "space": "core", "device": args.device,
                                      "out": str(out)})
            run["output_bytes"] = dir_bytes(out)
            entry["runs"][f"core-{method}"] = run
            log(f"  pico core Pico+{method.upper()}: {run['time_s']:.2f} s (process {run['wall_s']:.2f} s), "
                f"peak RSS {mib(run['peak_rss']):.0f} MiB")
        if ci == 0:
            # the floor and core Pico+TIES again, alternating (timings on a shared machine are noisy: the figures
            # used are the medians); the second Pico+TIES output must be byte-identical to the first
            samples = {"floor": [floor["time_s"]], "core-ties": [entry["runs"]["core-ties"]["time_s"]]}
            for i in range(max(args.repeat, 2) - 1):
                if i < args.repeat - 1:
                    f = runner.run("floor", {"paths": paths, "out": str(work / "floor-again"), "out_bytes": out_bytes})
                    samples["floor"].append(f["time_s"])
                    shutil.rmtree(work / "floor-again", ignore_errors=True)
                again = runner.run("ours", {"paths": paths, "method": "ties", "space": "core", "device": args.device,
                                            "out": str(work / "ours-ties-again")})
                if i < args.repeat - 1:
                    samples["core-ties"].append(again["time_s"])
                if i == 0:
                    entry["deterministic"] = files_identical(work / f"ours-ties-{T}x{r}", work / "ours-ties-again")
                shutil.rmtree(work / "ours-ties-again", ignore_errors=True)
            for key, values in samples.items():
                entry["runs"][key]["samples"] = values
                entry["runs"][key]["first_s"] = values[0]
                entry["runs"][key]["time_s"] = statistics.median(values)
            log(f"  {len(samples['floor'])} alternating runs: floor " + ", ".join(f"{v:.2f}" for v in samples["floor"])
                + " s; core Pico+TIES " + ", ".join(f"{v:.2f}" for v in samples["core-ties"]) + " s")
            log(f"  determinism (second Pico+TIES run byte-identical): {entry['deterministic']}")
            # correctness against the float64 reference (+ CPU versus GPU on a GPU machine)
            spec = {"paths": paths, "out": str(work / f"ours-ties-{T}x{r}")}
            if args.check_layers != "all":
                k = int(args.check_layers)
                spec["layers"] = sorted({round(i * (shape["layers"] - 1) / max(k - 1, 1)) for i in range(k)})
            if cuda:
                cpu_out = work / "ours-ties-cpu"
                run = runner.run("ours", {"paths": paths, "method": "ties", "space": "core", "device": "cpu",
                                          "out": str(cpu_out)})
                entry["runs"]["core-ties-on-cpu"] = run
                spec["other"] = str(cpu_out)
            check = runner.run("check", spec)
            entry["check"] = check
            log(f"  reference check: {check['modules']} modules, max relative difference {check['max_rel_diff']:.2e}"
                + (f"; CPU vs GPU {check['other_max_rel_diff']:.2e}" if cuda else ""))
            if cuda:
                math = runner.run("gpu_math", {"paths": paths, "device": args.device, "methods": methods})
                entry["gpu_math"] = math
                log("  GPU merge math, whole model: " + ", ".join(f"{m.upper()} {math[m]['time_s'] * 1e3:.1f} ms"
                                                              for m in methods))
            main_paths = paths
        for method in methods:
            if not (ci == 0 and method == "ties"):
                shutil.rmtree(work / f"ours-{method}-{T}x{r}", ignore_errors=True)
        res["configs"].append(entry)

    # 3. per-layer competitors on a sample (main configuration)
    main = res["configs"][0]
    T, r = configs[0]
    comp = main["competitors"] = {}
    layer_spec = {"paths": main_paths, "shape": shape, "layer": args.sample_layer, "device": args.device}
    ours_layer = runner.run("ours_layer", layer_spec)
    comp["ours_layer"] = ours_layer
    log(f"\n== per layer (layer {args.sample_layer}), T={T} r={r}, output rank {R_main}")
    log(f"  pico core Pico+TIES, one layer's math: {ours_layer['time_s'] * 1e3:.1f} ms")
    if "knots_space" in comps:
        run = runner.run("ours_layer", {**layer_spec, "space": "knots"})
        comp["knots_space"] = run
        log(f"  pico KnOTS-space Pico+TIES (exact, QR-based), one layer: {run['time_s']:.2f} s, "
            f"peak RSS {mib(run['peak_rss']):.0f} MiB")
    if "full_ties" in comps:
        run = runner.run("full_ties", layer_spec)
        comp["full_ties"] = run
        log(f"  pico full-space Pico+TIES: {run['time_s']:.1f} s per layer, peak RSS {mib(run['peak_rss']):.0f} MiB")
    if "peft" in comps:
        run = runner.run("peft", {**layer_spec, "types": ["cat", "svd", "ties_svd"]})
        comp["peft"] = run
        log("  PEFT add_weighted_adapter: " + ", ".join(f"{t} {run[t]['time_s']:.1f} s" for t in ("cat", "svd",
                                                                                              "ties_svd"))
            + f" per layer, peak RSS {mib(run['peak_rss']):.0f} MiB")
    if "knots_full" in comps:
        kn = {"per_module": {}, "skipped": []}
        mods = _sample_modules(shape, args.sample_layer, KINDS)
        budget = {"q_proj", "k_proj"} if not smoke else set(KINDS)
        for name, m, n in mods:
            kind = name.rsplit(".", 1)[1]
            if kind not in budget:
                kn["skipped"].append(kind)
                continue
            run = runner.run("knots_full", {**layer_spec, "module": name}, timeout=args.knots_cap)
            kn["per_module"][kind] = run
            log(f"  full-space KnOTS {kind} ({m}x{T * n}, float64 SVD): "
                + (f">= {args.knots_cap:.0f} s (cap)" if run["timed_out"] else f"{run['time_s']:.1f} s")
                + f", peak RSS {mib(run['peak_rss']):.0f} MiB")
        kn["time_s"] = sum(v["time_s"] * KINDS[k] for k, v in kn["per_module"].items())
        kn["lower_bound"] = bool(kn["skipped"]) or any(v["timed_out"] for v in kn["per_module"].values())
        kn["peak_rss"] = max([v["peak_rss"] for v in kn["per_module"].values()] or [0])
        comp["knots_full"] = kn
        log(f"  full-space KnOTS per layer: {'>= ' if kn['lower_bound'] else ''}{kn['time_s']:.1f} s")
    if "mergekit" in comps and not cuda:
        mk_py = Path(args.mergekit_python)
        if mk_py.exists():
            base = make_mergekit_base(cache / f"mergekit-base-{shape_name}", shape, log)
            loras = layer_adapters(main_paths, cache / f"layer{args.sample_layer}-T{T}-r{r}-{shape_name}", shape,
                                   args.sample_layer)
            try:
                run = runner.run("mergekit", {"base": str(base), "loras": [str(p) for p in loras], "rank": R_main,
                                              "work": str(work / "mergekit")}, python=str(mk_py))
                comp["mergekit"] = run
                log(f"  mergekit (one-layer model): {run['time_s']:.1f} s (merge {run['merge_s']:.1f} + extract "
                    f"{run['extract_s']:.1f}), peak RSS {mib(run['tool_peak_rss']):.0f} MiB, output rank "
                    f"{run['out_rank']}, {run['dense_merges_cached']} dense base+lora merges")
            except RuntimeError as exc:
                comp["mergekit"] = {"error": str(exc)[-1500:]}
                log(f"  mergekit failed: {str(exc)[-500:]}")
            shutil.rmtree(work / "mergekit", ignore_errors=True)
        else:
            comp["mergekit"] = {"error": f"no mergekit virtualenv at {mk_py}"}
    res["manifest_format_s"] = manifest_format_time(len(sh.modules()), R_main)
    res["elapsed_s"] = time.time() - t_start
    res["goals"] = goals(res)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    log(f"\nraw results: {json_path}")
    if results_md is not None:
        gpu = None
        gpu_json = BENCH / "results-gpu.json"
        if not smoke and gpu_json.exists():
            gpu = json.loads(gpu_json.read_text())
        text = render(res, gpu)
        results_md.write_text(text)
        log(f"results: {results_md}")
    print("\n" + goals_text(res["goals"]))
    shutil.rmtree(work, ignore_errors=True)
    return 0


# ------------------------------------------------------------------------------------------------------- reporting

def goals(res: dict) -> dict:
    main = res["configs"][0]
    runs, comp = main["runs"], main.get("competitors", {})
    floor = runs["floor"]["time_s"]
    ties = runs["core-ties"]["time_s"]
    layers = res["shape"]["layers"]
    ours_layer = ties / layers  # conservative: whole-model wall (I/O included) per layer
    out = {}
    out["within_3x_floor"] = {"holds": ties <= 3 * floor, "ours_s": ties, "floor_s": floor, "ratio": ties / floor}
    peft = comp.get("peft", {}).get("ties_svd", {}).get("time_s")
    kn = comp.get("knots_full", {})
    speed = {"ours_per_layer_s": ours_layer}
    holds = True
    if peft:
        speed["peft_ties_svd_per_layer_s"] = peft
        speed["vs_peft_ties_svd"] = peft / ours_layer
        holds &= peft / ours_layer >= 300
    else:
        holds = False
    if kn.get("time_s"):
        speed["knots_full_per_layer_s"] = kn["time_s"]
        speed["knots_full_lower_bound"] = kn["lower_bound"]
        speed["vs_knots_full"] = kn["time_s"] / ours_layer
        holds &= kn["time_s"] / ours_layer >= 300
    else:
        holds = False
    speed["holds"] = bool(holds)
    out["300x_per_layer"] = speed
    rss = max(runs[f"core-{m}"]["peak_rss"] for m in ("ta", "ties", "tsv"))
    out["rss_below_half_input"] = {"holds": rss < main["input_bytes"] / 2, "peak_rss": rss,
                                   "input_bytes": main["input_bytes"], "fraction": rss / main["input_bytes"]}
    check = main.get("check", {})
    out["equals_reference"] = {"holds": check.get("max_rel_diff", 1) < 1e-5, "max_rel_diff": check.get("max_rel_diff"),
                               "modules": check.get("modules"), "tolerance": 1e-5}
    out["deterministic"] = {"holds": bool(main.get("deterministic"))}
    if "gpu_math" in main:
        t = main["gpu_math"]["ties"]["time_s"]
        out["gpu_under_0.1s"] = {"holds": t < 0.1, "ties_math_s": t, "gpu": res["machine"].get("gpu")}
        out["cpu_equals_gpu"] = {"holds": (check.get("other_max_rel_diff") or 1) < 1e-5,
                                 "max_rel_diff": check.get("other_max_rel_diff")}
    return out


def goals_text(g: dict) -> str:
    lines = ["Goals:"]
    s = g["within_3x_floor"]
    lines.append(f"  [{'x' if s['holds'] else ' '}] core Pico+TIES, whole model, within 3x of the floor: "
                 f"{s['ours_s']:.2f} s vs {s['floor_s']:.2f} s = {s['ratio']:.2f}x")
    s = g["300x_per_layer"]
    parts = []
    if "vs_peft_ties_svd" in s:
        parts.append(f"PEFT ties_svd {s['vs_peft_ties_svd']:.0f}x")
    if "vs_knots_full" in s:
        parts.append(f"full-space KnOTS {'>= ' if s['knots_full_lower_bound'] else ''}{s['vs_knots_full']:.0f}x")
    lines.append(f"  [{'x' if s['holds'] else ' '}] >= 300x faster per layer: " + (", ".join(parts) or "not measured"))
    s = g["rss_below_half_input"]
    lines.append(f"  [{'x' if s['holds'] else ' '}] peak RSS below half the input: {mib(s['peak_rss']):.0f} MiB vs "
                 f"{mib(s['input_bytes']):.0f} MiB input ({s['fraction']:.2f})")
    s = g["equals_reference"]
    lines.append(f"  [{'x' if s['holds'] else ' '}] equal to the float64 reference: max relative difference "
                 f"{s['max_rel_diff']:.1e} over {s['modules']} modules (tolerance {s['tolerance']:.0e})")
    lines.append(f"  [{'x' if g['deterministic']['holds'] else ' '}] deterministic (byte-identical second run)")
    if "gpu_under_0.1s" in g:
        s = g["gpu_under_0.1s"]
        lines.append(f"  [{'x' if s['holds'] else ' '}] GPU merge math < 0.1 s ({s['gpu']}): {s['ties_math_s'] * 1e3:.1f} ms")
        s = g["cpu_equals_gpu"]
        lines.append(f"  [{'x' if s['holds'] else ' '}] CPU and GPU outputs equal: max relative difference "
                     f"{s['max_rel_diff']:.1e}")
    return "\n".join(lines)


def _fmt_s(x, lb=False):
    if x is None:
        return "-"
    pre = ">= " if lb else ""
    if x < 1:
        return f"{pre}{x * 1e3:.1f} ms"
    return f"{pre}{x:.2f} s" if x < 100 else f"{pre}{x:.0f} s"


def _fmt_x(x, lb=False):
    if x is None:
        return "-"
    pre = ">= " if lb else ""
    return f"{pre}{x:.2f}x" if x < 10 else f"{pre}{x:.0f}x"


def render(res: dict, gpu: dict | None) -> str:
    m = res["machine"]
    main = res["configs"][0]
    runs = main["runs"]
    floor = runs["floor"]["time_s"]
    ours = runs["core-ties"]["time_s"]
    layers = res["shape"]["layers"]
    L = []
    L.append("# Merge speed and memory at Llama-3-8B scale (issue 6)\n")
    L.append("Generated by `bench/merge_8b.py` (do not edit by hand; `bench/README.md` says how to run it).\n")
    L.append(f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, host `{m['host']}`; "
             f"Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), PEFT {m.get('peft', '-')}.")
    loads = [r["load_before"] for c in res["configs"] for r in c["runs"].values() if "load_before" in r]
    load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "not recorded"
    L.append(f"- Run: {res['started']}, {res['elapsed_s'] / 60:.0f} min, code `{res.get('commit', 'not recorded')}`. "
             f"1-minute load average before each whole-model run: {load} (it includes the benchmark's own previous "
             "runs; per run in the raw results, `bench/RESULTS.json`).")
    sh = res["shape"]
    llama = " (Llama-3-8B)" if sh == SHAPES["8b"] else ""
    L.append(f"- Workload: {sh['layers']} layers, q/k/v/o/gate/up/down at hidden {sh['hidden']}, kv {sh['kv']}, "
             f"MLP {sh['mlp']}{llama}, PEFT safetensors written by `bench/workload.py` (float32, r = lora_alpha, "
             "decaying spectra, shared B directions). TIES density 0.7 everywhere. Output rank R = T r.")
    L.append("- Each figure comes from its own child process: the time is the timed call inside it "
             "(`pico.merge(pico.load_adapters(...), ...)`; the floor's read + write + fsync), the process wall adds "
             "interpreter start and imports, and peak RSS is the child's own high-water mark (VmHWM). Page cache "
             "warm for every run; `sync` before each. Children run with OMP_WAIT_POLICY=PASSIVE (fairer to "
             "multi-threaded competitors on a shared machine).\n")

    L.append(f"## Whole model (T = {main['T']}, r = {main['r']}: {mib(main['input_bytes']):.0f} MiB of input)\n")
    fs, ts = runs["floor"].get("samples"), runs["core-ties"].get("samples")
    if fs and len(fs) > 1:
        L.append(f"The floor and core Pico + TIES ran {len(fs)} times each, alternating; their rows give the median "
                 f"(floor: {', '.join(f'{v:.2f}' for v in fs)} s; Pico + TIES: {', '.join(f'{v:.2f}' for v in ts)} s). "
                 "Process wall, CPU time and peak RSS are those of the first run.\n")
    L.append("| what | time | process wall | CPU time (process) | peak RSS | vs floor | vs ours (core Pico+TIES) |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    rows = [("floor: read all inputs, write one merged-size output, fsync", "floor"),
            ("pico core, Pico + TA", "core-ta"), ("**pico core, Pico + TIES**", "core-ties"),
            ("pico core, Pico + TSV", "core-tsv")]
    for label, key in rows:
        if key not in runs:
            continue
        r = runs[key]
        cpu = f"{r['cpu_s']:.1f} s" if "cpu_s" in r else "-"
        L.append(f"| {label} | {_fmt_s(r['time_s'])} | {_fmt_s(r['wall_s'])} | {cpu} | {mib(r['peak_rss']):.0f} MiB | "
                 f"{_fmt_x(r['time_s'] / floor)} | {_fmt_x(r['time_s'] / ours)} |")
    L.append("")

    comp = main.get("competitors", {})
    if comp:
        L.append(f"## Per layer (sample: layer 0; T = {main['T']}, r = {main['r']}, output rank {main['R']})\n")
        h, kv, f = sh["hidden"], sh["kv"], sh["mlp"]
        L.append("Competitors that take minutes per layer were timed on one module of each distinct shape of layer 0 "
                 f"(q_proj {h}x{h}, k_proj {kv}x{h}, gate_proj {f}x{h}, down_proj {h}x{f}) and summed with "
                 "each shape's count in a layer (q/o, k/v, gate/up, down). Ours per layer is the whole-model time "
                 f"divided by {layers} (I/O included), and separately one layer's math alone.\n")
        L.append("| what | per layer | peak RSS | vs ours per layer | vs floor per layer |")
        L.append("|---|---:|---:|---:|---:|")
        ours_pl, floor_pl = ours / layers, floor / layers

        def row(label, t, rss, lb=False):
            L.append(f"| {label} | {_fmt_s(t, lb)} | {'-' if rss is None else f'{mib(rss):.0f} MiB'} | "
                     f"{_fmt_x(t / ours_pl, lb)} | {_fmt_x(t / floor_pl, lb)} |")

        row(f"**pico core Pico + TIES** (whole model / {layers})", ours_pl, runs["core-ties"]["peak_rss"])
        ol = comp.get("ours_layer")
        if ol:
            row("pico core Pico + TIES, one layer's math only", ol["time_s"], None)
        if "knots_space" in comp:
            row("pico KnOTS space, Pico + TIES (exact KnOTS: QR of the stacked factors, one layer)",
                comp["knots_space"]["time_s"], comp["knots_space"]["peak_rss"])
        if "full_ties" in comp:
            row("pico full space, Pico + TIES (dense deltas, SVD to rank R)", comp["full_ties"]["time_s"],
                comp["full_ties"]["peak_rss"])
        kn = comp.get("knots_full")
        if kn and kn.get("per_module"):
            row("full-space KnOTS-TIES, official path (float64 SVD of m x Tn)", kn["time_s"], kn["peak_rss"],
                kn["lower_bound"])
        pe = comp.get("peft")
        if pe:
            for t in ("cat", "svd", "ties_svd"):
                if t in pe:
                    row(f"PEFT add_weighted_adapter `{t}`" + (" (exact, rank R)" if t == "cat" else
                                                              f" (svd_rank {main['R']})"),
                        pe[t]["time_s"], pe["peak_rss"])
        mk = comp.get("mergekit")
        if mk and "time_s" in mk:
            row("mergekit LoRA path: base+lora merge_and_unload, dense TIES, extract-lora rank R", mk["time_s"],
                mk.get("tool_peak_rss", mk["peak_rss"]))
        L.append("")
        L.append("Per-module figures (seconds):\n")
        L.append("| module | pico full-space TIES | full-space KnOTS | PEFT svd | PEFT ties_svd |")
        L.append("|---|---:|---:|---:|---:|")
        for kind in KINDS:
            ft = comp.get("full_ties", {}).get("per_module_s", {}).get(kind)
            knr = (kn or {}).get("per_module", {}).get(kind)
            kns = "not run" if knr is None else (f">= {knr['time_s']:.0f} (cap)" if knr["timed_out"] else
                                                   f"{knr['time_s']:.1f}")
            ps = (pe or {}).get("svd", {}).get("per_module_s", {}).get(kind)
            pt = (pe or {}).get("ties_svd", {}).get("per_module_s", {}).get(kind)
            L.append(f"| {kind} | {'-' if ft is None else f'{ft:.1f}'} | {kns} | "
                     f"{'-' if ps is None else f'{ps:.1f}'} | {'-' if pt is None else f'{pt:.1f}'} |")
        L.append("")
        notes = []
        if kn and kn.get("skipped"):
            notes.append(f"Full-space KnOTS was not run on {', '.join(kn['skipped'])}: its SVD of a "
                         f"{res['shape']['mlp']} x {main['T'] * res['shape']['hidden']} float64 matrix is estimated "
                         "at hours on this machine, so its per-layer figure is a lower bound (the attention "
                         "modules alone).")
        if mk and "error" in mk:
            notes.append(f"mergekit: not timed ({mk['error'][:300]}).")
        elif mk:
            notes.append("mergekit merges dense models: its LoRA path was timed on a one-layer model with "
                         "Llama-3-8B's layer shapes (bfloat16 base, vocabulary 256), the adapters cut to that layer; "
                         f"merge {mk['merge_s']:.1f} s (8 dense merge_and_unload + TIES), extract "
                         f"{mk['extract_s']:.1f} s (SVD per module).")
        if pe:
            notes.append(f"PEFT {res['machine'].get('peft', '')}: `PeftModel.from_pretrained` + `load_adapter` on a "
                         "module tree with Llama-3-8B's names and Linear shapes (only the sampled layers), then "
                         "`add_weighted_adapter` with defaults (svd_full_matrices=True); loading took "
                         f"{pe['load_s']:.1f} s and is not counted.")
        for n in notes:
            L.append(f"- {n}")
        L.append("")

    L.append("## Growth with T and r (whole model)\n")
    L.append("| T | r | input | floor | core Pico+TA | core Pico+TIES | core Pico+TIES / floor | core Pico+TSV | "
             "peak RSS (max of ours) | RSS / input |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in sorted(res["configs"], key=lambda c: (c["r"], c["T"])):
        rr = c["runs"]
        rss = max(rr[f"core-{x}"]["peak_rss"] for x in ("ta", "ties", "tsv"))
        L.append(f"| {c['T']} | {c['r']} | {mib(c['input_bytes']):.0f} MiB | {_fmt_s(rr['floor']['time_s'])} | "
                 f"{_fmt_s(rr['core-ta']['time_s'])} | {_fmt_s(rr['core-ties']['time_s'])} | "
                 f"{_fmt_x(rr['core-ties']['time_s'] / rr['floor']['time_s'])} | {_fmt_s(rr['core-tsv']['time_s'])} | "
                 f"{mib(rss):.0f} MiB | {rss / c['input_bytes']:.2f} |")
    L.append("")
    ch = main.get("check", {})
    L.append("## Correctness\n")
    L.append(f"- Every one of the {ch.get('modules')} modules of the core Pico + TIES output was compared with a "
             "straightforward float64 reference (`bench/reference.py`: per-module `torch.linalg.svd`, Pico, Core "
             "Space bases, TIES, rescale), as ||B'A' - B_ref A_ref||_F / ||B_ref A_ref||_F: max "
             f"{ch.get('max_rel_diff', float('nan')):.1e} (module {ch.get('worst_module')}).")
    L.append(f"- Determinism: a second run gave byte-identical files: {main.get('deterministic')}.\n")
    L.append("## Goals\n")
    L.append("```\n" + goals_text(res["goals"]) + "\n```\n")
    if gpu:
        L.append(render_gpu(gpu, res))
    else:
        L.append("## GPU\n\nNo GPU results recorded (`bench/merge_8b.py --device cuda` writes `bench/results-gpu.json`).\n")
    return "\n".join(L) + "\n"


def manifest_format_time(modules: int, R: int) -> float:
    """Seconds that merge_batch spends rounding per-module diagnostics into manifest entries (pico.output.round_sig) for
    ``modules`` modules of output rank R: Python work on the host, whatever the device."""
    import torch

    from pico.output import round_sig

    diag = {k: torch.rand(modules, R, dtype=torch.float64) for k in ("alpha", "collision_B", "collision_A")}
    diag.update({k: torch.rand(modules, dtype=torch.float64) for k in ("overlap_B", "overlap_A", "ratio", "norm")})
    t0 = _now()
    for i in range(modules):
        {k: round_sig(v[i]) for k, v in diag.items()}
    return _now() - t0


def render_gpu(g: dict, cpu: dict | None = None) -> str:
    m = g["machine"]
    main = g["configs"][0]
    runs = main["runs"]
    layers = g["shape"]["layers"]
    L = [f"## GPU: {m.get('gpu')} (device machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']})\n"]
    code = f"code `{g['commit']}`" if g.get("commit") else "commit not recorded: code before the streaming-hash writer"
    L.append(f"Run {g['started']} with `bench/merge_8b.py --device cuda` (one run; the device time of that session "
             f"allowed no second; {code}); T = {main['T']}, r = {main['r']}, the same workload generated there.\n")
    gm = main.get("gpu_math", {})
    L.append("| what | time | peak RSS (host) |")
    L.append("|---|---:|---:|")
    for meth in ("ta", "ties", "tsv"):
        if meth in gm:
            L.append(f"| merge math, whole model, Pico + {meth.upper()} (inputs resident on the GPU, "
                     f"{gm['batches']} batches; median of 5) | {_fmt_s(gm[meth]['time_s'])} | - |")
    L.append(f"| floor (read inputs, write merged-size output, fsync) | {_fmt_s(runs['floor']['time_s'])} | "
             f"{mib(runs['floor']['peak_rss']):.0f} MiB |")
    for meth in ("ta", "ties", "tsv"):
        r = runs.get(f"core-{meth}")
        if r:
            L.append(f"| `pico.merge(..., device='cuda')`, Pico + {meth.upper()}, end to end | {_fmt_s(r['time_s'])} "
                     f"| {mib(r['peak_rss']):.0f} MiB |")
    r = runs.get("core-ties-on-cpu")
    if r:
        L.append(f"| `pico.merge` on that machine's CPU ({m['cores']} cores), Pico + TIES | {_fmt_s(r['time_s'])} | "
                 f"{mib(r['peak_rss']):.0f} MiB |")
    comp = main.get("competitors", {})
    if comp.get("ours_layer"):
        L.append(f"| one layer's math, Pico + TIES (batch functions, reads and transfers included) | "
                 f"{_fmt_s(comp['ours_layer']['time_s'])} | - |")
    pe = comp.get("peft")
    if pe and "ties_svd" in pe:
        for t in ("svd", "ties_svd"):
            L.append(f"| PEFT `{t}` per layer (sampled modules, on the GPU) | {_fmt_s(pe[t]['time_s'])} | - |")
    kn = comp.get("knots_full")
    if kn and kn.get("per_module"):
        L.append(f"| full-space KnOTS per layer (float64 SVD on the GPU; attention modules only) | "
                 f"{_fmt_s(kn['time_s'], kn['lower_bound'])} | - |")
    if comp.get("full_ties"):
        L.append(f"| pico full-space Pico + TIES per layer | {_fmt_s(comp['full_ties']['time_s'])} | - |")
    L.append("")
    ties_pl = gm.get("ties", {}).get("time_s", float("nan")) / layers
    if pe and "ties_svd" in pe:
        L.append(f"- Per layer on the GPU, Pico + TIES math is {_fmt_s(ties_pl)} (whole model / {layers}): "
                 f"{pe['ties_svd']['time_s'] / ties_pl:.0f}x faster than PEFT `ties_svd`"
                 + (f", >= {kn['time_s'] / ties_pl:.0f}x than full-space KnOTS" if kn and kn.get("time_s") else "")
                 + f"; end to end (I/O included, {_fmt_s(runs['core-ties']['time_s'] / layers)} per layer) "
                 f"{pe['ties_svd']['time_s'] / (runs['core-ties']['time_s'] / layers):.0f}x.")
        if not pe.get("warmed_up"):
            L.append(f"- PEFT `svd` ran first and its first module (q_proj) includes cuSOLVER's one-time start-up "
                     f"({pe['svd']['per_module_s']['q_proj']:.1f} s against {pe['ties_svd']['per_module_s']['q_proj']:.1f}"
                     " s for the same SVD inside `ties_svd`); `ties_svd` is the fair figure.")
    fmt = (cpu or {}).get("manifest_format_s")
    L.append("- The merge-math figure covers, per batch of equal-shape modules: the float64 Grams, Pico, the core "
             "bases (cuSOLVER gesvda), the method, the output products, and building each module's manifest entry "
             "(Python rounding of its diagnostics"
             + (f", which took {fmt * 1e3:.0f} ms for the model's {layers * 7} modules on the CPU machine above: "
                "a large share of the figure, and not GPU work" if fmt else "") + "). "
             "TSV is slow on the GPU: its per-task SVDs of the 128 x 128 cores go through torch's default cuSOLVER "
             "driver (146 ms per 32 matrices in bench/probe_small_svd.py).")
    L.append("- End to end on the GPU is I/O-bound (reading, hashing the inputs for the manifest, host-device copies, "
             "writing); host RSS includes the CUDA context and pinned staging buffers for 32-layer batches.")
    ch = main.get("check", {})
    L.append(f"- GPU output against the float64 reference: max relative difference {ch.get('max_rel_diff', 0):.1e} "
             f"over {ch.get('modules')} modules (4 layers); against the CPU output, all "
             f"{ch.get('other_modules') or g['shape']['layers'] * 7} modules: {ch.get('other_max_rel_diff') or 0:.1e}.")
    L.append(f"- Determinism on the GPU (second run byte-identical): {main.get('deterministic')}.\n")
    gg = g["goals"]
    lines = []
    if "gpu_under_0.1s" in gg:
        x = gg["gpu_under_0.1s"]
        lines.append(f"  [{'x' if x['holds'] else ' '}] GPU merge math, whole model, < 0.1 s: "
                     f"{x['ties_math_s'] * 1e3:.1f} ms (Pico + TIES)")
        x = gg["cpu_equals_gpu"]
        lines.append(f"  [{'x' if x['holds'] else ' '}] CPU and GPU outputs equal: max relative difference "
                     f"{x['max_rel_diff']:.1e}")
    x = gg["equals_reference"]
    lines.append(f"  [{'x' if x['holds'] else ' '}] GPU output equal to the float64 reference: {x['max_rel_diff']:.1e}")
    L.append("```\nGPU goals:\n" + "\n".join(lines) + "\n```\n")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
