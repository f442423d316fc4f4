"""TARA's options: the variants, losses and entropy positions, and :class:`TaraConfig` with its validation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Annotated, Sequence

from annotated_types import Ge, Gt

from ..calibrations import CALIBRATIONS
from ..errors import PicoError
from ..options import Choices, check_fields

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
    """Everything that decides TARA's output bytes (besides the inputs), validated by :meth:`resolve`. The fields are
    the `pico tara` flags (pico/options.py)."""

    variant: Annotated[str, Choices(VARIANTS), "tara-a: per rank-1 direction; tara-b: per task x singular "
                       "direction; weight: AdaMerging-style, per task"] = "tara-a"
    lam: Annotated[float | None, "initial coefficients are lam/T (default: 0.4 T, i.e. 0.4 each, the official "
                   "value)"] = None
    mu: Annotated[float, Gt(0), "smooth-Tchebycheff smoothing (official stch_alpha)"] = 1.0
    preference: Annotated[list[float] | None, "comma-separated task weights in SRC order (default uniform; "
                          "normalised)"] = None
    loss: Annotated[str | None, Choices(LOSSES), "stch (default for tara-a/b) or linear (default for weight), as in "
                    "the official scripts"] = None
    epochs: Annotated[int, Ge(0), "training epochs"] = 10
    steps_per_epoch: Annotated[int, Ge(1), "at most this many steps per epoch (and at most the smallest task's "
                               "batch count)"] = 50
    batch_size: Annotated[int, Ge(1), "prompts per task per step"] = 16
    lr: Annotated[float, Gt(0), "AdamW learning rate"] = 1e-3
    weight_decay: Annotated[float, Ge(0), "AdamW weight decay (torch's default, as the official AdamW(params, lr))"] \
        = 0.01
    positions: Annotated[str, Choices(POSITIONS), "entropy of the next-token distribution at the last prompt "
                         "position, or the mean over all"] = "last"
    max_length: Annotated[int, Ge(1), "keep the last N tokens of longer prompts"] = 256
    calibrate: Annotated[str, Choices(CALIBRATIONS), "start from calibrated factors (pico)"] = "none"
    rescale: Annotated[str, Choices(("pre", "none")), "with --calibrate: keep each adapter's own update norm (pre) "
                       "or not (TARA learns the merged scale itself)"] = "pre"
    seed: Annotated[int, "seed of the batch order"] = 0

    def resolve(self, T: int) -> TaraConfig:
        """A copy with every default filled in for T tasks; raises TaraError naming the problem."""
        if self.variant not in VARIANTS:
            raise TaraError(f"unknown TARA variant {self.variant!r}; choose from {', '.join(VARIANTS)}")
        loss = self.loss or ("linear" if self.variant == "weight" else "stch")
        if loss not in LOSSES:
            raise TaraError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
        if self.positions not in POSITIONS:
            raise TaraError(f"unknown positions {self.positions!r}; choose from {', '.join(POSITIONS)}")
        if self.calibrate not in CALIBRATIONS:
            raise TaraError(f"unknown calibration {self.calibrate!r}; choose from {', '.join(CALIBRATIONS)}")
        if self.rescale not in ("pre", "none"):
            raise TaraError(f"rescale must be 'pre' or 'none' (TARA learns the merged scale itself), "
                            f"got {self.rescale!r}")
        check_fields(self, "tara", TaraError)  # types and ranges, as declared above
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
