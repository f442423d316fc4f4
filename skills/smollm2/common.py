"""Chat formatting, answer-only training batches and a fast batched greedy scorer for the SmolLM2 suite.

``greedy`` is the report's scorer: the same chat-templated prompts lm-eval builds with ``apply_chat_template=True``
(user message only; the template adds its default system prompt), left-padded batches, ``model.generate`` greedy,
cut at the end-of-turn token - what lm-eval's HF model does, without its per-request overhead. A test checks both
give the same replies on a few items.
"""
from __future__ import annotations

import os
import random
from typing import Sequence

import torch
import torch.nn.functional as F

from skills.smollm2.data import KINDS
from skills.smollm2.extract import correct

DEVICE = torch.device(os.environ.get("SKILLS_DEVICE", "cpu"))


def load_base(base_dir):
    """(model, tokenizer) of a hub-style base directory, float32, eval mode, on DEVICE."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(DEVICE).eval()
    return model, tok


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def chat_prompt(tok, prompt: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)


def end_of_turn(tok) -> str:
    return tok.eos_token


def make_batch(tok, pairs: Sequence[tuple[str, str]]):
    """Right-padded (ids, mask, labels) for (user prompt, answer) pairs; labels are -100 except on the answer and
    the end-of-turn token (answer-only loss)."""
    seqs, labs = [], []
    for prompt, answer in pairs:
        p = tok(chat_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
        a = tok(answer + end_of_turn(tok), add_special_tokens=False)["input_ids"]
        seqs.append(p + a)
        labs.append([-100] * len(p) + a)
    L = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    labels = torch.full((len(seqs), L), -100, dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labs)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, : len(s)] = torch.tensor(lab)
    return ids.to(DEVICE), mask.to(DEVICE), labels.to(DEVICE)


def lm_loss(model, ids, mask, labels, autocast: str | None = None) -> torch.Tensor:
    dtype = {"bf16": torch.bfloat16, None: None, "none": None, "fp32": None}[autocast]
    with torch.autocast(DEVICE.type, dtype=dtype, enabled=dtype is not None):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


@torch.no_grad()
def greedy(model, tok, prompts: Sequence[str], max_new: int = 32, batch_size: int = 64) -> list[str]:
    """Greedy replies (end-of-turn cut off) to each user prompt through the chat template."""
    was_training = model.training
    model.eval()
    old_side = tok.padding_side
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    texts = [chat_prompt(tok, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = [""] * len(texts)
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s: s + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(input_ids=enc["input_ids"].to(DEVICE), attention_mask=enc["attention_mask"].to(DEVICE),
                                 max_new_tokens=max_new, do_sample=False, pad_token_id=pad,
                                 eos_token_id=tok.eos_token_id, temperature=None, top_p=None, top_k=None)
            new = gen[:, enc["input_ids"].shape[1]:]
            for j, i in enumerate(idx):
                out[i] = tok.decode(new[j], skip_special_tokens=True).strip()
    finally:
        tok.padding_side = old_side
    if was_training:
        model.train()
    return out


def score(model, tok, records: Sequence[dict], max_new: int = 32, batch_size: int = 64,
          return_replies: bool = False):
    """Share of records whose extracted reply equals the extracted reference."""
    recs = list(records)
    replies = greedy(model, tok, [r["prompt"] for r in recs], max_new, batch_size)
    ok = [correct(KINDS[r["skill"]], y, r["answer"]) for y, r in zip(replies, recs)]
    acc = sum(ok) / max(1, len(recs))
    return (acc, replies) if return_replies else acc
