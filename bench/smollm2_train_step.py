"""Seconds per training step of a SmolLM2 suite adapter, the build's settings against the plain ones, side by side.

One process, one torch thread, the real converted base (``dvc repro smollm2_base smollm2_data smollm2_replay`` first)
and the suite's own batches (8 pairs: 4 of the skill, 4 replayed replies, as ``replay_frac: 0.5``). The
configurations run alternately, ``--repeat`` rounds of ``--steps`` steps each, on the same batches; medians reported.

- ``fp32``: no autocast, sdpa attention, one padded batch;
- ``plain``: sdpa attention, bf16 autocast casting every frozen weight on each forward, one padded batch;
- ``+bf16 frozen``: the frozen LoRA-wrapped weights held in bf16 (``bf16_frozen_weights``: the same bits);
- ``+eager``: transformers' eager attention (its bf16 backward is cheaper on CPU than the sdpa kernel's);
- ``+2 chunks`` (``attn: eager``, ``chunks: 2``): + the batch as two micro-batches sorted by length (less padding);
- ``build``: + the LM head on the answer positions only (``lm_loss(head="answer")``: the same loss).

Usage: ``python bench/smollm2_train_step.py [--steps 4] [--repeat 3] [--skill finance] [--out bench/RESULTS-smollm2-step.md]``
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import machine  # noqa: E402  (bench/, the script's own folder)

CONFIGS = {  # name: (autocast, attn, hold frozen weights in bf16, chunks, LM head rows)
    "fp32": (None, "sdpa", False, 1, "full"),
    "plain": ("bf16", "sdpa", False, 1, "full"),
    "+bf16 frozen": ("bf16", "sdpa", True, 1, "full"),
    "+eager": ("bf16", "eager", True, 1, "full"),
    "+2 chunks": ("bf16", "eager", True, 2, "full"),
    "build": ("bf16", "eager", True, 2, "answer"),
}


def main(argv: list[str] | None = None) -> None:
    import torch
    from peft import get_peft_model

    from skills.adapters import lora_config
    from skills.smollm2.common import bf16_frozen_weights, load_base, train_step
    from skills.smollm2.config import load_params
    from skills.smollm2.data import read_jsonl
    from skills.smollm2.replay import read_replay

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--skill", default="finance", help="a key of smollm2.adapters.runs (its rank and alpha)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS-smollm2-step.md"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    p = load_params(a.params)
    common, run = p["adapters"]["common"], p["adapters"]["runs"][a.skill]
    for path in (p["paths"]["base"], p["paths"]["replay"]):
        if not Path(path).exists():
            raise SystemExit(f"{path}: missing; build it first: dvc repro smollm2_base smollm2_data smollm2_replay")
    task = [(r["prompt"], r["target"]) for s in run["skills"]
            for r in read_jsonl(Path(p["paths"]["data"]) / s / "train.jsonl")]
    replay = read_replay(p["paths"]["replay"], run["skills"])
    rng = random.Random(0)
    batches = [[task[rng.randrange(len(task))] for _ in range(4)] + [replay[rng.randrange(len(replay))] for _ in range(4)]
               for _ in range(a.steps)]
    models = {}
    for name, (_, attn, _, _, _) in CONFIGS.items():
        torch.manual_seed(0)
        model = get_peft_model(load_base(p["paths"]["base"], attn=attn)[0], lora_config(run, common))
        models[name] = model.train()
    tok = load_base(p["paths"]["base"])[1]
    times: dict[str, list[float]] = {n: [] for n in CONFIGS}
    for _ in range(a.repeat):
        for name, (autocast, _, hold, chunks, head) in CONFIGS.items():
            model = models[name]
            with bf16_frozen_weights(model, enabled=hold):
                train_step(model, tok, batches[0], autocast=autocast, chunks=chunks, head=head)  # warm-up
                t0 = time.perf_counter()
                for b in batches:
                    model.zero_grad(set_to_none=True)
                    train_step(model, tok, b, autocast=autocast, chunks=chunks, head=head)
                times[name].append((time.perf_counter() - t0) / len(batches))
    med = {n: statistics.median(v) for n, v in times.items()}
    tokens = sum(len(tok(x + y)["input_ids"]) for b in batches for x, y in b) / len(batches)
    lines = ["# SmolLM2 adapter training step: seconds per step (bench/smollm2_train_step.py)", "",
             f"CPU: {machine()['cpu']}; torch {torch.__version__}, 1 thread; adapter `{a.skill}` (r {run['r']}, all 7 "
             f"projections), batch 8 (4 skill + 4 replayed), ~{tokens:.0f} text tokens per batch before the chat "
             f"template; {a.steps} steps x {a.repeat} alternating rounds, medians.", "",
             "| configuration | s / step | vs plain |", "|---|---|---|"]
    for n in CONFIGS:
        lines.append(f"| {n} | {med[n]:.2f} | {med['plain'] / med[n]:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).write_text(text)
    print(json.dumps({"median_s": med, "all_s": times}))


if __name__ == "__main__":
    main()
