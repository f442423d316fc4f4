"""The SmolLM2 suite's evaluation on a GPU, checked against the CPU (issue 26): one command on the GPU machine.

The GPU machine reaches no network and receives at most 64 MiB per call, so the base travels as the packaged GGUF
(98 MB, split into parts over two calls: ``--gguf PART ...`` joins them and checks the sha256) and is converted there
by the suite's own code (skills.smollm2.convert). Each ``--adapter NAME=DIR`` is scored on the validation split by the
nightly's validation scorer (skills.smollm2.common.score: chat template, batched greedy, max_gen_toks from params),
on CUDA in float32 and in bfloat16, timed (synchronised; model load excluded and reported apart). ``--cpu-ref FILE``
(written here by ``--write-cpu-ref``, the same code on this machine's CPU) gives the CPU's replies and scores, and the
JSON says per skill how many replies are identical and how the scores differ.

    # here (CPU): the reference
    .venv/bin/python bench/gpu_smollm2.py --write-cpu-ref build/gpu/cpu_ref.json --adapter tsv=DIR ...
    # there (GPU): the check
    python3 bench/gpu_smollm2.py --gguf part.a part.b --sha256 HEX --adapter tsv=DIR --cpu-ref cpu_ref.json --out $OUT
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SKILLS = ["math", "code", "finance", "dosage", "json", "letters"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def records(data: Path, split: str, limit: int | None) -> list[dict]:
    from skills.smollm2.data import read_jsonl

    out = []
    for s in SKILLS:
        out += read_jsonl(data / s / f"{split}.jsonl")[: limit or None]
    return out


def score_adapter(base: Path, adapter: Path, recs: list[dict], dtype, max_new: int, batch: int) -> dict:
    import torch
    from peft import PeftModel

    from skills.smollm2.common import DEVICE, load_base, score

    t0 = time.time()
    model, tok = load_base(base)
    if tok.pad_token is None:  # transformers 5.17's GGUF conversion (the GPU image) sets none; 5.23 sets one
        tok.pad_token = tok.eos_token  # left padding under an attention mask: the pad id changes no reply
    if adapter is not None:  # NAME=none: the base alone
        model = PeftModel.from_pretrained(model, str(adapter)).to(DEVICE)
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)
    sync()
    load_s = time.time() - t0
    t0 = time.time()
    per, replies = {}, {}
    for s in SKILLS:
        rs = [r for r in recs if r["skill"] == s]
        acc, ys = score(model, tok, rs, max_new, batch, return_replies=True)
        per[s], replies[s] = acc, ys
    sync()
    return {"load_s": round(load_s, 2), "score_s": round(time.time() - t0, 2), "items": len(recs),
            "scores": per, "mean": sum(per.values()) / len(per), "replies": replies}


def compare(ref: dict, got: dict) -> dict:
    same = {s: sum(a == b for a, b in zip(ref["replies"][s], got["replies"][s])) for s in SKILLS}
    return {"identical_replies": same, "identical_total": sum(same.values()),
            "items": sum(len(ref["replies"][s]) for s in SKILLS),
            "score_diff": {s: round(got["scores"][s] - ref["scores"][s], 4) for s in SKILLS},
            "mean_diff": round(got["mean"] - ref["mean"], 4)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", nargs="*", help="the packaged GGUF, or its parts in order")
    ap.add_argument("--sha256", help="the joined GGUF's sha256")
    ap.add_argument("--base", help="an HF base directory (instead of --gguf)")
    ap.add_argument("--adapter", action="append", default=[],
                    help="NAME=DIR (or NAME=none: the base alone), scored on the validation split")
    ap.add_argument("--data", default="build/smollm2/data")
    ap.add_argument("--limit", type=int, default=None, help="validation items per skill (default: all)")
    ap.add_argument("--max-new", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--cpu-ref", help="the CPU reference JSON (--write-cpu-ref) to compare with")
    ap.add_argument("--write-cpu-ref", help="score on this machine's CPU (float32) and write the reference here")
    ap.add_argument("--out", default="build/gpu")
    a = ap.parse_args(argv)
    import torch

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"python": platform.python_version(), "torch": torch.__version__,
           "cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                       platform.processor()),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    path = out / ("cpu_ref.json" if a.write_cpu_ref else "results-gpu-smollm2.json")

    def save():
        Path(a.write_cpu_ref or path).write_text(json.dumps(res, indent=1) + "\n")

    base = Path(a.base) if a.base else None
    if a.gguf:
        t0 = time.time()
        joined = Path("/tmp/smollm2.gguf") if len(a.gguf) > 1 else Path(a.gguf[0])
        if len(a.gguf) > 1:
            with open(joined, "wb") as f:
                for part in a.gguf:
                    f.write(Path(part).read_bytes())
        sha = hashlib.sha256(joined.read_bytes()).hexdigest()
        if a.sha256 and sha != a.sha256:
            raise SystemExit(f"the joined GGUF's sha256 {sha} is not {a.sha256}")
        from skills.smollm2.convert import convert

        base = Path("/tmp/smollm2-base")
        res["convert"] = {**convert(joined, base, threads=None), "seconds": round(time.time() - t0, 1)}
        log(f"base converted in {res['convert']['seconds']} s")
        save()
    recs = records(Path(a.data), "validation", a.limit)
    ref = json.loads(Path(a.cpu_ref).read_text()) if a.cpu_ref else None
    res["adapters"] = {}
    for spec in a.adapter:
        name, _, d = spec.partition("=")
        runs = {"cpu-float32": None} if a.write_cpu_ref else {"cuda-float32": None, "cuda-bfloat16": torch.bfloat16}
        res["adapters"][name] = {}
        for label, dtype in runs.items():
            log(f"{name}: {label} on {len(recs)} validation items")
            r = score_adapter(base, None if d == "none" else Path(d), recs, dtype, a.max_new, a.batch)
            if ref is not None and name in ref["adapters"]:
                r["vs_cpu"] = compare(ref["adapters"][name]["cpu-float32"], r)
            res["adapters"][name][label] = r
            log(f"{name}: {label}: mean {r['mean']:.4f}, scoring {r['score_s']} s (load {r['load_s']} s)"
                + (f", identical replies {r['vs_cpu']['identical_total']}/{r['vs_cpu']['items']}, mean diff "
                   f"{r['vs_cpu']['mean_diff']:+.4f}" if "vs_cpu" in r else ""))
            save()
    log(f"wrote {a.write_cpu_ref or path}")


if __name__ == "__main__":
    main()
