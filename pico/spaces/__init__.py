"""Where a merge happens: full space, Core Space or KnOTS space (spec sections 1 and 2), one file each.

A space is a :class:`Space` subclass in ``pico/spaces/<name>.py`` registered with ``@space("<name>")``; importing
this package registers every module in it, so adding a space is adding a file. ``project`` turns one batch of factor
pairs into task matrices (L, T, p, q) for a method; ``reconstruct`` turns the merged (L, p, q) back into LoRA factors
B' (L, m, k), A' (L, k, n). Core and KnOTS are exact and never form an m x n matrix; full space forms the dense
deltas and truncates the merge by SVD to the requested rank.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import pkgutil

import torch

from ..batch import calibrate_factors, load_batch
from ..registry import Registry


class Space:
    """The interface of a space; the docstring's first line of a subclass is its summary (``pico methods``, README).

    ``project`` turns one calibrated batch (``pico.batch.CalibratedBatch``) into task matrices (L, T, p, q) and a
    state; ``reconstruct`` turns the merged (L, p, q) back into factors B' (L, m, k), A' (L, k, n), the per-module
    output rank, and the kept energy fraction (None when the space is exact). ``calibrate`` reads and calibrates a
    batch (a space may take a faster route than the general one: the core space's Gram form), and ``compute`` is the
    context a method runs in. ``task_factors`` gives each task matrix as a product of low-rank factors where the
    space has that form (core and full space: rank r_t), for methods that decompose task matrices (TSV).
    """

    name = ""
    summary = ""

    def bytes_per_module(self, m: int, n: int, ranks: tuple[int, ...]) -> int:
        """Working-set bytes of one module in a batch (``plan_batches`` cuts batches to a budget with it)."""
        raise NotImplementedError

    def rank_bound(self, m: int, n: int, ranks: tuple[int, ...], rank: int | None) -> int:
        """The most output rank an (m x n) module can have (the output tensors are planned with it)."""
        raise NotImplementedError

    def calibrate(self, aset, modules: list[str], recipe, device: torch.device, diagnostics: bool = True):
        """Read one batch and apply the recipe's calibration on explicit factors (the general path)."""
        return calibrate_factors(modules, aset.shape(modules[0])[2], *load_batch(aset, modules, device), recipe,
                                 diagnostics)

    def project(self, cal) -> tuple[torch.Tensor, object]:
        return self.project_factors(cal.bs, cal.as_)

    def project_factors(self, bs: list[torch.Tensor], as_: list[torch.Tensor]) -> tuple[torch.Tensor, object]:
        raise NotImplementedError

    def reconstruct(self, merged: torch.Tensor, state, rank: int):
        raise NotImplementedError

    def task_factors(self, cal, state) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Each task matrix of ``project`` as a product of its low-rank factors, (P_t (L, p, r_t), Q_t (L, r_t, q)),
        or None where the space has no such form (``registry.Context.factors``)."""
        return None

    def compute(self, state, taus: torch.Tensor):
        return contextlib.nullcontext()


SPACES: Registry[Space] = Registry("space")
get_space = SPACES.lookup


def space(name: str):
    """Register a :class:`Space` subclass under ``name`` (one instance: a space holds no state between batches)."""

    def register(cls: type[Space]) -> type[Space]:
        obj = cls()
        obj.name, obj.summary = name, (inspect.getdoc(cls) or name).splitlines()[0]
        SPACES.register(name, obj)
        return cls

    return register


def project(space: str, bs: list[torch.Tensor], as_: list[torch.Tensor]) -> tuple[torch.Tensor, object]:
    """Task matrices (L, T, p, q) of explicit factors in ``space``, and the state ``reconstruct`` needs."""
    return get_space(space).project_factors(bs, as_)


def reconstruct(space: str, merged: torch.Tensor, state, rank: int):
    """Factors (B', A') with B' A' = the merged update, the per-module output rank and the kept energy fraction
    (ones for the exact spaces)."""
    b, a, out_rank, kept = get_space(space).reconstruct(merged, state, rank)
    return b, a, out_rank, torch.ones(merged.shape[0]) if kept is None else kept


for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    importlib.import_module(f"{__name__}.{_info.name}")
