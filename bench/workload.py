"""The benchmark's workload: PEFT LoRA adapters shaped like Llama-3-8B ones, written straight to safetensors.

No model is built: each adapter's factors are drawn per module and written as ``adapter_model.safetensors`` with
PEFT's key names, plus an ``adapter_config.json`` that PEFT and pico both load.

The factors are not plain Gaussian noise. Per module and task t (rank r, shape m x n):
    B_t = (G_t + c S W_t) diag(d),  A_t = diag(e) H_t
with G_t, H_t Gaussian (task-specific), S an m x r/2 block of output directions shared by all tasks of the module
(mixed into each task by a random W_t), and decaying column/row scales d_j = 0.8^(16 j / r), e_j = (1 + 16 j / r)^-1/2
(the same dynamic range at every rank). So every
delta B_t A_t has a decaying spectrum and the stacked B's have a few dominant shared directions (what Pico shrinks),
while the stacked A's do not. Everything is seeded per (seed, task, module): adapter t is the same file whatever T
is, so the T = 2 and T = 4 sets are the first adapters of the T = 8 set.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

FORMAT_VERSION = 2  # 2: decay scaled to the rank (r = 16 files are unchanged)
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGETS = ATTN + MLP


@dataclass(frozen=True)
class Shape:
    """A Llama-style decoder's LoRA-targeted linear shapes. Defaults: Llama-3-8B."""

    layers: int = 32
    hidden: int = 4096
    kv: int = 1024
    mlp: int = 14336

    def modules(self) -> list[tuple[str, int, int]]:
        """(module name, out, in) for every targeted linear, in layer order."""
        h, kv, f = self.hidden, self.kv, self.mlp
        dims = {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
                "gate_proj": (f, h), "up_proj": (f, h), "down_proj": (h, f)}
        out = []
        for i in range(self.layers):
            for name in TARGETS:
                part = "self_attn" if name in ATTN else "mlp"
                out.append((f"model.layers.{i}.{part}.{name}", *dims[name]))
        return out

    def adapter_bytes(self, r: int, itemsize: int = 4) -> int:
        return sum((m + n) * r for _, m, n in self.modules()) * itemsize


def _generator(*parts) -> torch.Generator:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def module_factors(module: str, m: int, n: int, r: int, task: int, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(B (m x r), A (r x n)) of one adapter's module, deterministic in (seed, task, module)."""
    g_shared = _generator(seed, "shared", module, r)
    k_s = max(1, r // 2)
    shared = torch.randn(m, k_s, generator=g_shared)  # output directions common to all tasks of this module
    g = _generator(seed, task, module, r)
    mix = torch.randn(k_s, r, generator=g) / k_s ** 0.5
    b = torch.randn(m, r, generator=g).addmm_(shared, mix, alpha=1.5)
    j = torch.arange(r, dtype=torch.float32) * (16 / r)  # rank-relative index: r = 16 gives 0, 1, ..., 15
    b.mul_((0.8 ** j) * (2e-3 / m ** 0.5))
    a = torch.randn(r, n, generator=g)
    a.mul_(((1.0 + j) ** -0.5 / n ** 0.5)[:, None])
    return b.to(dtype), a.to(dtype)


def peft_config(r: int, alpha: int, base: str = "meta-llama/Meta-Llama-3-8B") -> dict:
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "revision": None,
        "r": r, "lora_alpha": alpha, "target_modules": list(TARGETS), "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "inference_mode": True,
        "init_lora_weights": True, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
    }


def write_adapter(path: Path, shape: Shape, r: int, task: int, seed: int = 0, alpha: int | None = None,
                  dtype: torch.dtype = torch.float32, layers: list[int] | None = None) -> Path:
    """Write one PEFT adapter directory (atomically: a temporary name, then a rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, m, n in shape.modules():
        if layers is not None and int(module.split(".")[2]) not in layers:
            continue
        b, a = module_factors(module, m, n, r, task, seed, dtype)
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(peft_config(r, alpha or r), indent=1))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    os.rename(tmp, path)
    return path


def ensure_adapters(root: Path, shape: Shape, r: int, T: int, seed: int = 0, dtype: torch.dtype = torch.float32,
                    log=print, workers: int = 1) -> list[Path]:
    """The first T adapters of the (shape, r, seed, dtype) family under ``root``, generated once and cached;
    ``workers`` > 1 writes the missing ones in that many processes at once (same files)."""
    spec = {"format": FORMAT_VERSION, "shape": asdict(shape), "r": r, "seed": seed, "dtype": str(dtype)}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    family = Path(root) / f"L{shape.layers}-h{shape.hidden}-r{r}-{key}"
    family.mkdir(parents=True, exist_ok=True)
    (family / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
    paths = [family / f"task{t}" for t in range(T)]
    missing = [t for t in range(T) if not (paths[t] / "adapter_model.safetensors").is_file()]
    for t in missing:
        log(f"  writing {paths[t]} ({shape.adapter_bytes(r, torch.finfo(dtype).bits // 8) / 2**20:.0f} MiB)")
    if workers > 1 and len(missing) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(missing)), mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(write_adapter, [paths[t] for t in missing], [shape] * len(missing), [r] * len(missing),
                          missing, [seed] * len(missing), [None] * len(missing), [dtype] * len(missing)))
    else:
        for t in missing:
            write_adapter(paths[t], shape, r, t, seed, dtype=dtype)
    return paths
