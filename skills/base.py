"""Pre-train the suite's base model: a tiny character-level `LlamaForCausalLM` on the weak-skill mixture.

Saved with `save_pretrained` together with its tokenizer in one directory, so it loads like a hub model:
``AutoModelForCausalLM.from_pretrained(DIR)`` / ``AutoTokenizer.from_pretrained(DIR)``.

Usage: ``python -m skills.base [--params params.yaml] [--data DIR] [--out DIR]``.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from skills.common import (DEVICE, accuracy, lr_at, make_batch, rule_rates, seed_all, set_threads, split_line,
                           weighted_lm_loss)
from skills.data import read_jsonl, read_pretrain
from skills.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, build_tokenizer


def make_model(cfg: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=int(cfg["num_attention_heads"]),
        num_key_value_heads=int(cfg["num_attention_heads"]),
        max_position_embeddings=int(cfg["max_position_embeddings"]),
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    return LlamaForCausalLM(conf)


def train_base(cfg: dict, data_dir: str | Path, out_dir: str | Path | None = None, log_every: int = 250,
               eval_records: dict[str, list[dict]] | None = None) -> tuple[object, dict]:
    """Train from scratch on <data_dir>/pretrain.txt; save model + tokenizer to out_dir when given."""
    set_threads(cfg.get("threads"))
    seed_all(int(cfg["seed"]))
    lines = read_pretrain(Path(data_dir) / "pretrain.txt")
    pairs = [split_line(x) for x in lines]
    model = make_model(cfg).to(DEVICE)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(cfg["weight_decay"])},
                             {"params": no_decay, "weight_decay": 0.0}], lr=float(cfg["lr"]), betas=(0.9, 0.98))
    rng = random.Random(int(cfg["seed"]))
    steps, bs = int(cfg["steps"]), int(cfg["batch_size"])
    plw = float(cfg.get("prompt_loss_weight", 0.0))
    t0 = time.time()
    log = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, float(cfg["lr"]), int(cfg["warmup"]))
        batch = [pairs[rng.randrange(len(pairs))] for _ in range(bs)]
        loss = weighted_lm_loss(model, *make_batch(batch, plw))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            entry = {"step": step + 1, "loss": round(loss.item(), 4)}
            if eval_records:
                entry["acc"] = {s: round(accuracy(model, r), 3) for s, r in eval_records.items()}
            log.append(entry)
            print(json.dumps({**entry, "sec": round(time.time() - t0, 1)}), flush=True)
    model.eval()
    # wall time is printed, never saved: train_info.json (a DVC output) depends on params and code only
    print(json.dumps({"train_sec": round(time.time() - t0, 1)}), flush=True)
    info = {"params": sum(p.numel() for p in model.parameters()), "log": log}
    if out_dir is not None:
        save_base(model, out_dir)
    return model, info


def save_base(model, out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)


def load_base(path: str | Path):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path).to(DEVICE)
    m.eval()
    return m


def main(argv: list[str] | None = None) -> None:
    from skills.config import load_suite_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    p = load_suite_params(a.params)
    data_dir = Path(a.data or p["paths"]["data"])
    out = Path(a.out or p["paths"]["base"])
    skills = p["data"]["skills"]
    val = {s: read_jsonl(data_dir / s / "validation.jsonl") for s in skills}
    model, info = train_base(p["base"], data_dir, out, eval_records=None)
    info["validation"] = {s: rule_rates(model, val[s]) for s in skills}
    (out / "train_info.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info["validation"], indent=1))


if __name__ == "__main__":
    main()
