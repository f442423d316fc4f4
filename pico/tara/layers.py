"""The trainable merged layer: each targeted linear layer of the base model wrapped with the variant's factors and
its coefficients (docs/tara.md, "How it works")."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..adapters import AdapterSet
from ..batch import load_batch
from ..merge import calibrate_batch, plan_batches
from ..recipe import Recipe
from ..spaces import project
from .config import TaraConfig, TaraError


class TaraLinear(nn.Module):
    """base(x) + ((x A^T) * c) B^T, with c = coeff[index] (or coeff); for tara-b (fold = (T, k)) the coefficients
    weight the T blocks of A's rows, which are summed: base(x) + x (sum_t diag(c_t) A_t)^T B^T, the same function as
    the official B_rep diag(c) A_cat with B_rep = [U | ... | U]. ``only_task`` switches to one original adapter (for
    the baselines)."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, index: torch.Tensor | None,
                 fold: tuple[int, int] | None, n_coeff: int, init: float, originals: list[tuple]):
        super().__init__()
        self.base = base
        self.register_buffer("a", a, persistent=False)
        self.register_buffer("b", b, persistent=False)
        self.register_buffer("index", index, persistent=False)
        self.fold = fold
        self.coeff = nn.Parameter(torch.full((n_coeff,), float(init), dtype=torch.float32, device=a.device))
        self.originals = originals  # [(B_t, A_t)] of the uncalibrated adapters, scale absorbed
        self.only_task: int | None = None

    def forward(self, x):
        y = self.base(x)
        xf = x.to(torch.float32)
        if self.only_task is not None:
            b, a = self.originals[self.only_task]
            return y + ((xf @ a.mT) @ b.mT).to(y.dtype)
        if self.fold is not None:  # tara-b: fold the coefficients into A first (k x n), T times cheaper than (x A^T)
            return y + ((xf @ self._folded_a(self.coeff).mT) @ self.b.mT).to(y.dtype)
        c = self.coeff if self.index is None else self.coeff[self.index]
        return y + (((xf @ self.a.mT) * c) @ self.b.mT).to(y.dtype)

    def _folded_a(self, c: torch.Tensor) -> torch.Tensor:
        """tara-b: sum_t diag(c_t) diag(s) V_t^T, the (k x n) A' of the merged update U A'."""
        T, k = self.fold
        return (c.view(T, k, 1) * self.a.view(T, k, -1)).sum(0)

    def merged_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact (B', A') with B' A' = the current merged update."""
        c = self.coeff.detach()
        if self.fold is not None:  # tara-b: B' = U, A' = sum_t diag(c_t) diag(s) V_t^T (rank <= k <= R)
            return self.b, self._folded_a(c)
        c = c if self.index is None else c[self.index]
        return self.b * c, self.a

    def coefficients(self) -> list:
        c = self.coeff.detach().cpu()
        return c.view(self.fold).tolist() if self.fold is not None else c.tolist()


def _task_index(ranks: Sequence[int]) -> torch.Tensor:
    return torch.cat([torch.full((r,), t, dtype=torch.long) for t, r in enumerate(ranks)])


def build_layers(model: nn.Module, aset: AdapterSet, config: TaraConfig, device: torch.device,
                 progress: bool = False) -> dict[str, TaraLinear]:
    """Replace every merged module of ``model`` by a :class:`TaraLinear` holding the variant's factors."""
    T = len(aset)
    init = config.lam / T
    recipe = Recipe(method="ta", calibrate=config.calibrate, rescale=config.rescale if config.calibrate != "none"
                    else None, seed=config.seed)
    if aset.config.get("fan_in_fan_out"):
        raise TaraError("adapters with fan_in_fan_out (GPT-2 style Conv1D) are not supported by TARA")
    layers = {}
    for batch in plan_batches(aset, "core"):
        bs0, as0 = load_batch(aset, batch, device)
        if config.calibrate != "none":
            cal = calibrate_batch(aset, batch, recipe, device, diagnostics=False)
            bs, as_ = cal.bs, cal.as_
        else:
            bs, as_ = bs0, as0
        ranks = [b.shape[-1] for b in bs]
        if config.variant == "tara-b":
            coords, state = project("knots", bs, as_)  # coords (L, T, k, n) = diag(s) V_t^T; u (L, m, k)
        for i, module in enumerate(batch):
            try:
                target = model.get_submodule(module)
            except AttributeError:
                raise TaraError(f"module {module} of the adapters is not in the base model; wrong base?") from None
            if not isinstance(target, nn.Linear):
                raise TaraError(f"module {module} is a {type(target).__name__}, not a torch.nn.Linear; TARA wraps "
                                "linear layers only")
            m, n, _ = aset.shape(module)
            if tuple(target.weight.shape) != (m, n):
                raise TaraError(f"module {module}: the base layer is {tuple(target.weight.shape)} but the adapters' "
                                f"update is {(m, n)}; wrong base?")
            originals = [(bs0[t][i].contiguous(), as0[t][i].contiguous()) for t in range(T)]
            if config.variant == "tara-b":
                k = int(state["keep"][i].sum())
                a = coords[i, :, :k, :].reshape(T * k, n).contiguous()
                b = state["u"][i, :, :k].contiguous()
                layer = TaraLinear(target, a, b, None, (T, k), T * k, init, originals)
            else:
                a = torch.cat([as_[t][i] for t in range(T)], dim=0)
                b = torch.cat([bs[t][i] for t in range(T)], dim=1)
                if config.variant == "tara-a":
                    layer = TaraLinear(target, a, b, None, None, sum(ranks), init, originals)
                else:
                    layer = TaraLinear(target, a, b, _task_index(ranks).to(device), None, T, init, originals)
            parent, _, child = module.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
            layers[module] = layer
    return layers
