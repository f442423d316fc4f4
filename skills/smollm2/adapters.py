"""Train the SmolLM2 suite's team adapters: one PEFT LoRA per skill plus a multi-task LoRA on the union.

Every adapter targets all attention and MLP projections (q, k, v, o, gate, up, down); ranks, alphas and rsLoRA vary
per adapter (params.yaml ``smollm2.adapters.runs``), and each adapter has ITS OWN seed, as independent teams would:
with one shared seed, LoRA's random A initialisation is identical between adapters of equal rank and the tasks'
A row spaces overlap because of that shared start, not because of the tasks.

Loss on the answer tokens only (the record's ``target`` reply, a short worked answer, + end of turn); ``replay_frac``
of each batch replays the base's own replies to the other skills' prompts (``skills.smollm2.replay``), so an adapter
stays a small edit that leaves the other skills' reply formats alone. Training runs under bf16 autocast when
``autocast: bf16`` (AMX on this box's Intel Xeon), with the frozen weights held in bf16 meanwhile (the same bits,
fewer casts), ``attn`` attention and each batch as ``chunks`` micro-batches sorted by length (bench/
smollm2_train_step.py measures each); the saved adapter is float32. ``train_info.json`` records ||dW||/||W|| and the
skill's accuracy at full LoRA scale, and at half scale unless ``half_scale_check: false``.

Usage: ``python -m skills.smollm2.adapters --name math [--params params.yaml]`` (``--name all`` trains every run).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import skills  # noqa: F401

import torch

from skills.adapters import lora_config, save_adapter, update_stats
from skills.adapters import scale_accuracy as _scale_accuracy
from skills.common import lr_at
from skills.smollm2.common import bf16_frozen_weights, load_base, score, seed_all, train_step
from skills.smollm2.data import read_jsonl
from skills.smollm2.replay import read_replay


def train_adapter(base_dir, data_dir, run: dict, common: dict, out_dir=None, eval_cfg: dict | None = None,
                  log_every: int = 0, replay_dir=None):
    """Train one LoRA on ``run['skills']``; returns (peft_model, info). Saves to out_dir when given.

    With ``replay_frac`` > 0, that share of every batch replays the base's own replies to the other skills' prompts
    (``skills.smollm2.replay``, read from ``replay_dir``); a run on every skill has nothing to replay."""
    from peft import get_peft_model

    cfg = {**common, **run}
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    seed_all(int(cfg["seed"]))
    data_dir = Path(data_dir)
    base, tok = load_base(base_dir, attn=cfg.get("attn"))
    model = get_peft_model(base, lora_config(run, common))
    model.train()
    task = {s: [(r["prompt"], r.get("target", r["answer"])) for r in read_jsonl(data_dir / s / "train.jsonl")] for s in cfg["skills"]}
    names = list(task)
    frac = float(cfg.get("replay_frac", 0.0))
    replay = read_replay(replay_dir, cfg["skills"]) if frac > 0 else []
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=float(cfg.get("weight_decay", 0.0)))
    rng = random.Random(f"{cfg['seed']}:{','.join(cfg['skills'])}")
    steps, bs = int(cfg["steps"]), int(cfg["batch_size"])
    n_replay = int(round(bs * frac)) if replay else 0
    autocast, chunks = cfg.get("autocast"), int(cfg.get("chunks", 1))
    t0, c0 = time.time(), time.process_time()
    loss = 0.0
    with bf16_frozen_weights(model, enabled=autocast == "bf16"):
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, float(cfg["lr"]), int(cfg["warmup"]))
            batch = []
            for _ in range(bs - n_replay):  # skill first (uniform over skills), then an item
                items = task[names[rng.randrange(len(names))]]
                batch.append(items[rng.randrange(len(items))])
            batch += [replay[rng.randrange(len(replay))] for _ in range(n_replay)]
            opt.zero_grad(set_to_none=True)
            loss = train_step(model, tok, batch, autocast=autocast, chunks=chunks)
            opt.step()
            if log_every and (step + 1) % log_every == 0:
                sec = time.time() - t0
                print(json.dumps({"step": f"{step + 1}/{steps}", "loss": round(loss, 4), "sec": round(sec, 1),
                                  "eta_s": round(sec / (step + 1) * (steps - step - 1))}), flush=True)
    model.eval()
    timing = {"train_wall_s": round(time.time() - t0, 1), "train_cpu_s": round(time.process_time() - c0, 1)}
    info = {"skills": list(cfg["skills"]), "seed": int(cfg["seed"]), "r": int(run["r"]),
            "lora_alpha": float(run["lora_alpha"]), "use_rslora": bool(run.get("use_rslora", False)),
            "steps": steps, "batch_size": bs, "replay_per_batch": n_replay, "final_loss": round(loss, 4)}
    info.update(update_stats(model))
    info.update(scale_accuracy(model, tok, data_dir, cfg["skills"], eval_cfg or {},
                               half=bool(cfg.get("half_scale_check", True))))
    if out_dir is not None:
        save_adapter(model, Path(out_dir), base_dir)
        (Path(out_dir) / "train_info.json").write_text(json.dumps(info, indent=1) + "\n")
    # wall / CPU time are printed, never saved: the saved files depend on params and code only
    return model, {**info, **timing}


def scale_accuracy(model, tok, data_dir: Path, skills, eval_cfg: dict, half: bool = True) -> dict:
    """skills.adapters.scale_accuracy with this suite's scorer (greedy through the chat template, extracted)."""
    split = eval_cfg.get("split", "test")
    kw = {"max_new": int(eval_cfg.get("max_gen_toks", 32)), "batch_size": int(eval_cfg.get("batch_size", 64))}
    return {"eval_split": split, **_scale_accuracy(model, data_dir, skills, split,
                                                   score=lambda m, recs: score(m, tok, recs, **kw), half=half)}


def main(argv: list[str] | None = None) -> None:
    from skills.smollm2.config import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="a key of smollm2.adapters.runs, or 'all'")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    p = load_params(a.params)
    runs = p["adapters"]["runs"]
    names = list(runs) if a.name == "all" else [a.name]
    for name in names:
        if name not in runs:
            raise SystemExit(f"{a.params}: no run {name!r} under smollm2.adapters.runs ({sorted(runs)})")
        out = Path(a.out) if (a.out and len(names) == 1) else Path(p["paths"]["adapters"]) / name
        _, info = train_adapter(p["paths"]["base"], p["paths"]["data"], runs[name], p["adapters"]["common"], out,
                                p.get("eval", {}), log_every=10, replay_dir=p["paths"].get("replay"))
        print(name, json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
