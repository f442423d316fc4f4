"""The shared merge primitives of spec section 0 (TRIM, ELECT, DISJOINT-MEAN, DARE), batched over (L, T, ...)."""

from __future__ import annotations

from typing import Annotated

import torch
from annotated_types import Interval

from .rng import module_generator

# The primitives' parameters, declared once for every method that takes them (a method's signature uses the alias;
# the range and help feed validation, the CLI flag and the README table).
Density = Annotated[float, Interval(gt=0, le=1),
                    "fraction of entries kept per task and module (TIES topK; Core-Space Llama: 0.7)"]
DropRate = Annotated[float, Interval(ge=0, lt=1),
                     "DARE drop probability p; survivors are rescaled by 1/(1-p) (Core-Space Llama: 0.9)"]


def trim(x: torch.Tensor, density: float) -> torch.Tensor:
    """TRIM: per task row keep entries with |x| >= the (d - int(d * density))-th smallest |x| (ties kept)."""
    if density >= 1:
        return x
    flat = x.flatten(-2)
    d = flat.shape[-1]
    k = d - int(d * density)
    if k < 1:
        return x
    kth = flat.abs().kthvalue(k, dim=-1, keepdim=True).values
    return torch.where(flat.abs() >= kth, flat, torch.zeros_like(flat)).view_as(x)


def elect(trimmed: torch.Tensor) -> torch.Tensor:
    """ELECT by mass: gamma = sign(sum_t x_t); zero signs go to the module's majority sign."""
    gamma = trimmed.sum(1).sign()
    majority = gamma.flatten(1).sum(-1).sign().view(-1, *([1] * (gamma.dim() - 1)))
    return torch.where(gamma == 0, majority.expand_as(gamma), gamma)


def disjoint_mean(trimmed: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Mean over the tasks whose entry agrees in sign with gamma (exact zeros excluded)."""
    g = gamma.unsqueeze(1)
    agree = torch.where(g > 0, trimmed > 0, trimmed < 0)
    kept = (trimmed * agree).sum(1)
    return kept / agree.sum(1).clamp_min(1)


def ties_merge(x: torch.Tensor, density: float) -> torch.Tensor:
    trimmed = trim(x, density)
    return disjoint_mean(trimmed, elect(trimmed))


def dare(x: torch.Tensor, drop_rate: float, modules: list[str], seed: int) -> torch.Tensor:
    """DARE: drop entries with probability p, rescale survivors by 1/(1-p). The mask of a module is drawn on the CPU
    from (seed, module name), so it is the same whatever the batching, runner or device."""
    if drop_rate <= 0:
        return x
    masks = [torch.rand(x.shape[1:], generator=module_generator(seed, name, "dare")) >= drop_rate for name in modules]
    mask = torch.stack(masks).to(x.device)
    return x * mask / (1 - drop_rate)
