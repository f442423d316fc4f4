"""TARA's pseudo-loss: the entropy of the merged model's next-token predictions, aggregated over the tasks."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import collate


def entropy_sums(model: nn.Module, rows: Sequence[list[int]], positions: str, pad_id: int,
                 device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt: the summed Shannon entropy (nats) of the model's next-token distributions at the chosen positions,
    and how many positions that is (1 for "last")."""
    ids, mask, last = collate(rows, pad_id, device)
    if positions == "last":
        logp = F.log_softmax(_last_logits(model, ids, mask, last).float(), dim=-1)
        return -(logp.exp() * logp).sum(-1), torch.ones(len(rows), device=ids.device)
    logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    w = mask.to(logp.dtype)
    return (-(logp.exp() * logp).sum(-1) * w).sum(-1), w.sum(-1)


def mean_entropy(model: nn.Module, rows: Sequence[list[int]], positions: str, pad_id: int, device) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the model's next-token distributions over a batch of prompts (over every
    position of every prompt for "all")."""
    sums, counts = entropy_sums(model, rows, positions, pad_id, device)
    return sums.sum() / counts.sum()


def _last_logits(model, ids, mask, last):
    """(B, V) logits at each row's last prompt position, computing the LM head only there when the model allows."""
    try:
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=last[:, None]).logits
        if out.dim() == 3 and out.shape[:2] == (ids.shape[0], 1):
            return out[:, 0]
    except TypeError:  # a model without logits_to_keep (or without per-row positions)
        pass
    out = model(input_ids=ids, attention_mask=mask).logits
    return out[torch.arange(ids.shape[0], device=ids.device), last]


def aggregate(scores: torch.Tensor, preference: torch.Tensor, loss: str, mu: float) -> torch.Tensor:
    """STCH: mu * log sum_t exp(p_t score_t / mu); linear: sum_t p_t score_t."""
    weighted = preference.to(scores) * scores
    if loss == "stch":
        return mu * torch.logsumexp(weighted / mu, dim=0)
    return weighted.sum()
