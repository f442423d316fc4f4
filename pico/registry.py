"""The method registry: a merge method is one typed function over one batch of modules, registered by name.

Modelled on mergekit's ``@merge_method``: the function's keyword-only parameters, with ``Annotated`` help and their
defaults, *are* the method's config keys and CLI flags, so nothing is declared twice::

    @merge_method("ties", spaces=("full", "core", "knots"))
    def ties(taus, weights, ctx, *, density: Annotated[float, "fraction of entries kept per task"] = 0.7):
        \"\"\"TIES: trim, elect sign by mass, disjoint mean.\"\"\"

``taus`` is (L, T, p, q): L modules of equal shape, T task matrices each in the chosen space (full deltas, Core
Space cores, or KnOTS coordinates); ``weights`` is (T,); the function returns the merged (L, p, q). The driver applies
lambda, reconstructs factors and rescales, so methods hold only their own math.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Annotated, Callable

import torch

SPACES = {
    "full": "dense m x n deltas B_t A_t (baseline; result truncated by SVD to --rank)",
    "core": "Core Space: R x R cores in the SVD bases of the stacked B and A (exact, rank <= sum of ranks)",
    "knots": "KnOTS: shared left singular basis of [dW_1 ... dW_T], per-task coordinates (exact, rank <= R)",
}


@dataclass
class Param:
    name: str
    type: type
    default: object
    help: str


@dataclass
class Method:
    name: str
    fn: Callable
    spaces: tuple[str, ...]
    params: dict[str, Param]
    summary: str
    randomized: bool = False


@dataclass
class Context:
    """What a method may know besides its tensors: module names (for seeded randomness), ranks, space, seed."""

    modules: list[str]
    ranks: tuple[int, ...]
    space: str
    seed: int = 0
    extra: dict = field(default_factory=dict)


METHODS: dict[str, Method] = {}


def merge_method(name: str, *, spaces: tuple[str, ...] = ("full", "core"), randomized: bool = False):
    """Register ``fn`` under ``name``; its keyword-only parameters become config keys and CLI flags."""

    def register(fn: Callable) -> Callable:
        hints = typing.get_type_hints(fn, include_extras=True)
        params = {}
        for p in inspect.signature(fn).parameters.values():
            if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                continue
            hint = hints.get(p.name, float)
            help_text = ""
            if typing.get_origin(hint) is Annotated:
                hint, *meta = typing.get_args(hint)
                help_text = next((m for m in meta if isinstance(m, str)), "")
            params[p.name] = Param(p.name, hint, p.default, help_text)
        summary = (inspect.getdoc(fn) or name).splitlines()[0]
        if name in METHODS:
            raise ValueError(f"merge method {name!r} registered twice")
        METHODS[name] = Method(name, fn, tuple(spaces), params, summary, randomized)
        return fn

    return register


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown merge method {name!r}; choose from {', '.join(sorted(METHODS))} "
                         "(`pico methods` lists them)")
    return METHODS[name]


def all_params() -> dict[str, list[tuple[str, Param]]]:
    """param name -> [(method, Param)], for building one CLI flag per parameter name."""
    out: dict[str, list[tuple[str, Param]]] = {}
    for method in METHODS.values():
        for p in method.params.values():
            out.setdefault(p.name, []).append((method.name, p))
    return out


def apply_weights(taus: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return taus * weights.to(taus).view(1, -1, 1, 1)
