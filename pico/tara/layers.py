"""The trainable merged layer: each targeted linear layer of the base model wrapped with the variant's factors and
its coefficients (docs/tara.md, "How it works"), or, for the core and factors variants, with the merged update of a
data-free init merge and a trainable change to it (:class:`LearnedLinear`)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..adapters import AdapterSet
from ..batch import load_batch
from ..merge import calibrate_batch, merge_batch, merge_in_space, plan_batches
from ..recipe import Recipe, parse_recipe
from ..spaces import get_space, project
from .config import LEARNED, TaraConfig, TaraError


def teacher_update(layer: TaraLinear | LearnedLinear, xf: torch.Tensor) -> torch.Tensor:
    """x A_t^T B_t^T of the one original adapter ``layer.only_task`` (the teacher, or a baseline), in float32."""
    assert layer.only_task is not None
    b, a = layer.originals[layer.only_task]
    return (xf @ a.mT) @ b.mT


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
            return y + teacher_update(self, xf).to(y.dtype)
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

    def trainable(self) -> list[nn.Parameter]:
        return [self.coeff]


class LearnedLinear(nn.Module):
    """base(x) + x A^T B^T where the merged update B A starts as a data-free merge's and changes in training:

    - ``core``: B A = U (M0 + D) V^T, U and V^T the Core Space bases of the adapters, M0 the init merge's R x R
      matrix, D trainable (zero at the start);
    - ``factors``: B A = (B0 + dB)(A0 + dA), the init merge's exact factors and trainable changes to both.

    The trainable parts are changes from the init, so AdamW's weight decay pulls towards the init merge, not to 0.
    Each is measured in units of its init's root-mean-square entry (D = rms(M0) D', and so on), so one learning rate
    means the same relative step in every module (Adam moves every entry by about lr: on raw entries a module with a
    small update would change far more, relative to itself, than one with a large update).
    ``only_task`` switches to one original adapter (the teacher), as in :class:`TaraLinear`."""

    def __init__(self, base: nn.Linear, kind: str, b: torch.Tensor, a: torch.Tensor, m0: torch.Tensor | None,
                 originals: list[tuple]):
        super().__init__()
        self.base, self.kind, self.originals, self.only_task = base, kind, originals, None
        self.register_buffer("b", b, persistent=False)
        self.register_buffer("a", a, persistent=False)
        self.register_buffer("m0", m0, persistent=False)
        rms = lambda t: float(t.pow(2).mean().sqrt()) or 1.0  # noqa: E731
        if kind == "core":
            self.d, self.scale = nn.Parameter(torch.zeros_like(m0)), (rms(m0),)
        else:
            self.db, self.da = nn.Parameter(torch.zeros_like(b)), nn.Parameter(torch.zeros_like(a))
            self.scale = (rms(b), rms(a))

    def _current(self) -> tuple[torch.Tensor, ...]:
        """core: (M,); factors: (B, A)."""
        if self.kind == "core":
            return (self.m0 + self.scale[0] * self.d,)
        return self.b + self.scale[0] * self.db, self.a + self.scale[1] * self.da

    def forward(self, x):
        y = self.base(x)
        xf = x.to(torch.float32)
        if self.only_task is not None:
            return y + teacher_update(self, xf).to(y.dtype)
        if self.kind == "core":
            return y + (((xf @ self.a.mT) @ self._current()[0].mT) @ self.b.mT).to(y.dtype)
        b, a = self._current()
        return y + ((xf @ a.mT) @ b.mT).to(y.dtype)

    def merged_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            if self.kind == "core":
                return self.b @ self._current()[0], self.a
            return self._current()

    def trainable(self) -> list[nn.Parameter]:
        return [self.d] if self.kind == "core" else [self.db, self.da]

    def coefficients(self) -> dict:
        """How far training moved the update: ||dW - dW_init||_F / ||dW_init||_F."""
        with torch.no_grad():
            if self.kind == "core":  # U and V are orthonormal
                return {"relative_change": float(self.scale[0] * self.d.norm() / self.m0.norm().clamp_min(1e-30))}
            b, a = self.merged_factors()
            bc, ac = torch.cat([b, -self.b], 1).double(), torch.cat([a, self.a], 0).double()
            change = torch.trace((bc.mT @ bc) @ (ac @ ac.mT)).clamp_min(0).sqrt()
            b0, a0 = self.b.double(), self.a.double()
            init = torch.trace((b0.mT @ b0) @ (a0 @ a0.mT)).clamp_min(0).sqrt()
            return {"relative_change": float(change / init.clamp_min(1e-30))}


def _task_index(ranks: Sequence[int]) -> torch.Tensor:
    return torch.cat([torch.full((r,), t, dtype=torch.long) for t, r in enumerate(ranks)])


def build_layers(model: nn.Module, aset: AdapterSet, config: TaraConfig, device: torch.device,
                 progress: object = False) -> dict[str, TaraLinear]:
    """Replace every merged module of ``model`` by a :class:`TaraLinear` holding the variant's factors."""
    T = len(aset)
    init = config.lam / T
    recipe = Recipe(method="ta", calibrate=config.calibrate, rescale=config.rescale if config.calibrate != "none"
                    else None, seed=config.seed)
    if config.variant in LEARNED:
        recipe = parse_recipe(config.init)  # resolved: never None here
        if config.variant == "core" and recipe.space != "core":
            raise TaraError(f"variant core trains Core Space matrices: its --init must be a core-space merge, "
                            f"got {config.init!r}")
    if aset.config.get("fan_in_fan_out"):
        raise TaraError("adapters with fan_in_fan_out (GPT-2 style Conv1D) are not supported by TARA")
    layers = {}
    for batch in plan_batches(aset, recipe.space):
        bs0, as0 = load_batch(aset, batch, device)
        if config.variant in LEARNED:
            learned = _learned_factors(aset, batch, recipe, config.variant, device)
        elif config.calibrate != "none":
            cal = calibrate_batch(aset, batch, recipe, device, diagnostics=False)
            bs, as_ = cal.bs, cal.as_
        else:
            bs, as_ = bs0, as0
        ranks = [b.shape[-1] for b in bs0]
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
            if config.variant in LEARNED:
                b, a, m0 = learned[i]
                layer = LearnedLinear(target, config.variant, b, a, m0, originals)
            elif config.variant == "tara-b":
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


def _learned_factors(aset: AdapterSet, batch: list[str], recipe: Recipe, variant: str, device) -> list[tuple]:
    """Per module of ``batch``, the init merge as (B, A, M0): core: (U, V^T, M0) with U M0 V^T the merged update;
    factors: (B0, A0, None), the merge's exact-rank factors."""
    cal = calibrate_batch(aset, batch, recipe, device, diagnostics=False)
    if variant == "factors":
        return [(r.b.float(), r.a.float(), None) for r in merge_batch(cal, recipe, to_cpu=False)]
    merged, state, _, _ = merge_in_space(cal, recipe)
    L, R = merged.shape[0], merged.shape[-1]
    eye = torch.eye(R, dtype=merged.dtype, device=merged.device).expand(L, R, R)
    u, vt, _, _ = get_space("core").reconstruct(eye, state, R)  # B' = U M is linear in M: M = I gives U
    return [(u[i].float().contiguous(), vt[i].float().contiguous(), merged[i].float().contiguous())
            for i in range(L)]
