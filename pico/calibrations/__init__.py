"""Calibrations: pre-merge shrinking of shared directions (Pico and its controls), one file each.

A calibration is one function registered with ``@calibration(name, side=...)``. It sees a :class:`Spectrum` of one
side of the batch, X_all = [X_1 .. X_T] = U diag(s) V^T (the stacked B's, or the stacked A's transposed), and
returns the shrink factors alpha_k of the directions u_k; the driver then applies X_t <- X_t + U diag(alpha - 1)
U^T X_t. The same function serves both paths: the general path (``pico.calibrate``) builds the spectrum from an
SVD of X_all, the core space's Gram fast path (``pico.factored``) from the eigendecomposition of X_all^T X_all, and
each applies the alphas in its own form. So the two cannot disagree, and a calibration that cannot run in Gram form
says why (``no_gram=``) instead of silently taking the slow path. Importing this package registers every module in
it: adding a calibration is adding a file. Example (``pico/calibrations/pico_uniform.py``)::

    @calibration("pico-uniform", side="B")
    def pico_uniform(spec: Spectrum, *, kappa: float, gamma: float) -> torch.Tensor:
        \"\"\"control: every direction shrunk by the mean Pico alpha\"\"\"
        return pico_alphas(spec.share, kappa, gamma).mean(-1, keepdim=True).expand_as(spec.share)
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Callable

import torch

from ..registry import Registry


@dataclass
class Spectrum:
    """One side of a batch as a calibration sees it, per module: X_all = U diag(s) V^T."""

    share: torch.Tensor  # (L, k): c_k = s_k^2 / sum_j s_j^2, the share of X_all's energy in direction u_k
    _participation: Callable[[], torch.Tensor]
    modules: list[str] | None = None  # module names, for seeded randomness (None on the Gram path)
    seed: int = 0

    def participation(self) -> torch.Tensor:
        """(L, k, T): ||u_k^T X_t||^2, the energy task t puts in direction k."""
        return self._participation()


@dataclass
class Calibration:
    name: str
    fn: Callable  # (spectrum, *, kappa, gamma) -> alpha (L, k), or (alpha, rotation (L, k, k))
    side: str | None  # "B", "A", or None: no calibration
    summary: str
    no_gram: str  # why the Gram fast path cannot apply it ("" when it can)

    @property
    def gram(self) -> bool:
        return not self.no_gram

    def alphas(self, spec: Spectrum, kappa: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(alpha (L, k), rotation (L, k, k) of the basis or None)."""
        out = self.fn(spec, kappa=kappa, gamma=gamma)
        return out if isinstance(out, tuple) else (out, None)


CALIBRATIONS: Registry[Calibration] = Registry("calibration")
get_calibration = CALIBRATIONS.lookup


def calibration(name: str, *, side: str | None = "B", no_gram: str = ""):
    """Register ``fn(spectrum, *, kappa, gamma)``: it returns the shrink factors alpha (L, k) of ``side``'s
    directions, or (alpha, rotation) to shrink along U @ rotation instead (a rotated basis has no Gram form: such a
    calibration must give ``no_gram``, the reason). ``side=None`` registers the identity (no calibration)."""
    if side not in ("A", "B", None):
        raise ValueError(f"calibration {name!r}: side must be 'A', 'B' or None, got {side!r}")

    def register(fn: Callable) -> Callable:
        summary = (inspect.getdoc(fn) or name).splitlines()[0]
        CALIBRATIONS.register(name, Calibration(name, fn, side, summary, no_gram))
        return fn

    return register


def pico_alphas(c: torch.Tensor, kappa: float, gamma: float = 1.0) -> torch.Tensor:
    """The official Pico rule: alpha_k = (1 / (1 + kappa c_k)) ** gamma."""
    return (1.0 / (1.0 + kappa * c)) ** gamma


for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    importlib.import_module(f"{__name__}.{_info.name}")
