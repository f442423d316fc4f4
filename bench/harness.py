"""The harness of bench/merge_8b.py: runs each configuration in its own child process and measures it (wall time,
the child's peak resident memory), and records the machine and the code measured."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def now():
    return time.perf_counter()


def vm_hwm() -> int:
    """Peak resident set of this process's address space (VmHWM), in bytes. Unlike getrusage's maxrss it starts
    afresh at exec, so a child's figure does not include the parent's memory at fork time."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Runner:
    """Runs ``children[kind](spec)`` in a fresh process of ``script --child`` (or in this process, ``inprocess``)."""

    def __init__(self, workdir: Path, children: dict, script: Path, python: str = sys.executable, log=print,
                 inprocess: bool = False):
        self.workdir = workdir
        self.children, self.script = children, Path(script)
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
            t0 = now()
            out = self.children[kind](spec)
            return {"wall_s": now() - t0, "load_before": os.getloadavg()[0], "timed_out": False,
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
        t0 = now()
        with open(log_path, "w") as logf:
            proc = subprocess.Popen([python or self.python, str(self.script), "--child",
                                     json.dumps(spec), "--child-result", str(result_path)],
                                    stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            status, rusage, timed_out = None, None, False
            while status is None:
                pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    status, rusage = st, ru
                    break
                if timeout is not None and now() - t0 > timeout:
                    proc.kill()
                    _, status, rusage = os.wait4(proc.pid, 0)
                    timed_out = True
                    break
                time.sleep(0.02)
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = now() - t0
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
