"""Chat formatting, answer-only training batches and a fast batched greedy scorer for the SmolLM2 suite.

``greedy`` is the report's scorer: the same chat-templated prompts lm-eval builds with ``apply_chat_template=True``
(user message only; the template adds its default system prompt), left-padded batches, ``model.generate`` greedy,
cut at the end-of-turn token - what lm-eval's HF model does, without its per-request overhead. A test checks both
give the same replies on a few items.
"""
from __future__ import annotations

import contextlib
import os
import random
from typing import Sequence

import torch
import torch.nn.functional as F

from skills.smollm2.data import KINDS
from skills.smollm2.extract import correct

DEVICE = torch.device(os.environ.get("SKILLS_DEVICE", "cpu"))


def load_base(base_dir, attn: str | None = None):
    """(model, tokenizer) of a hub-style base directory, float32, eval mode, on DEVICE; ``attn`` picks transformers'
    attention implementation (None: its default, sdpa)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    kw = {"attn_implementation": attn} if attn else {}
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, **kw).to(DEVICE).eval()
    return model, tok


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def chat_prompt(tok, prompt: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)


def end_of_turn(tok) -> str:
    return tok.eos_token


def encode_pair(tok, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(ids, labels) of one chat-templated (user prompt, answer) pair; labels are -100 except on the answer and the
    end-of-turn token (answer-only loss)."""
    p = tok(chat_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    a = tok(answer + end_of_turn(tok), add_special_tokens=False)["input_ids"]
    return p + a, [-100] * len(p) + a


def make_batch(tok, pairs: Sequence[tuple[str, str]]):
    """Right-padded (ids, mask, labels) for (user prompt, answer) pairs (``encode_pair``)."""
    return _pad(tok, [encode_pair(tok, p, a) for p, a in pairs])


def _pad(tok, encoded: Sequence[tuple[list[int], list[int]]]):
    seqs, labs = [s for s, _ in encoded], [lab for _, lab in encoded]
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


def lm_loss(model, ids, mask, labels, autocast: str | None = None, reduction: str = "mean",
            head: str = "answer") -> torch.Tensor:
    """Cross-entropy of the next token at every labelled position (labels -100 elsewhere).

    ``head="answer"``: the vocabulary projection runs on the labelled positions only (the answer tokens, a small
    share of a batch's positions): the decoder's hidden states, then the LM head on those rows; the same loss as
    ``head="full"`` (the model's logits at every position) to float rounding, for less work per training step (the
    49k-row head, forward and backward: bench/RESULTS-smollm2-step.md)."""
    dtype = {"bf16": torch.bfloat16, None: None, "none": None, "fp32": None}[autocast]
    target = labels[:, 1:]
    with torch.autocast(DEVICE.type, dtype=dtype, enabled=dtype is not None):
        if head == "full":
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            return F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=-100, reduction=reduction)
        keep = target != -100
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        logits = model.get_output_embeddings()(hidden[keep])
    return F.cross_entropy(logits.float(), target[keep], reduction=reduction)


def train_step(model, tok, pairs: Sequence[tuple[str, str]], autocast: str | None = None, chunks: int = 1,
               head: str = "answer") -> float:
    """Forward and backward of the answer-token mean loss over ``pairs`` (gradients accumulate in the parameters);
    returns the loss.

    With ``chunks`` > 1 the pairs are sorted by length and run as that many micro-batches, each padded to its own
    longest sequence: the same loss (the sum over every answer token, divided by their total count) for fewer padded
    tokens (replayed replies are ~3x longer than a skill's answers; one batch padded everything to the longest)."""
    enc = sorted((encode_pair(tok, p, a) for p, a in pairs), key=lambda e: len(e[0]))
    n_tokens = sum(sum(1 for x in lab[1:] if x != -100) for _, lab in enc)
    per = -(-len(enc) // max(1, int(chunks)))
    total = 0.0
    for s in range(0, len(enc), per):
        loss = lm_loss(model, *_pad(tok, enc[s: s + per]), autocast=autocast, reduction="sum", head=head) / n_tokens
        loss.backward()
        total += loss.item()
    return total


@contextlib.contextmanager
def bf16_frozen_weights(model, enabled: bool = True):
    """Hold the frozen weights of LoRA-wrapped linear layers in bf16 while training under bf16 autocast.

    Autocast casts every float32 weight to bf16 on each forward; holding the frozen ones in bf16 skips those copies
    and gives the same bits (the cast is the same rounding; checked in tests/skills/test_smollm2.py). The float32
    weights are put back on exit, so what follows (scoring, saving) sees the model as loaded."""
    held = []
    if enabled:
        for name, mod in model.named_modules():
            w = getattr(mod, "weight", None)
            if name.endswith("base_layer") and isinstance(w, torch.nn.Parameter) and not w.requires_grad:
                held.append((w, w.data))
                w.data = w.data.to(torch.bfloat16)
    try:
        yield len(held)
    finally:
        for w, data in held:
            w.data = data


@torch.no_grad()
def greedy(model, tok, prompts: Sequence[str], max_new: int = 32, batch_size: int = 64, progress=None) -> list[str]:
    """Greedy replies (end-of-turn cut off) to each user prompt through the chat template; ``progress(done, total)``
    is called after each batch."""
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
            if progress is not None:
                progress(min(s + batch_size, len(order)), len(order))
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
