"""TARA's options: the variants, losses and entropy positions, and :class:`TaraConfig` with its validation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from ..errors import PicoError

VARIANTS = {
    "tara-a": "TARA variant A: one coefficient per rank-1 direction of every adapter (R per module)",
    "tara-b": "TARA variant B: KnOTS SVD of [dW_1..dW_T], one coefficient per (task, singular direction) (T*R)",
    "weight": "AdaMerging-style baseline: one coefficient per task per module (T)",
}
LOSSES = {"stch": "smooth Tchebycheff: mu * log sum_t exp(p_t score_t / mu)", "linear": "sum_t p_t score_t"}
POSITIONS = {"last": "next-token distribution at the last prompt position (default)",
             "all": "mean over the next-token distributions at every prompt position"}
INIT_COEFF = 0.4  # official initial coefficient lambda / T (lamda 2.4 at T = 6, 3.2 at T = 8)


class TaraError(PicoError, ValueError):
    """A user-facing problem with TARA's inputs or options."""


@dataclass
class TaraConfig:
    """Everything that decides TARA's output bytes (besides the inputs), validated by :meth:`resolve`."""

    variant: str = "tara-a"
    lam: float | None = None  # None: 0.4 * T (initial coefficient 0.4, the official value)
    mu: float = 1.0  # STCH smoothing (official stch_alpha)
    preference: list[float] | None = None  # None: uniform; normalised to sum 1
    loss: str | None = None  # None: "stch" for tara-a/b, "linear" for weight (as in the official scripts)
    epochs: int = 10
    steps_per_epoch: int = 50  # at most; min(this, smallest task's number of batches)
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01  # torch AdamW default, what the official AdamW(params, lr) uses
    positions: str = "last"
    max_length: int = 256  # prompts longer than this keep their last max_length tokens
    calibrate: str = "none"  # "pico": start from Pico-calibrated factors
    rescale: str = "pre"  # with calibrate="pico": "pre" keeps each adapter's own update norm, or "none"
    seed: int = 0

    def resolve(self, T: int) -> TaraConfig:
        """A copy with every default filled in for T tasks; raises TaraError naming the problem."""
        if self.variant not in VARIANTS:
            raise TaraError(f"unknown TARA variant {self.variant!r}; choose from {', '.join(VARIANTS)}")
        loss = self.loss or ("linear" if self.variant == "weight" else "stch")
        if loss not in LOSSES:
            raise TaraError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
        if self.positions not in POSITIONS:
            raise TaraError(f"unknown positions {self.positions!r}; choose from {', '.join(POSITIONS)}")
        if self.calibrate not in ("none", "pico"):
            raise TaraError(f"calibrate must be 'none' or 'pico', got {self.calibrate!r}")
        if self.rescale not in ("pre", "none"):
            raise TaraError(f"rescale must be 'pre' or 'none' (TARA learns the merged scale itself), "
                            f"got {self.rescale!r}")
        if not self.mu > 0:
            raise TaraError(f"mu (the STCH smoothing) must be > 0, got {self.mu}")
        for name in ("epochs",):
            if getattr(self, name) < 0:
                raise TaraError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("steps_per_epoch", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise TaraError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise TaraError(f"lr must be > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}")
        lam = INIT_COEFF * T if self.lam is None else float(self.lam)
        if not math.isfinite(lam):
            raise TaraError(f"lam must be finite, got {lam}")
        return TaraConfig(**{**asdict(self), "lam": lam, "loss": loss,
                             "preference": check_preference(self.preference, T)})

    def to_dict(self) -> dict:
        return asdict(self)


def check_preference(preference: Sequence[float] | None, T: int) -> list[float]:
    """Uniform when None; else T finite, non-negative numbers (not all zero), normalised to sum 1."""
    if preference is None:
        return [1.0 / T] * T
    pref = [float(p) for p in preference]
    if len(pref) != T:
        raise TaraError(f"preference vector has {len(pref)} entries but there are {T} adapters; give one "
                        "non-negative weight per adapter, in adapter order")
    bad = [(i, p) for i, p in enumerate(pref) if not math.isfinite(p) or p < 0]
    if bad:
        i, p = bad[0]
        raise TaraError(f"preference entries must be finite and >= 0, but entry {i} is {p}")
    total = sum(pref)
    if total <= 0:
        raise TaraError("preference vector is all zeros; at least one task needs a positive weight")
    return [p / total for p in pref]
