"""One batch of modules between reading and merging: loaded, calibrated (general path), held for a space to project.

A batch is L modules of equal shape (out, in, ranks); ``calibrate_batch`` (pico/merge.py) asks the recipe's space to
read and calibrate it (pico/spaces/), and the core space may hold it in Gram form instead (pico/factored.py).
"""

from __future__ import annotations

import torch

from . import factored as _factored
from .calibrate import calibrate
from .calibrations import get_calibration
from .linalg import frob_norm_of_product


class CalibratedBatch:
    """One calibrated batch: calibrated factors bs[t] (L, m, r_t), as_[t] (L, r_t, n) (scale absorbed), the
    uncalibrated update norms ||B_t A_t||_F (L, T) and per-module diagnostics.

    On the core-space fast path the batch is held in Gram form (``factored``, pico/factored.py) and ``bs``/``as_``
    are formed only when something asks for them.
    """

    def __init__(self, modules: list[str], ranks: tuple[int, ...], bs: list[torch.Tensor] | None,
                 as_: list[torch.Tensor] | None, source_norms: torch.Tensor, diagnostics: dict[str, torch.Tensor],
                 factored: _factored.FactoredCore | None = None):
        if bs is None and factored is None:
            raise ValueError("a CalibratedBatch needs its factors or their Gram form")
        self.modules, self.ranks = modules, tuple(ranks)
        self._bs, self._as = bs, as_
        self.source_norms, self.diagnostics, self.factored = source_norms, diagnostics, factored

    def _materialize(self) -> None:
        if self._bs is None:
            self._bs, self._as = self.factored.materialize()

    @property
    def bs(self) -> list[torch.Tensor]:
        self._materialize()
        return self._bs

    @property
    def as_(self) -> list[torch.Tensor]:
        self._materialize()
        return self._as


def load_batch(aset, modules: list[str], device: torch.device) -> tuple[list, list]:
    pairs = [aset.factors(m) for m in modules]
    T = len(aset)
    bs = [torch.stack([p[t][0] for p in pairs]).to(device) for t in range(T)]
    as_ = [torch.stack([p[t][1] for p in pairs]).to(device) for t in range(T)]
    return bs, as_


def calibrate_factors(modules: list[str], ranks: tuple[int, ...], bs: list[torch.Tensor], as_: list[torch.Tensor],
                      recipe, diagnostics: bool = True) -> CalibratedBatch:
    """The general path: the recipe's calibration applied to explicit factors (a no-op for 'none')."""
    norms = torch.stack([frob_norm_of_product(b, a) for b, a in zip(bs, as_)], dim=-1)
    diag = {}
    if get_calibration(recipe.calibrate).side is not None:
        bs, as_, diag = calibrate(bs, as_, mode=recipe.calibrate, kappa=recipe.kappa, gamma=recipe.gamma,
                                  rescale_pre=recipe.rescale == "pre", modules=modules, seed=recipe.seed,
                                  diagnostics=diagnostics)
    return CalibratedBatch(modules, ranks, bs, as_, norms, diag)
