"""Training TARA's coefficients: the base model with its merged layers wrapped, the per-task baselines, AdamW."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..adapters import AdapterSet
from ..merge import resolve_device
from ..output import progress as progress_bar
from ..rng import module_generator
from .config import TaraConfig, TaraError
from .inputs import TaskInputs, tokenize_inputs
from .layers import TaraLinear, build_layers
from .objective import aggregate, entropy_sums


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
    bar = progress_bar(steps, progress, f"{cfg.variant} ({len(trainer.inputs)} tasks)", unit="step")
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
