"""The teacher objective: each adapter teaches the merged model its own behaviour on its own prompts.

For task t, the base model + adapter t (the merged layers switched to that one adapter: ``only_task``) answers each
of task t's prompts greedily, once; its next-token distributions along that reply (the top ``topk`` probabilities of
each position, the rest as one bucket) are kept with the reply. Both are cached on disk by content (the base's files,
the adapter's bytes, the prompts' token ids and every setting that changes them), so a second run with the same
inputs reads them instead of generating. The merged model is then trained so that its next-token distributions along
each reply match the teacher's (``kl``) or give the teacher's tokens (``ce``): per task, the mean over reply tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..writer import json_digest

CACHE_ENV = "PICO_TEACHER_CACHE"


def default_cache_dir() -> Path:
    """``$PICO_TEACHER_CACHE``, else ``$XDG_CACHE_HOME/pico-merge/teacher`` (``~/.cache/pico-merge/teacher``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pico-merge" / "teacher"


@dataclass
class TeacherTask:
    """One task's teacher replies (token ids, the end-of-turn token included when the teacher stopped) and, per
    reply token, the teacher's top-k token ids and log-probabilities."""

    replies: list[list[int]]
    topk_ids: list[torch.Tensor]  # per item (len(reply), k) long
    topk_logp: list[torch.Tensor]  # per item (len(reply), k) float32
    key: str  # the cache key (content digest of everything that decides them)
    cached: bool = False  # read from the cache rather than generated

    def digest(self) -> str:
        return json_digest(self.replies)

    def mean_length(self) -> float:
        return sum(len(r) for r in self.replies) / len(self.replies)


def teacher_key(base_digest: str, adapter_sha: str, prompts: Sequence[list[int]], settings: dict) -> str:
    return json_digest({"pico": __version__, "kind": "tara-teacher-v1", "base": base_digest, "adapter": adapter_sha,
                        "prompts": json_digest([list(p) for p in prompts]), **settings})


def _set_task(layers, t: int | None) -> None:
    for layer in layers.values():
        layer.only_task = t


def autocast_context(device, autocast: str):
    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast == "bf16")


@torch.no_grad()
def generate(model: nn.Module, prompts: Sequence[list[int]], *, pad_id: int, eos_ids: Sequence[int], max_new: int,
             batch_size: int, device, autocast: str = "none", progress=None) -> list[list[int]]:
    """Greedy replies to token-id prompts in left-padded batches (longest first; deterministic for the same prompt
    set), each cut after its first end token (kept) or at ``max_new`` tokens."""
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    out: list[list[int]] = [[] for _ in prompts]
    eos = set(int(e) for e in eos_ids)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        L = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), L), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, L - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[j, L - len(prompts[i]):] = 1
        with autocast_context(device, autocast):
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new,
                                 do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=pad_id, eos_token_id=sorted(eos) or None, use_cache=True)
        for j, i in enumerate(idx):
            reply = []
            for tok in gen[j, L:].tolist():
                reply.append(tok)
                if tok in eos:
                    break
            out[i] = reply
        if progress is not None:
            progress(len(idx))
    return out


def reply_positions(prompts: Sequence[list[int]], replies: Sequence[list[int]], pad_id: int, device):
    """Right-padded prompt + reply (its last token dropped: nothing is predicted after it), and the (row, column)
    of every position that predicts a reply token, in reply order."""
    seqs = [list(p) + list(r[:-1]) for p, r in zip(prompts, replies)]
    L = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    rows, cols = [], []
    for i, (x, p, r) in enumerate(zip(seqs, prompts, replies)):
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
        rows += [i] * len(r)
        cols += range(len(p) - 1, len(p) - 1 + len(r))
    return ids.to(device), mask.to(device), torch.tensor(rows, device=device), torch.tensor(cols, device=device)


def reply_logits(model: nn.Module, prompts, replies, pad_id: int, device, autocast: str = "none") -> torch.Tensor:
    """(sum of reply lengths, vocab) float32 logits of the model at every position that predicts a reply token. The
    LM head runs on those positions only when the model exposes its decoder (``base_model``)."""
    ids, mask, rows, cols = reply_positions(prompts, replies, pad_id, device)
    with autocast_context(device, autocast):
        backbone, head = getattr(model, "base_model", None), model.get_output_embeddings()
        if backbone is not None and backbone is not model and head is not None:
            hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = head(hidden[rows, cols])
        else:
            logits = model(input_ids=ids, attention_mask=mask).logits[rows, cols]
    return logits.float()


@torch.no_grad()
def teacher_topk(model, prompts, replies, *, pad_id: int, topk: int, device, autocast: str = "none",
                 chunk: int = 16) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per item, the top-k token ids and log-probabilities of the model along its reply."""
    ids_out, logp_out = [], []
    for s in range(0, len(prompts), chunk):
        logp = F.log_softmax(reply_logits(model, prompts[s:s + chunk], replies[s:s + chunk], pad_id, device,
                                          autocast), dim=-1)
        val, idx = logp.topk(min(topk, logp.shape[-1]), dim=-1)
        for v, i in zip(val.split([len(r) for r in replies[s:s + chunk]]),
                        idx.split([len(r) for r in replies[s:s + chunk]])):
            ids_out.append(i.cpu())
            logp_out.append(v.cpu())
    return ids_out, logp_out


def token_losses(logits: torch.Tensor, targets: torch.Tensor, topk_ids: torch.Tensor, topk_logp: torch.Tensor,
                 kind: str) -> torch.Tensor:
    """Per reply token: ``kl``, KL(teacher || model) over the teacher's top-k tokens plus one bucket for the rest of
    the vocabulary (the exact KL of those coarsened distributions); ``ce``, -log model(teacher's token)."""
    logq = F.log_softmax(logits, dim=-1)
    if kind == "ce":
        return -logq.gather(-1, targets[:, None])[:, 0]
    p = topk_logp.exp()
    kl = (p * (topk_logp - logq.gather(-1, topk_ids))).sum(-1)
    if topk_ids.shape[-1] >= logits.shape[-1]:  # every token kept: no bucket
        return kl
    p_rest = (1 - p.sum(-1)).clamp_min(0)
    logq_rest = torch.logsumexp(logits.scatter(-1, topk_ids, float("-inf")), -1) - torch.logsumexp(logits, -1)
    return kl + torch.xlogy(p_rest, p_rest) - p_rest * logq_rest


def save_task(task: TeacherTask, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({"lengths": torch.tensor([len(r) for r in task.replies], dtype=torch.long),
               "replies": torch.tensor([t for r in task.replies for t in r], dtype=torch.long),
               "topk_ids": torch.cat(task.topk_ids).to(torch.int32).contiguous(),
               "topk_logp": torch.cat(task.topk_logp).contiguous()}, str(tmp), metadata={"key": task.key})
    tmp.replace(path)


def load_task(path: Path, key: str) -> TeacherTask | None:
    """The cached teacher data under ``key``, or None (absent, unreadable, or another key)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            lengths = f.get_tensor("lengths").tolist()
            flat = f.get_tensor("replies").tolist()
            ids, logp = f.get_tensor("topk_ids").long(), f.get_tensor("topk_logp")
    except Exception:  # a partial or foreign file: regenerate
        return None
    replies, s = [], 0
    for n in lengths:
        replies.append(flat[s:s + n])
        s += n
    return TeacherTask(replies, list(ids.split(lengths)), list(logp.split(lengths)), key, cached=True)


def teach(model: nn.Module, layers, prompts_per_task: Sequence[Sequence[list[int]]], keys: Sequence[str], *,
          pad_id: int, eos_ids: Sequence[int], max_new: int, topk: int, device, autocast: str = "none",
          cache_dir: Path | None = None, batch_size: int = 64, progress=None) -> list[TeacherTask]:
    """Every task's teacher data, read from ``cache_dir`` when there, else generated (and written there)."""
    out = []
    for t, (prompts, key) in enumerate(zip(prompts_per_task, keys)):
        path = Path(cache_dir) / f"{key[:32]}.safetensors" if cache_dir is not None else None
        task = load_task(path, key) if path is not None else None
        if task is None:
            _set_task(layers, t)
            try:
                replies = generate(model, prompts, pad_id=pad_id, eos_ids=eos_ids, max_new=max_new,
                                   batch_size=batch_size, device=device, autocast=autocast, progress=progress)
                ids, logp = teacher_topk(model, prompts, replies, pad_id=pad_id, topk=topk, device=device,
                                         autocast=autocast)
            finally:
                _set_task(layers, None)
            task = TeacherTask(replies, ids, logp, key)
            if path is not None:
                save_task(task, path)
        elif progress is not None:
            progress(len(prompts))
        out.append(task)
    return out
