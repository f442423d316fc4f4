"""Shared training / inference helpers: batching with answer-weighted loss, LR schedule, fast greedy decoding."""
from __future__ import annotations

import math
import os
import random
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from skills.tokenizer import PAD_ID, decode, encode

# Where training and the fast decoder run.  The suite is built on CPU; SKILLS_DEVICE=cuda is only for design sweeps.
DEVICE = torch.device(os.environ.get("SKILLS_DEVICE", "cpu"))


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(int(n))


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def split_line(line: str) -> tuple[str, str]:
    """'tag input=answer\\n' -> ('tag input=', 'answer\\n') (split at the first '=' after the tag).

    The code skill has '=' inside its input ("code a=3;b=4;a+b="); the prompt always ends at the LAST '=' before the
    answer, and answers never contain '='."""
    i = line.rstrip("\n").rfind("=")
    return line[: i + 1], line[i + 1:]


def make_batch(pairs: Sequence[tuple[str, str]], prompt_loss_weight: float = 0.0):
    """Right-padded ids, attention mask, next-token targets and per-target weights for (prompt, answer) pairs."""
    seqs, wts = [], []
    for prompt, answer in pairs:
        p, a = encode(prompt), encode(answer)
        seqs.append(p + a)
        # weight of predicting token j+1 from position j
        wts.append([prompt_loss_weight] * (len(p) - 1) + [1.0] * len(a))
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    w = torch.zeros((len(seqs), L - 1))
    for i, (s, ws) in enumerate(zip(seqs, wts)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        w[i, : len(ws)] = torch.tensor(ws)
    return ids.to(DEVICE), mask.to(DEVICE), w.to(DEVICE)


def weighted_lm_loss(model, ids, mask, w) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
    return (nll * w.reshape(-1)).sum() / w.sum().clamp_min(1e-8)


def lr_at(step: int, total: int, peak: float, warmup: int, final_frac: float = 0.05) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def greedy(model, prompts: Sequence[str], max_new: int = 10, batch_size: int = 256) -> list[str]:
    """Greedy continuation of each prompt up to the first newline (left-padded batches, KV cache).

    Equivalent to what lm-eval's HF model does with ``until: ["\\n"]`` and ``do_sample: false``; used for fast
    monitoring inside training loops (the benchmark numbers themselves come from `skills.evaluate`)."""
    was_training = model.training
    model.eval()
    out: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    nl = encode("\n")[0]
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        enc = [encode(prompts[i]) for i in idx]
        L = max(len(e) for e in enc)
        ids = torch.full((len(enc), L), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(enc), L), dtype=torch.long)
        for j, e in enumerate(enc):
            ids[j, L - len(e):] = torch.tensor(e)
            mask[j, L - len(e):] = 1
        ids, mask = ids.to(DEVICE), mask.to(DEVICE)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        past = res.past_key_values
        nxt = res.logits[:, -1].argmax(-1)
        gen = [nxt]
        done = nxt == nl
        last_pos = pos[:, -1]
        for _ in range(max_new - 1):
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones((len(enc), 1), dtype=torch.long, device=DEVICE)], dim=1)
            last_pos = last_pos + 1
            res = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                        past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = res.logits[:, -1].argmax(-1)
            gen.append(nxt)
            done = done | (nxt == nl)
        toks = torch.stack(gen, 1).tolist()
        for j, i in enumerate(idx):
            txt = decode(toks[j])
            out[i] = txt.split("\n", 1)[0]
    if was_training:
        model.train()
    return out


def accuracy(model, records: Iterable[dict], max_new: int = 10, batch_size: int = 256) -> float:
    recs = list(records)
    preds = greedy(model, [r["prompt"] for r in recs], max_new=max_new, batch_size=batch_size)
    return sum(p.strip() == r["answer"] for p, r in zip(preds, recs)) / max(1, len(recs))


def rule_rates(model, records: Sequence[dict], max_new: int = 10, batch_size: int = 256) -> dict:
    """Share of answers following the correct rule, the wrong rule (where they differ), or neither."""
    preds = greedy(model, [r["prompt"] for r in records], max_new=max_new, batch_size=batch_size)
    c = sum(p == r["answer"] for p, r in zip(preds, records))
    w = sum(p == r["wrong"] != r["answer"] for p, r in zip(preds, records))
    n = max(1, len(records))
    return {"correct": c / n, "wrong_rule": w / n, "other": (len(records) - c - w) / n}
