"""The method registry. Methods, spaces and calibrations are each one file registered by a decorator: methods here,
spaces in ``pico/spaces/__init__.py``, calibrations in ``pico/calibrations/__init__.py``.

A **method** is one typed function over one batch of modules (``pico/methods/``), modelled on mergekit's
``@merge_method``: the function's keyword-only parameters, with their ``Annotated`` constraints and help and their
defaults, *are* the method's config keys, CLI flags, validation and documentation, so nothing is declared twice::

    @merge_method("ties", spaces=("full", "core", "knots"), reference_url="https://arxiv.org/abs/2306.01708")
    def ties(taus, weights, ctx, *, density: Density = 0.7):  # Density: Annotated[float, Interval(gt=0, le=1), help]
        \"\"\"TIES: trim, elect sign by mass, disjoint mean.\"\"\"

``taus`` is (L, T, p, q): L modules of equal shape, T task matrices each in the chosen space (full deltas, Core
Space cores, or KnOTS coordinates); ``weights`` is (T,); the function returns the merged (L, p, q). The driver applies
lambda, reconstructs factors and rescales, so methods hold only their own math.

A **space** (``pico/spaces/``) is a :class:`Space` subclass registered with ``@space(name)``: how a batch of factor
pairs becomes task matrices and back. A **calibration** (``pico/calibrations/``) is one function registered with
``@calibration(name, side=...)`` that turns the spectrum of the stacked B (or A) factors into per-direction shrink
factors; the merge driver applies them on the general path (explicit factors) and on the core-space Gram fast path
alike, so the two are the same code (see ``pico/calibrations/__init__.py``).
"""

from __future__ import annotations

import inspect
import operator
import typing
from dataclasses import dataclass
from typing import Annotated, Callable, TypeVar

import annotated_types as at
import torch

from .errors import RecipeError

T = TypeVar("T")


class Registry(dict[str, T]):
    """Names to the registered objects of one kind: methods, spaces, calibrations, the CLI's commands (lm-eval's
    ``Registry`` is the model). A name is registered once; an unknown name is an error that lists the choices."""

    def __init__(self, kind: str, hint: str = "", sort: bool = False):
        super().__init__()
        self.kind, self.hint, self.sort = kind, hint, sort

    def register(self, name: str, item: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self[name] = item
        return item

    def lookup(self, name: str) -> T:
        if name not in self:
            names = sorted(self) if self.sort else list(self)
            raise RecipeError(f"unknown {self.kind} {name!r}; choose from {', '.join(names)}{self.hint}")
        return self[name]


_BOUNDS = {at.Gt: ("gt", operator.gt), at.Ge: ("ge", operator.ge), at.Lt: ("lt", operator.lt),
           at.Le: ("le", operator.le)}


@dataclass
class Param:
    name: str
    type: type
    default: object
    help: str
    constraints: tuple = ()  # annotated_types Gt, Ge, Lt, Le (an Interval is expanded into them)

    def allowed(self) -> str:
        """The allowed range in interval notation, e.g. "(0, 1]"; "" when unconstrained."""
        b = {_BOUNDS[type(c)][0]: getattr(c, _BOUNDS[type(c)][0]) for c in self.constraints}
        if not b:
            return ""
        low = f"({b['gt']}" if "gt" in b else f"[{b['ge']}" if "ge" in b else "(-inf"
        high = f"{b['lt']})" if "lt" in b else f"{b['le']}]" if "le" in b else "inf)"
        return f"{low}, {high}"

    def check(self, value, owner: str):
        """``value`` coerced to the parameter's type and checked against its constraints; a RecipeError naming the
        parameter, the value and the allowed range otherwise."""
        try:
            value = self.type(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{owner}: {self.name}={value!r} is not a {self.type.__name__}") from None
        for c in self.constraints:
            key, op = _BOUNDS[type(c)]
            if not op(value, getattr(c, key)):
                raise RecipeError(f"{owner}: {self.name} must be in {self.allowed()}, got {value!r} ({self.help})")
        return value


@dataclass
class Method:
    name: str
    fn: Callable
    spaces: tuple[str, ...]
    params: dict[str, Param]
    summary: str
    reference_url: str = ""  # the paper (the README's table links it)


@dataclass
class Context:
    """What a method may know besides its tensors: module names (for seeded randomness), ranks, space, seed, and
    where the space has them, each task matrix's low-rank factors ``factors[t]`` = (P_t (L, p, r_t), Q_t (L, r_t, q))
    with taus[:, t] = P_t Q_t up to rounding (unweighted), for exact low-rank algebra (TSV's per-task SVDs)."""

    modules: list[str]
    ranks: tuple[int, ...]
    space: str
    seed: int = 0
    factors: list[tuple[torch.Tensor, torch.Tensor]] | None = None


METHODS: Registry[Method] = Registry("merge method", " (`pico methods` lists them)", sort=True)
get_method = METHODS.lookup


def param_of(name: str, hint, default, error: type[Exception] = TypeError) -> Param:
    """A parameter from its annotation: ``Annotated[type, Gt/Ge/Lt/Le or Interval..., "help"]`` (or a bare type)."""
    help_text, constraints = "", []
    if typing.get_origin(hint) is Annotated:
        hint, *meta = typing.get_args(hint)
        for m in meta:
            if isinstance(m, str):
                help_text = help_text or m
            elif isinstance(m, at.GroupedMetadata):  # Interval(gt=0, le=1) -> Gt(0), Le(1)
                constraints += [c for c in m if c is not None]
            elif type(m) in _BOUNDS:
                constraints.append(m)
            else:
                raise error(f"parameter {name}: unsupported annotation {m!r} (use annotated_types Gt/Ge/Lt/Le or "
                            "Interval, and a help string)")
    return Param(name, hint, default, help_text, tuple(constraints))


def merge_method(name: str, *, spaces: tuple[str, ...], reference_url: str = ""):
    """Register ``fn`` under ``name`` for the ``spaces`` it runs in; its keyword-only parameters become config keys
    and CLI flags; ``reference_url``: the method's paper."""

    def register(fn: Callable) -> Callable:
        hints = typing.get_type_hints(fn, include_extras=True)
        params = {p.name: param_of(p.name, hints.get(p.name, float), p.default)
                  for p in inspect.signature(fn).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        for p in params.values():
            if p.default is inspect.Parameter.empty:
                raise TypeError(f"merge method {name!r}: parameter {p.name} needs a default")
            p.check(p.default, f"merge method {name!r} (its default)")
        summary = (inspect.getdoc(fn) or name).splitlines()[0]
        METHODS.register(name, Method(name, fn, tuple(spaces), params, summary, reference_url))
        return fn

    return register


def all_params() -> dict[str, list[tuple[str, Param]]]:
    """param name -> [(method, Param)], for building one CLI flag per parameter name."""
    out: dict[str, list[tuple[str, Param]]] = {}
    for method in METHODS.values():
        for p in method.params.values():
            out.setdefault(p.name, []).append((method.name, p))
    return out


def apply_weights(taus: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return taus * weights.to(taus).view(1, -1, 1, 1)
