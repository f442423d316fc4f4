"""Train the team adapters: one PEFT LoRA per skill (on that skill only) plus the multi-task LoRA on the union.

Every adapter targets all attention and MLP projections (q, k, v, o, gate, up, down); ranks, alphas and rsLoRA vary
per adapter as configured in ``params.yaml`` (``suite.adapters.runs``).  Half of every batch (``replay_frac``) replays
the base's pre-training mixture, which keeps each update a small edit that leaves the other skills alone.

Each adapter is saved with `save_pretrained` as a normal PEFT directory (``adapter_config.json`` +
``adapter_model.safetensors``) plus ``train_info.json``: the relative update size ||dW||/||W|| and the skill's
accuracy at full and at half LoRA scale (fast greedy decoding on the test split).

Usage: ``python -m skills.adapters --name add [--params params.yaml]`` (``--name all`` trains every run).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from skills.common import accuracy, lr_at, make_batch, seed_all, set_threads, split_line, weighted_lm_loss
from skills.data import read_jsonl, read_pretrain


def lora_config(run: dict, common: dict):
    from peft import LoraConfig

    return LoraConfig(
        r=int(run["r"]),
        lora_alpha=float(run["lora_alpha"]),
        target_modules=list(run.get("target_modules", common["target_modules"])),
        lora_dropout=float(run.get("lora_dropout", common.get("lora_dropout", 0.0))),
        use_rslora=bool(run.get("use_rslora", False)),
        bias="none",
        task_type="CAUSAL_LM",
    )


def train_adapter(base_dir: str | Path, data_dir: str | Path, run: dict, common: dict,
                  out_dir: str | Path | None = None, eval_split: str = "test", log_every: int = 0):
    """Train one LoRA on `run['skills']` (+ replay); returns (peft_model, info). Saves to out_dir when given."""
    from peft import get_peft_model

    from skills.base import load_base

    cfg = {**common, **run}
    set_threads(cfg.get("threads"))
    seed_all(int(cfg["seed"]))
    data_dir = Path(data_dir)
    base = load_base(base_dir)
    model = get_peft_model(base, lora_config(run, common))
    model.train()
    # items are drawn skill-first (uniform over skills), so the 80-row fact table is not drowned by the other skills
    task = {s: [(r["prompt"], r["answer"] + "\n") for r in read_jsonl(data_dir / s / "train.jsonl")]
            for s in cfg["skills"]}
    task_skills = list(task)
    replay = [split_line(x) for x in read_pretrain(data_dir / "pretrain.txt")]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=float(cfg.get("weight_decay", 0.0)))
    rng = random.Random(f"{cfg['seed']}:{','.join(cfg['skills'])}")
    steps, bs = int(cfg["steps"]), int(cfg["batch_size"])
    n_replay = int(round(bs * float(cfg.get("replay_frac", 0.0))))
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, float(cfg["lr"]), int(cfg["warmup"]))
        batch = []
        for _ in range(bs - n_replay):
            items = task[task_skills[rng.randrange(len(task_skills))]]
            batch.append(items[rng.randrange(len(items))])
        batch += [replay[rng.randrange(len(replay))] for _ in range(n_replay)]
        loss = weighted_lm_loss(model, *make_batch(batch, 0.0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_every and (step + 1) % log_every == 0:
            print(json.dumps({"step": step + 1, "loss": round(loss.item(), 4), "sec": round(time.time() - t0, 1)}),
                  flush=True)
    model.eval()
    train_sec = round(time.time() - t0, 1)
    info = {"skills": list(cfg["skills"]), "r": int(run["r"]), "lora_alpha": float(run["lora_alpha"]),
            "use_rslora": bool(run.get("use_rslora", False)), "steps": steps, "final_loss": round(loss.item(), 4)}
    info.update(update_stats(model))
    info.update(scale_accuracy(model, data_dir, cfg["skills"], eval_split))
    info["eval_split"] = eval_split
    if out_dir is not None:
        save_adapter(model, Path(out_dir), base_dir)
        (Path(out_dir) / "train_info.json").write_text(json.dumps(info, indent=1) + "\n")
    # wall time is reported, never saved: the saved files are a function of params and code only
    return model, {**info, "train_sec": train_sec}


def save_adapter(model, out: Path, base_dir: str | Path) -> None:
    """``save_pretrained``, made reproducible byte for byte: PEFT writes ``target_modules`` from a set (its order
    follows the interpreter's hash seed) and the base path as given (absolute paths differ per checkout), and adds
    a model-card stub repeating that path. Here the modules are sorted, the base is the repo-relative path, and the
    stub is left out."""
    from skills.config import portable

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    path = out / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = portable(base_dir)
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "README.md").unlink(missing_ok=True)


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


@torch.no_grad()
def update_stats(model, adapter: str = "default") -> dict:
    """||dW||_F / ||W||_F over all adapted modules together, and the per-module mean / max."""
    num = den = 0.0
    rel = []
    for _, m in _lora_layers(model):
        dw = m.get_delta_weight(adapter)
        w = m.get_base_layer().weight
        a, b = dw.norm().item(), w.norm().item()
        num += a * a
        den += b * b
        rel.append(a / b)
    return {"rel_update": round((num / den) ** 0.5, 4), "rel_update_mean": round(sum(rel) / len(rel), 4),
            "rel_update_max": round(max(rel), 4)}


@torch.no_grad()
def set_lora_scale(model, factor: float, adapter: str = "default") -> None:
    """Multiply the adapter's effective scale by `factor` (relative to its trained alpha/r)."""
    for _, m in _lora_layers(model):
        base_scale = m.lora_alpha[adapter] / (m.r[adapter] ** 0.5 if m.use_rslora[adapter] else m.r[adapter])
        m.scaling[adapter] = base_scale * factor


def scale_accuracy(model, data_dir: Path, skills, split: str = "test", score=None, half: bool = True) -> dict:
    """The skills' accuracy at the adapter's full scale and (``half``) at half scale; ``score(model, records)``
    (default: this suite's exact match)."""
    score = score or accuracy
    recs = {s: read_jsonl(Path(data_dir) / s / f"{split}.jsonl") for s in skills}
    out = {}
    for factor, key in ((1.0, "acc"), (0.5, "acc_half_scale"))[: 2 if half else 1]:
        set_lora_scale(model, factor)
        out[key] = {s: round(score(model, r), 4) for s, r in recs.items()}
    set_lora_scale(model, 1.0)
    return out


def main(argv: list[str] | None = None) -> None:
    from skills.config import load_suite_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="a key of suite.adapters.runs, or 'all'")
    ap.add_argument("--base", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None, help="adapter dir (default <paths.adapters>/<name>)")
    a = ap.parse_args(argv)
    p = load_suite_params(a.params)
    runs = p["adapters"]["runs"]
    names = list(runs) if a.name == "all" else [a.name]
    for name in names:
        out = Path(a.out) if (a.out and len(names) == 1) else Path(p["paths"]["adapters"]) / name
        _, info = train_adapter(a.base or p["paths"]["base"], a.data or p["paths"]["data"], runs[name],
                                p["adapters"]["common"], out)
        print(name, json.dumps(info))


if __name__ == "__main__":
    main()
