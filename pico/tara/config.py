"""TARA's options: :class:`TaraConfig`, whose annotated fields are at once the config keys, their validation, the
`pico tara` flags and their help (nothing declared twice, as for the merge methods: pico/registry.py)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Annotated, Sequence

from annotated_types import Ge, Gt

from ..calibrations import CALIBRATIONS
from ..errors import PicoError
from ..options import Choices, check_fields
from ..recipe import Recipe, format_recipe, parse_recipe

VARIANTS = {
    "tara-a": "TARA variant A: one coefficient per rank-1 direction of every adapter (R per module)",
    "tara-b": "TARA variant B: KnOTS SVD of [dW_1..dW_T], one coefficient per (task, singular direction) (T*R)",
    "weight": "AdaMerging-style baseline: one coefficient per task per module (T)",
    "core": "the R x R Core Space matrix of the merged update, from the --init merge (R^2 per module)",
    "factors": "the merged LoRA factors B and A themselves, from the --init merge (rank x (m + n) per module)",
}
OBJECTIVES = {
    "entropy": "TARA's: the entropy of the merged model at the prompts minus each own adapter's (the paper)",
    "teacher": "each adapter is the teacher of its own prompts: match its greedy reply's next-token distributions",
}
TEACHER_LOSSES = {"kl": "KL(teacher || merged) per reply token, the teacher's top-k and the rest as one bucket",
                  "ce": "cross-entropy of the teacher's reply tokens (its argmax: hard labels)"}
LOSSES = {"stch": "smooth Tchebycheff: mu * log sum_t exp(p_t score_t / mu)", "linear": "sum_t p_t score_t"}
BALANCES = {"none": "score_t is task t's loss", "init": "score_t is task t's loss over its loss at the init (teacher)"}
POSITIONS = {"last": "next-token distribution at the last prompt position (default)",
             "all": "mean over the next-token distributions at every prompt position"}
CHAT_TEMPLATES = {"auto": "apply the tokenizer's chat template to \"prompt\" rows when it has one",
                  "on": "always (an error when the tokenizer has none)", "off": "never: \"prompt\" is raw text"}
AUTOCASTS = {"none": "the base's dtype", "bf16": "bf16 autocast of the forward passes (CPUs with AMX, GPUs)"}
RESCALES = {"pre": "with --calibrate pico: each adapter keeps its own update norm", "none": "no rescaling"}
INIT_COEFF = 0.4  # official initial coefficient lambda / T (lamda 2.4 at T = 6, 3.2 at T = 8)
ENTROPY_DEFAULTS = {"variant": "tara-a", "batch_size": 16, "lr": 1e-3, "weight_decay": 0.01}  # the official code's
DEFAULT_INIT = "tsv/core lam=0.5"  # the learned variants' start: the best data-free merge of skills/smollm2/RESULTS.md
TEACHER_DEFAULTS = {"variant": "factors", "batch_size": 4, "lr": 1e-2, "weight_decay": 0.0, "steps": 20}  # measured
LEARNED = ("core", "factors")  # variants that train the merged update itself, from an --init merge


class TaraError(PicoError, ValueError):
    """A user-facing problem with TARA's inputs or options."""


@dataclass
class TaraConfig:
    """Everything that decides TARA's output bytes (besides the inputs), validated by :meth:`resolve`. Each field's
    annotation holds its help, its constraints (annotated_types) or its choices: the `pico tara` flags
    (pico/options.py)."""

    variant: Annotated[str | None, Choices(VARIANTS), "what is trained (default: tara-a; factors for the teacher "
                       "objective)"] = None
    objective: Annotated[str, Choices(OBJECTIVES), "what the merged model is trained to do on the prompts"] = \
        "entropy"
    teacher_loss: Annotated[str, Choices(TEACHER_LOSSES), "teacher objective: token-level KL or cross-entropy"] = "kl"
    topk: Annotated[int, Ge(1), "teacher objective, kl: teacher probabilities kept per token"] = 32
    max_new: Annotated[int, Ge(1), "teacher objective: longest reply the teacher generates (tokens)"] = 48
    init: Annotated[str | None, "core / factors: the data-free merge to start from, e.g. 'ta/core lam=0.25' "
                                f"(default: '{DEFAULT_INIT}', the best data-free merge measured)"] = None
    lam: Annotated[float | None, "initial coefficients are lam/T (default 0.4 T: 0.4 each, the official init)"] = None
    mu: Annotated[float, Gt(0), "smooth-Tchebycheff smoothing (official stch_alpha)"] = 1.0
    preference: Annotated[list[float] | None, "comma-separated task weights in SRC order (default uniform; "
                          "normalised)"] = None
    loss: Annotated[str | None, Choices(LOSSES), "aggregation over tasks (default: stch; linear for weight)"] = None
    balance: Annotated[str, Choices(BALANCES), "per-task loss balancing"] = "none"
    epochs: Annotated[int, Ge(0), "epochs (unless --steps)"] = 10
    steps_per_epoch: Annotated[int, Ge(1), "at most this many steps per epoch (and the smallest task's batch "
                                           "count)"] = 50
    steps: Annotated[int | None, Ge(0), "total steps (default: epochs x steps per epoch; 20 for the teacher "
                                        "objective)"] = None
    batch_size: Annotated[int | None, Ge(1), "prompts per task per step (default: 16; 4 for the teacher "
                                             "objective)"] = None
    lr: Annotated[float | None, Gt(0), "AdamW learning rate (default: 1e-3; 1e-2 for the teacher objective)"] = None
    weight_decay: Annotated[float | None, Ge(0), "AdamW weight decay, core / factors: towards the init merge "
                                                 "(default: 0.01; 0 for the teacher objective)"] = None
    positions: Annotated[str, Choices(POSITIONS), "entropy objective: which next-token distributions"] = "last"
    max_length: Annotated[int, Ge(1), "prompts longer than this keep their last tokens"] = 256
    chat_template: Annotated[str, Choices(CHAT_TEMPLATES), "\"prompt\" rows through the tokenizer's chat "
                             "template"] = "auto"
    calibrate: Annotated[str, Choices(CALIBRATIONS), "tara-a, tara-b, weight: start from calibrated factors (pico; "
                         "pico-* are controls)"] = "none"
    rescale: Annotated[str, Choices(RESCALES), "with --calibrate (TARA learns the merged scale itself)"] = "pre"
    autocast: Annotated[str, Choices(AUTOCASTS), "precision of the forward passes (coefficients stay float32)"] = \
        "none"
    seed: Annotated[int, "seed of the batch order"] = 0

    def resolve(self, T: int) -> TaraConfig:
        """A copy with every default filled in for T tasks; raises TaraError naming the problem. The defaults
        of the entropy objective are the official code's; the teacher objective's are what docs/tara.md measured."""
        teacher = self.objective == "teacher"
        filled = {k: v for k, v in (TEACHER_DEFAULTS if teacher else ENTROPY_DEFAULTS).items()
                  if getattr(self, k) is None}
        if filled:
            return TaraConfig(**{**asdict(self), **filled}).resolve(T)
        check_fields(self, "tara", TaraError)  # types, ranges and choices, as declared above
        loss = self.loss or ("linear" if self.variant == "weight" else "stch")
        if self.variant in LEARNED:
            if self.objective != "teacher":
                raise TaraError(f"variant {self.variant} trains the merged update itself, which needs the teacher "
                                "objective (--objective teacher)")
            if self.calibrate != "none":
                raise TaraError(f"variant {self.variant} starts from --init; put the calibration there, e.g. "
                                "'tsv/core lam=0.5 calibrate=pico rescale=pre'")
        elif self.init is not None:
            raise TaraError(f"--init is for the core and factors variants; {self.variant} starts from Task "
                            "Arithmetic with weight lam/T")
        if self.balance != "none" and self.objective != "teacher":
            raise TaraError("balance is for the teacher objective")
        lam = INIT_COEFF * T if self.lam is None else float(self.lam)
        if not math.isfinite(lam):
            raise TaraError(f"lam must be finite, got {lam}")
        init = self.init
        if self.variant in LEARNED:
            init = format_recipe(init_recipe(init))
        return TaraConfig(**{**asdict(self), "lam": lam, "loss": loss, "init": init,
                             "preference": check_preference(self.preference, T)})

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.steps if self.steps is not None else self.epochs * steps_per_epoch

    def to_dict(self) -> dict:
        return asdict(self)


def init_recipe(text: str | None) -> Recipe:
    """The data-free merge a core / factors run starts from: ``text`` (default :data:`DEFAULT_INIT`) parsed by
    :func:`pico.recipe.parse_recipe`."""
    try:
        return parse_recipe(DEFAULT_INIT if text is None else text)
    except (PicoError, ValueError) as exc:
        raise TaraError(f"--init {text!r}: {exc}") from None


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
