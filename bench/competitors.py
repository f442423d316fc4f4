"""The competitors of bench/merge_8b.py: one ``child_*`` function per measured configuration, each run in its own
process by the harness (bench/harness.py) with a JSON spec, returning a JSON-able result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from harness import now

DENSITY = 0.7  # TIES fraction kept (Core-Space Llama setting); the same for every TIES variant below
SHAPES = {"8b": dict(layers=32, hidden=4096, kv=1024, mlp=14336),
          "tiny": dict(layers=2, hidden=64, kv=16, mlp=160)}
KINDS = {"q_proj": 2, "k_proj": 2, "gate_proj": 2, "down_proj": 1}  # one module per distinct shape, x its count


def _sync_cuda(device):
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def child_floor(spec):
    """Read every input (64 MiB chunks, streaming), write out_bytes of it to one file, fsync. No math."""
    t0 = now()
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
        t1 = now()
        os.fsync(f.fileno())
    return {"time_s": now() - t0, "fsync_s": now() - t1, "read_bytes": read, "written_bytes": written}


def child_ours(spec):
    """pico.merge of the whole model, exactly as a user calls it."""
    import torch

    import pico

    if spec["device"].startswith("cuda"):
        torch.zeros(1, device=spec["device"])  # CUDA context outside the timed region
    t0 = now()
    aset = pico.load_adapters(spec["paths"])
    recipe = pico.Recipe(method=spec["method"], space=spec["space"], calibrate="pico",
                         params={"density": DENSITY} if "ties" in spec["method"] else {})
    pico.merge(aset, recipe, spec["out"], device=spec["device"], progress=False, overwrite=True)
    _sync_cuda(spec["device"])
    return {"time_s": now() - t0}


def sample_modules(shape, layer, kinds):
    from workload import Shape

    mods = [(name, m, n) for name, m, n in Shape(**shape).modules() if name.split(".")[2] == str(layer)]
    return [(name, m, n) for name, m, n in mods if name.rsplit(".", 1)[1] in kinds]


def child_ours_layer(spec):
    """Math of one layer (7 modules) through the library's batch functions, inputs hot in the page cache."""
    import torch

    import pico
    from pico.merge import calibrate_batch, merge_batch, plan_batches

    aset = pico.load_adapters(spec["paths"])
    layer = [m for m, _, _ in sample_modules(spec["shape"], spec["layer"], ("q_proj", "k_proj", "v_proj", "o_proj",
                                                                            "gate_proj", "up_proj", "down_proj"))]
    space = spec.get("space", "core")
    recipe = pico.Recipe(method="ties", space=space, calibrate="pico", params={"density": DENSITY})
    batches = [[m for m in b if m in layer] for b in plan_batches(aset, space)]
    batches = [b for b in batches if b]
    times = []
    for _ in range(4 if space == "core" else 2):
        t0 = now()
        for b in batches:
            merge_batch(calibrate_batch(aset, b, recipe, spec["device"]), recipe, to_cpu=False)
        _sync_cuda(spec["device"])
        times.append(now() - t0)
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
    for module, _, _ in sample_modules(spec["shape"], spec["layer"], KINDS):
        t0 = now()
        merge_batch(calibrate_batch(aset, [module], recipe, spec["device"]), recipe)
        _sync_cuda(spec["device"])
        per[module.rsplit(".", 1)[1]] = now() - t0
    return {"per_module_s": per, "time_s": sum(per[k] * c for k, c in KINDS.items())}


def child_knots_full(spec):
    """The official KnOTS-TIES path on one module (spec section 2): X = [dW_1 | .. | dW_T] (m x Tn) in float64,
    thin SVD, keep s > 1e-5, TIES (trim/elect/disjoint mean) on diag(s) V_t^T, output factors (U, merged)."""
    import torch
    from reference import ties_cores

    import pico

    dev = spec["device"]
    aset = pico.load_adapters(spec["paths"])
    pairs = aset.factors(spec["module"])
    t0 = now()
    x = torch.cat([(b.to(dev) @ a.to(dev)).double() for b, a in pairs], dim=1)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = int((s > 1e-5).sum())
    u, s, vh = u[:, :k], s[:k], vh[:k]
    n = pairs[0][1].shape[1]
    reps = torch.stack([s[:, None] * vh[:, t * n:(t + 1) * n] for t in range(len(pairs))])
    merged = ties_cores(reps, DENSITY)
    b_out, a_out = u.float().cpu(), merged.float().cpu()
    _sync_cuda(dev)
    return {"time_s": now() - t0, "rank": k, "shape": list(x.shape), "out": [list(b_out.shape), list(a_out.shape)]}


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
    for name, m, n in sample_modules(shape, layer, kinds):
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
    import warnings

    import torch
    from peft import LoraConfig, PeftModel
    from peft.tuners.lora.model import LoraModel

    warnings.filterwarnings("ignore")
    dev = spec["device"]
    paths = spec["paths"]
    cfg = LoraConfig.from_pretrained(paths[0])
    cfg.task_type = None  # a plain module tree, not a transformers model
    R = cfg.r * len(paths)
    tree = _peft_tree(spec["shape"], spec["layer"], KINDS, dev)
    t0 = now()
    model = PeftModel.from_pretrained(tree, paths[0], adapter_name="a0", config=cfg)
    for i, path in enumerate(paths[1:], 1):
        model.load_adapter(path, adapter_name=f"a{i}")
    model.to(dev)
    load_s = now() - t0
    names = [f"a{i}" for i in range(len(paths))]
    per = {}
    original = LoraModel._svd_generalized_task_arithmetic_weighted_adapter

    def timed(self, combination_type, adapters, weights, new_rank, target, *args, **kwargs):
        t = now()
        out = original(self, combination_type, adapters, weights, new_rank, target, *args, **kwargs)
        _sync_cuda(dev)
        shape = tuple(target.base_layer.weight.shape)
        per.setdefault(combination_type, {})[str(shape)] = now() - t
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
        t = now()
        with torch.no_grad():
            model.add_weighted_adapter(names, [1.0] * len(names), f"m_{ctype}", combination_type=ctype, **kwargs)
        _sync_cuda(dev)
        total = now() - t
        ranks = {tuple(mod.lora_A[f"m_{ctype}"].weight.shape)[0] for mod in model.modules()
                 if hasattr(mod, "lora_A") and f"m_{ctype}" in mod.lora_A}
        entry = {"total_s": total, "out_ranks": sorted(ranks)}
        if ctype in per:
            by_shape = per[ctype]
            per_kind = {}
            for name, m, n in sample_modules(spec["shape"], spec["layer"], KINDS):
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

    t0 = now()
    run([str(bindir / "mergekit-yaml"), str(work / "config.yml"), str(work / "merged"),
         "--lora-merge-cache", str(work / "cache"), "--no-copy-tokenizer", "--lazy-unpickle"])
    t1 = now()
    run([str(bindir / "mergekit-extract-lora"), "--model", str(work / "merged"), "--base-model", spec["base"],
         "--out-path", str(work / "lora"), "--max-rank", str(spec["rank"])])
    t2 = now()
    lora_cfg = json.loads((work / "lora" / "adapter_config.json").read_text())
    merged_cache = sorted(p.name for p in (work / "cache").iterdir())
    return {"merge_s": t1 - t0, "extract_s": t2 - t1, "time_s": t2 - t0, "tool_peak_rss": max(peaks),
            "out_rank": lora_cfg.get("r"), "dense_merges_cached": len(merged_cache)}


def child_check(spec):
    """Every module (or a sample) of a Pico + TIES output against the float64 reference; and, given a second
    output, the largest difference between the two (CPU versus GPU)."""
    import torch


    del torch
    return _check(spec)


def _check(spec):
    from reference import pico_ties_module, relative_difference
    from safetensors import safe_open

    import pico

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
    from pico.batch import CalibratedBatch
    from pico.merge import CUDA_BATCH_BYTES, merge_batch, plan_batches

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
            t0 = now()
            run()
            torch.cuda.synchronize()
            times.append(now() - t0)
        out[method] = {"time_s": sorted(times)[len(times) // 2], "runs": times}
    return out


CHILDREN = {f.__name__[len("child_"):]: f for f in (child_floor, child_ours, child_ours_layer, child_full_ties,
                                                   child_knots_full, child_peft, child_mergekit, child_check,
                                                   child_gpu_math)}


def manifest_format_time(modules: int, R: int) -> float:
    """Seconds that merge_batch spends rounding per-module diagnostics into manifest entries for ``modules`` modules
    of output rank R (one vectorised pass per diagnostic, pico.output.round_sig_rows, then one dict per module):
    host work, whatever the device."""
    import torch

    from pico.output import round_sig_rows

    diag = {k: torch.rand(modules, R, dtype=torch.float64) for k in ("alpha", "collision_B", "collision_A")}
    diag.update({k: torch.rand(modules, dtype=torch.float64) for k in ("overlap_B", "overlap_A", "ratio", "norm")})
    t0 = now()
    rows = {k: round_sig_rows(v) for k, v in diag.items()}
    [{k: row[i] for k, row in rows.items()} for i in range(modules)]
    return now() - t0
