"""TARA-Merging: learned per-direction merge coefficients from unlabeled inputs (spec, section 5).

TARA (Jeong, Lee, Yoon; CVPR 2026; official code wooseong97/TARA-Merge) is *not* data-free. Each targeted linear
layer of the base model gets the merged update dW = B_cat diag(c) A_cat with a trainable coefficient vector c, and c is
fitted by AdamW (lr 1e-3) to minimise, over the T tasks, the entropy of the merged model's predictions on each task's
unlabeled inputs minus the entropy of that task's own adapter on the same inputs, aggregated by smooth Tchebycheff:

    score_t = H(merged model on a task-t batch) - H_t^FT,        L = mu * log sum_t exp(p_t score_t / mu)

Parameterisations (coefficients per module):

- ``tara-a``: A_cat = vstack(A_t), B_cat = hstack(s_t B_t) (scale absorbed at load time; the official code puts s_t
  on A, which gives the same product): one coefficient per rank-1 direction b_{t,j} a_{t,j}^T, R = sum_t r_t.
- ``tara-b``: KnOTS-style. [dW_1 | ... | dW_T] = U diag(s) [V_1^T | ... | V_T^T] (top k <= R triplets, which is all of
  them: that matrix has rank <= R); dW = sum_{t,k} c_{t,k} s_k u_k v_{t,k}^T, T * k coefficients. The SVD comes from
  ``pico.spaces.project("knots", ...)``, which never forms an m x Tn matrix.
- ``weight``: the AdaMerging-style baseline, one coefficient per task per module (sum_t pref_t score_t loss by
  default, as in the official scripts).

Every coefficient starts at lambda / T, so at initialisation the merged update is Task Arithmetic with weight
lambda / T per adapter (exactly, in all three variants). The default lambda is 0.4 T: the official init coefficient
is 0.4 for both of its suites (lamda 2.4 at T = 6, 3.2 at T = 8).

**Entropy of a causal LM.** The official LLM setting is sequence *classification* (LlamaForSequenceClassification),
whose logits come from the last non-pad token. The analogue for a causal LM is the next-token distribution at the last
prompt position: the model's first answer token, the one prediction that is about the task. That is the default
(``positions="last"``). ``positions="all"`` averages over every prompt position instead; it also rewards confidence
about the prompt's own (often unpredictable) characters, which is not what the task needs, so it is only an option.

**Output.** One PEFT LoRA adapter (scale 1, like every other method), written with the library writer, with the learned
coefficients folded in exactly: tara-a and weight give B' = B_cat diag(c), A' = A_cat (rank R); tara-b gives
B' = U, A' = sum_t diag(c_t) diag(s) V_t^T, i.e. **rank <= R (not the T*R the official code stores), exact**.
``merge_manifest.json`` holds the sources (sha256), the base model and input files (sha256), the recipe, the learned
coefficients, the per-task baselines and the loss curve; ``loss_curve.png`` plots it.

Deviations from the official code (all small, all deliberate):
- batches: each task's inputs are a seeded stream of reshuffled epochs; the official ``itertools.cycle`` over a
  shuffled DataLoader replays the first epoch's order forever. The T task batches of a step go through the model in
  one forward pass (the official code runs T per-task models that share the merged backbone): a causal LM has no
  per-task head, so the merged model is the same for every task, and with right padding each prompt's positions see
  exactly what they would see alone.
- entropy uses log_softmax instead of log(softmax + 1e-10) (differs by < 1e-9 per token).
- preferences are normalised to sum 1 (uniform = 1/T, which is the official default); the official code uses them as
  given when the length matches and silently falls back to uniform when it does not; we raise an error instead.
- heterogeneous ranks are supported in the ``weight`` variant (the official one assumes equal ranks).
- the optional effective-rank regulariser (lambda_reg = 0 in every official script) is not implemented.
- the forward pass runs in the base model's dtype (float32 by default; ``model_dtype="bfloat16"`` for big models);
  the LoRA path and the coefficients are always float32. The official LLM runs use bf16 autocast.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .adapters import SAFETENSORS_NAME, AdapterError, AdapterSet, load_adapters
from .rng import module_generator
from .errors import OutputExistsError, PicoError
from .merge import (MANIFEST_NAME, _progress, _r, adapter_config, calibrate_batch, load_batch, natural_key, peft_key,
                    plan_batches, resolve_device)
from .recipe import Recipe
from .spaces import project
from .writer import AtomicDir, SafetensorsStreamWriter, sha256_file, write_json

VARIANTS = {
    "tara-a": "TARA variant A: one coefficient per rank-1 direction of every adapter (R per module)",
    "tara-b": "TARA variant B: KnOTS SVD of [dW_1..dW_T], one coefficient per (task, singular direction) (T*R)",
    "weight": "AdaMerging-style baseline: one coefficient per task per module (T)",
}
LOSSES = {"stch": "smooth Tchebycheff: mu * log sum_t exp(p_t score_t / mu)", "linear": "sum_t p_t score_t"}
POSITIONS = {"last": "next-token distribution at the last prompt position (default)",
             "all": "mean over the next-token distributions at every prompt position"}
PLOT_NAME = "loss_curve.png"
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


# ---------------------------------------------------------------------------------------------------------------------
# inputs


@dataclass
class TaskInputs:
    """One task's unlabeled inputs as token id lists, and where they came from (for the manifest)."""

    ids: list[list[int]]
    origin: str
    sha256: str


def read_prompts(path: str | Path) -> list[str | list[int]]:
    """Rows of a JSONL file: the "input_ids" (token ids), "prompt" or "text" field of each, in that order of
    preference. Anything else is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TaraError(f"{path}: no such prompts file")
    rows: list[str | list[int]] = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaraError(f"{path}:{lineno}: not JSON: {exc}") from None
            if not isinstance(row, dict):
                raise TaraError(f"{path}:{lineno}: expected a JSON object with a \"prompt\" (or \"text\") field")
            if "input_ids" in row:
                ids = row["input_ids"]
                if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
                    raise TaraError(f"{path}:{lineno}: input_ids must be a non-empty list of integers")
                rows.append(ids)
            elif isinstance(row.get("prompt"), str) or isinstance(row.get("text"), str):
                rows.append(row["prompt"] if isinstance(row.get("prompt"), str) else row["text"])
            else:
                raise TaraError(f"{path}:{lineno}: no \"prompt\" or \"text\" string field (nor \"input_ids\")")
    if not rows:
        raise TaraError(f"{path}: holds no prompts")
    return rows


def tokenize_inputs(inputs: Sequence, names: Sequence[str], tokenizer, max_length: int,
                    vocab_size: int) -> list[TaskInputs]:
    """Turn per-task inputs (a JSONL path, or a list of strings / token id lists) into token ids."""
    if len(inputs) != len(names):
        raise TaraError(f"{len(inputs)} prompt sets given for {len(names)} adapters; give one per adapter, "
                        "in adapter order")
    out = []
    for name, item in zip(names, inputs):
        if isinstance(item, (str, Path)):
            rows, origin, digest = read_prompts(item), str(item), sha256_file(Path(item))
        else:
            rows, origin = list(item), "<memory>"
            if not rows:
                raise TaraError(f"{name}: no unlabeled inputs given")
            digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
        ids = []
        for row in rows:
            if isinstance(row, str):
                if tokenizer is None:
                    raise TaraError(f"{name}: prompts are text but no tokenizer was found; pass a tokenizer "
                                    "(--tokenizer DIR) or give token ids (\"input_ids\")")
                row = tokenizer(row)["input_ids"]
            row = [int(i) for i in row][-max_length:]
            if not row:
                raise TaraError(f"{name}: a prompt tokenizes to nothing")
            if min(row) < 0 or max(row) >= vocab_size:
                raise TaraError(f"{name}: token id {max(row) if max(row) >= vocab_size else min(row)} is outside "
                                f"the model's vocabulary (size {vocab_size}); wrong tokenizer?")
            ids.append(row)
        out.append(TaskInputs(ids, origin, digest))
    return out


def collate(rows: Sequence[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and the index of each row's last prompt token. Right padding keeps every
    real token's causal context free of pads, so no position needs special handling."""
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    last = torch.tensor([len(r) - 1 for r in rows])
    return ids.to(device), mask.to(device), last.to(device)


# ---------------------------------------------------------------------------------------------------------------------
# the trainable merged layer


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


# ---------------------------------------------------------------------------------------------------------------------
# the pseudo-loss


def entropy_sums(model: nn.Module, rows: Sequence[list[int]], positions: str, pad_id: int,
                 device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt: the summed Shannon entropy (nats) of the model's next-token distributions at the chosen positions,
    and how many positions that is (1 for "last")."""
    ids, mask, last = collate(rows, pad_id, device)
    if positions == "last":
        logp = F.log_softmax(_last_logits(model, ids, mask, last).float(), dim=-1)
        return -(logp.exp() * logp).sum(-1), torch.ones(len(rows), device=ids.device)
    logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    w = mask.to(logp.dtype)
    return (-(logp.exp() * logp).sum(-1) * w).sum(-1), w.sum(-1)


def mean_entropy(model: nn.Module, rows: Sequence[list[int]], positions: str, pad_id: int, device) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the model's next-token distributions over a batch of prompts (over every
    position of every prompt for "all")."""
    sums, counts = entropy_sums(model, rows, positions, pad_id, device)
    return sums.sum() / counts.sum()


def _last_logits(model, ids, mask, last):
    """(B, V) logits at each row's last prompt position, computing the LM head only there when the model allows."""
    try:
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=last[:, None]).logits
        if out.dim() == 3 and out.shape[:2] == (ids.shape[0], 1):
            return out[:, 0]
    except TypeError:  # a model without logits_to_keep (or without per-row positions)
        pass
    out = model(input_ids=ids, attention_mask=mask).logits
    return out[torch.arange(ids.shape[0], device=ids.device), last]


def aggregate(scores: torch.Tensor, preference: torch.Tensor, loss: str, mu: float) -> torch.Tensor:
    """STCH: mu * log sum_t exp(p_t score_t / mu); linear: sum_t p_t score_t."""
    weighted = preference.to(scores) * scores
    if loss == "stch":
        return mu * torch.logsumexp(weighted / mu, dim=0)
    return weighted.sum()


# ---------------------------------------------------------------------------------------------------------------------
# training


@dataclass
class TaraResult:
    layers: dict[str, TaraLinear]
    baselines: list[float]
    curve: list[dict] = field(default_factory=list)  # per step: loss and per-task scores (on that step's batches)
    full_scores_init: list[float] = field(default_factory=list)  # per-task scores on all inputs, before / after
    full_scores_final: list[float] = field(default_factory=list)


class TaraTrainer:
    """The merged model with trainable coefficients, the pseudo-loss and its optimiser. Build it with
    :func:`prepare`; ``step`` does one AdamW update over one batch of every task."""

    def __init__(self, model, layers, inputs: list[TaskInputs], config: TaraConfig, device, pad_id: int):
        self.model, self.layers, self.inputs, self.config = model, layers, inputs, config
        self.device, self.pad_id = device, pad_id
        self.preference = torch.tensor(config.preference, dtype=torch.float32, device=device)
        self.params = [layer.coeff for layer in layers.values()]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.baselines: list[float] | None = None
        self._streams = [self._stream(t) for t in range(len(inputs))]

    # batches: per task, a seeded stream of reshuffled epochs (the last partial batch of each epoch kept, as a
    # DataLoader with drop_last=False does)
    def _stream(self, t: int):
        gen = module_generator(self.config.seed, f"task{t}", "tara-batches")
        n, bs = len(self.inputs[t].ids), self.config.batch_size
        while True:
            perm = torch.randperm(n, generator=gen).tolist()
            for i in range(0, n, bs):
                yield [self.inputs[t].ids[j] for j in perm[i:i + bs]]

    def steps_per_epoch(self) -> int:
        bs = self.config.batch_size
        return min(self.config.steps_per_epoch, min(math.ceil(len(x.ids) / bs) for x in self.inputs))

    def next_batches(self) -> list[list[list[int]]]:
        return [next(s) for s in self._streams]

    def scores(self, batches: list[list[list[int]]]) -> torch.Tensor:
        assert self.baselines is not None, "compute the baselines first"
        # One forward pass over all T batches: the merged model is the same for every task (a causal LM has no
        # per-task head), and with right padding each prompt's positions see exactly what they would see alone.
        sums, counts = entropy_sums(self.model, [r for rows in batches for r in rows], self.config.positions,
                                    self.pad_id, self.device)
        sizes = [len(rows) for rows in batches]
        ents = torch.stack([s.sum() / c.sum() for s, c in zip(sums.split(sizes), counts.split(sizes))])
        return ents - torch.tensor(self.baselines, device=self.device)

    def loss(self, batches) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.scores(batches)
        return aggregate(scores, self.preference, self.config.loss, self.config.mu), scores

    def step(self, batches) -> tuple[float, list[float]]:
        """One AdamW update of the coefficients on one batch per task; returns the loss before the update."""
        loss, scores = self.loss(batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach()), scores.detach().cpu().tolist()

    @torch.no_grad()
    def full_entropy(self, t: int, only_task: int | None = None, chunk: int = 64) -> float:
        """Mean entropy over all of task t's inputs, of the merged model or of one adapter alone."""
        for layer in self.layers.values():
            layer.only_task = only_task
        try:
            rows, total, count = self.inputs[t].ids, 0.0, 0.0
            for i in range(0, len(rows), chunk):
                sums, counts = entropy_sums(self.model, rows[i:i + chunk], self.config.positions, self.pad_id,
                                            self.device)
                total, count = total + float(sums.sum()), count + float(counts.sum())
            return total / count
        finally:
            for layer in self.layers.values():
                layer.only_task = None

    def compute_baselines(self) -> list[float]:
        """H_t^FT: each individual (uncalibrated) adapter on its own task's inputs."""
        self.baselines = [self.full_entropy(t, only_task=t) for t in range(len(self.inputs))]
        return self.baselines

    def full_scores(self) -> list[float]:
        return [self.full_entropy(t) - self.baselines[t] for t in range(len(self.inputs))]


def load_base_model(base: str | Path, device: torch.device, model_dtype: str = "float32"):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=getattr(torch, model_dtype))
    except Exception as exc:
        raise TaraError(f"cannot load the base model from {base}: {exc}") from exc
    model.to(device)
    model.eval()  # no dropout: the official training also runs the merged model in eval mode
    model.requires_grad_(False)
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model


def load_tokenizer(tokenizer: str | Path | None, base: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer or base))
    except Exception as exc:
        if tokenizer is not None:
            raise TaraError(f"cannot load the tokenizer from {tokenizer}: {exc}") from exc
        return None  # fine as long as every prompt comes as token ids


def prepare(base: str | Path, aset: AdapterSet, inputs: Sequence, config: TaraConfig | None = None, *,
            tokenizer=None, device: str = "auto", model_dtype: str = "float32", model=None,
            progress: bool = False) -> TaraTrainer:
    """Load the base model (unless ``model`` is given), wrap its merged layers, tokenize the inputs and compute each
    adapter's own entropy baseline. ``inputs``: one item per adapter, a JSONL path or a list of prompts / token ids.
    ``tokenizer``: a tokenizer object or a path; default: the one saved with the base model, if any."""
    config = (config or TaraConfig()).resolve(len(aset))
    dev = resolve_device(device)
    if model is None:
        model = load_base_model(base, dev, model_dtype)
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer, base)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = pad_id if pad_id is not None else (getattr(model.config, "pad_token_id", None) or 0)
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else int(model.config.vocab_size)
    task_inputs = tokenize_inputs(inputs, aset.names, tokenizer, config.max_length, vocab)
    layers = build_layers(model, aset, config, dev, progress)
    trainer = TaraTrainer(model, layers, task_inputs, config, dev, pad_id)
    trainer.compute_baselines()
    return trainer


def train(trainer: TaraTrainer, progress: bool = True) -> TaraResult:
    """Run the configured epochs of AdamW on the coefficients; record the loss curve."""
    cfg = trainer.config
    steps = cfg.epochs * trainer.steps_per_epoch()
    result = TaraResult(trainer.layers, list(trainer.baselines))
    result.full_scores_init = trainer.full_scores()
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc=f"{cfg.variant} ({len(trainer.inputs)} tasks)", unit="step",
               disable=None if progress else True, leave=False)
    try:
        for step in range(steps):
            loss, scores = trainer.step(trainer.next_batches())
            result.curve.append({"step": step, "epoch": step // trainer.steps_per_epoch(), "loss": loss,
                                 "scores": scores})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
    finally:
        bar.close()
    result.full_scores_final = trainer.full_scores()
    return result


# ---------------------------------------------------------------------------------------------------------------------
# output


def _hash_dir_files(path: Path, out: dict) -> None:
    path = Path(path)
    if path.is_dir():
        for f in sorted(path.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                out[f.name] = sha256_file(f)


def plot_loss_curve(result: TaraResult, names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in result.curve]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    ax1.plot(steps, [p["loss"] for p in result.curve], color="black", lw=1)
    ax1.set_xlabel("step")
    ax1.set_ylabel("pseudo-loss (batch)")
    ax1.set_title(title)
    for t, name in enumerate(names):
        ax2.plot(steps, [p["scores"][t] for p in result.curve], lw=1, label=name)
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.set_xlabel("step")
    ax2.set_ylabel("entropy - own adapter's entropy (nats)")
    ax2.set_title("per-task score")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def write_tara(trainer: TaraTrainer, result: TaraResult, aset: AdapterSet, base: str | Path, out: str | Path, *,
               overwrite: bool = False, dtype: torch.dtype = torch.float32, plot: bool = True,
               base_files: dict | None = None) -> dict:
    """Write the merged PEFT adapter, merge_manifest.json and loss_curve.png atomically; return the manifest."""
    cfg = trainer.config
    modules = sorted(result.layers, key=natural_key)
    factors = {m: result.layers[m].merged_factors() for m in modules}
    plan, ranks = [], {}
    for m in modules:
        b, a = factors[m]
        plan += [(peft_key(m, "A"), tuple(a.shape)), (peft_key(m, "B"), tuple(b.shape))]
        ranks[m] = a.shape[0]
    aset.hash_sources()
    if base_files is None:
        base_files = {}
        _hash_dir_files(Path(base), base_files)
    with AtomicDir(Path(out), overwrite=overwrite) as tmp:
        writer = SafetensorsStreamWriter(tmp / SAFETENSORS_NAME, plan, dtype)
        try:
            for m in modules:
                b, a = factors[m]
                writer.write(peft_key(m, "A"), a)
                writer.write(peft_key(m, "B"), b)
            writer.close()
        finally:
            writer.abort()
        config = adapter_config(aset, ranks)
        write_json(tmp / "adapter_config.json", config)
        files = [SAFETENSORS_NAME, "adapter_config.json"]
        plot_error = None
        if plot and result.curve:
            try:
                plot_loss_curve(result, aset.names, tmp / PLOT_NAME, f"{cfg.variant}, calibrate={cfg.calibrate}")
                files.append(PLOT_NAME)
            except ImportError as exc:  # matplotlib is optional (pico-merge[plot])
                plot_error = f"no plot: {exc}"
        recipe = {"method": cfg.variant, **cfg.to_dict()}
        manifest = {
            "pico_version": __version__,
            "method": cfg.variant,
            "base_model": {"name_or_path": config["base_model_name_or_path"], "revision": config["revision"],
                           "path": str(base), "files": base_files},
            "sources": [s.to_dict() for s in aset.sources],
            "inputs": [{"adapter": name, "origin": x.origin, "sha256": x.sha256, "n": len(x.ids)}
                       for name, x in zip(aset.names, trainer.inputs)],
            "recipe": recipe,
            "recipe_hash": hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest(),
            "skipped_modules": aset.skipped,
            "baselines": {"entropy": dict(zip(aset.names, _r(torch.tensor(result.baselines)))),
                          "positions": cfg.positions},
            "training": {
                "steps": len(result.curve),
                "steps_per_epoch": trainer.steps_per_epoch(),
                "coefficients": sum(layer.coeff.numel() for layer in result.layers.values()),
                "scores_all_inputs_init": dict(zip(aset.names, _r(torch.tensor(result.full_scores_init)))),
                "scores_all_inputs_final": dict(zip(aset.names, _r(torch.tensor(result.full_scores_final)))),
                "loss_all_inputs_init": _r(aggregate(torch.tensor(result.full_scores_init),
                                                     trainer.preference.cpu(), cfg.loss, cfg.mu)),
                "loss_all_inputs_final": _r(aggregate(torch.tensor(result.full_scores_final),
                                                      trainer.preference.cpu(), cfg.loss, cfg.mu)),
                "loss": [_r(torch.tensor(p["loss"])) for p in result.curve],
                "scores": {name: [_r(torch.tensor(p["scores"][t])) for p in result.curve]
                           for t, name in enumerate(aset.names)},
            },
            "output": {"files": {name: sha256_file(tmp / name) for name in files},
                       "dtype": str(dtype).removeprefix("torch."), "modules": len(modules),
                       "max_rank": max(ranks.values()), "plot": plot_error},
            "layers": {m: {"rank": ranks[m], "coefficients": _round(result.layers[m].coefficients())}
                       for m in modules},
        }
        write_json(tmp / MANIFEST_NAME, manifest)
    return manifest


def _round(x):
    if isinstance(x, list):
        return [_round(v) for v in x]
    return float(f"{x:.6g}")


def tara_merge(base: str | Path, sources: AdapterSet | Sequence[str | Path], inputs: Sequence, out: str | Path,
               config: TaraConfig | None = None, *, tokenizer=None, device: str = "auto",
               model_dtype: str = "float32", dtype: torch.dtype = torch.float32, overwrite: bool = False,
               progress: bool = True, plot: bool = True, common_modules_only: bool = False) -> dict:
    """TARA end to end: learn the coefficients and write one PEFT adapter + manifest + loss-curve plot to ``out``.

    ``inputs`` has one item per adapter (a JSONL path with "prompt"/"text"/"input_ids" rows, or a list of prompts or
    token id lists). Deterministic with ``config.seed`` on one machine; atomic. Returns the manifest.
    """
    import time

    aset = sources if isinstance(sources, AdapterSet) else load_adapters(list(sources),
                                                                          common_modules_only=common_modules_only)
    out = Path(out)
    if out.exists() and not overwrite:  # fail before the training, not after
        raise OutputExistsError(f"{out} already exists; pass --force to replace it")
    base_files: dict = {}
    hasher = threading.Thread(target=lambda: (aset.hash_sources(), _hash_dir_files(Path(base), base_files)),
                              daemon=True)  # hashes the inputs while TARA trains
    hasher.start()
    t0 = time.perf_counter()
    trainer = prepare(base, aset, inputs, config, tokenizer=tokenizer, device=device, model_dtype=model_dtype)
    result = train(trainer, progress=progress)
    seconds = time.perf_counter() - t0
    hasher.join()
    manifest = write_tara(trainer, result, aset, base, out, overwrite=overwrite, dtype=dtype, plot=plot,
                          base_files=base_files)
    manifest["seconds"] = seconds  # returned only: the written manifest stays byte-deterministic
    return manifest


# ---------------------------------------------------------------------------------------------------------------------
# CLI (hooked into pico/cli.py)

EPILOG = """examples:
  pico tara ./add ./rev ./sort --base ./base --prompts add.jsonl rev.jsonl sort.jsonl --out merged
  pico tara a b --base ./base --prompts a.jsonl b.jsonl --variant tara-b --calibrate pico --out merged
  pico tara a b --base ./base --prompts a.jsonl b.jsonl --preference 2,1 --epochs 5 --out merged

Each prompts file is a JSONL of unlabeled inputs of the matching adapter's task, one object per line with a
"prompt" (or "text") field, or "input_ids". TARA needs these inputs and T forward/backward passes of the base model
per step; the data-free `pico merge` needs neither."""


def add_tara_parser(sub) -> None:
    import argparse

    p = sub.add_parser("tara", help="TARA: learn per-direction merge weights from unlabeled inputs (not data-free)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SRC", help="adapter directory or hf://org/name@revision")
    p.add_argument("--base", required=True, type=Path, help="base model directory (transformers save_pretrained)")
    p.add_argument("--prompts", required=True, nargs="+", type=Path, metavar="JSONL",
                   help="one JSONL of unlabeled prompts per adapter, in SRC order")
    p.add_argument("--out", required=True, type=Path, help="output directory (must not exist unless --force)")
    p.add_argument("--variant", default="tara-a", choices=list(VARIANTS),
                   help="tara-a: per rank-1 direction (default); tara-b: per task x singular direction; "
                        "weight: AdaMerging-style, per task")
    p.add_argument("--calibrate", default="none", choices=["none", "pico"], help="start from Pico-calibrated factors")
    p.add_argument("--rescale", default="pre", choices=["pre", "none"],
                   help="with --calibrate pico: keep each adapter's own update norm (pre, default) or not")
    p.add_argument("--lam", type=float, help="initial coefficients are lam/T (default: 0.4 T, i.e. 0.4 each)")
    p.add_argument("--mu", type=float, default=1.0, help="smooth-Tchebycheff smoothing (default 1)")
    p.add_argument("--preference", help="comma-separated task weights in SRC order (default uniform; normalised)")
    p.add_argument("--loss", choices=list(LOSSES), help="stch (default for tara-a/b) or linear (default for weight)")
    p.add_argument("--epochs", type=int, default=10, help="default 10")
    p.add_argument("--steps-per-epoch", type=int, default=50,
                   help="at most this many steps per epoch (and at most the smallest task's batch count); default 50")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per task per step (default 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    p.add_argument("--positions", default="last", choices=list(POSITIONS),
                   help="entropy of the next-token distribution at the last prompt position (default) or all")
    p.add_argument("--max-length", type=int, default=256, help="keep the last N tokens of longer prompts")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch order (default 0)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: the base model's)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the base model's forward pass (coefficients and LoRA path stay float32)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written factors (default float32)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--common-modules", action="store_true", help="merge only the modules every adapter has")
    p.add_argument("--no-plot", action="store_true", help="do not write loss_curve.png")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (atomically)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def cmd_tara(args) -> int:
    preference = None
    if args.preference:
        try:
            preference = [float(p) for p in args.preference.split(",")]
        except ValueError:
            raise TaraError(f"--preference must be comma-separated numbers, got {args.preference!r}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TaraConfig(variant=args.variant, lam=args.lam, mu=args.mu, preference=preference, loss=args.loss,
                        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                        lr=args.lr, weight_decay=args.weight_decay, positions=args.positions,
                        max_length=args.max_length, calibrate=args.calibrate, rescale=args.rescale, seed=args.seed)
    aset = load_adapters(args.sources, common_modules_only=args.common_modules)
    config.resolve(len(aset))  # option errors before any model is loaded
    if len(args.prompts) != len(aset):
        raise TaraError(f"{len(args.prompts)} prompt files given for {len(aset)} adapters; give one per adapter, "
                        "in SRC order")
    manifest = tara_merge(args.base, aset, args.prompts, args.out, config, tokenizer=args.tokenizer,
                          device=args.device, model_dtype=args.model_dtype, dtype=getattr(torch, args.dtype),
                          overwrite=args.force, progress=not args.quiet, plot=not args.no_plot)
    if not args.quiet:
        tr = manifest["training"]
        print(f"{config.variant}: {len(aset)} adapters, {tr['coefficients']} coefficients, {tr['steps']} steps in "
              f"{manifest['seconds']:.1f} s; pseudo-loss on all inputs {tr['loss_all_inputs_init']:.4f} -> "
              f"{tr['loss_all_inputs_final']:.4f} -> {args.out} (rank <= {manifest['output']['max_rank']})",
              file=sys.stderr)
    return 0
