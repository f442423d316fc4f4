"""Training TARA's coefficients (or the merged update itself): the base model with its merged layers wrapped, the
per-task baselines or teacher replies, AdamW."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..adapters import AdapterSet
from ..merge import resolve_device
from ..output import Reporter
from ..output import progress as progress_bar
from ..rng import module_generator
from .config import TaraConfig, TaraError
from .inputs import TaskInputs, base_files_digest, tokenize_inputs
from .layers import TaraLinear, build_layers
from .objective import aggregate, entropy_sums
from .teacher import TeacherTask, autocast_context, reply_logits, teach, teacher_key, token_losses


@dataclass
class TaraResult:
    layers: dict[str, TaraLinear]
    baselines: list[float]  # entropy: each own adapter's entropy; teacher: each task's loss at the init
    curve: list[dict] = field(default_factory=list)  # per step: loss and per-task scores (on that step's batches)
    full_scores_init: list[float] = field(default_factory=list)  # per-task scores on all inputs, before / after
    full_scores_final: list[float] = field(default_factory=list)


class TaraTrainer:
    """The merged model with its trainable parameters, the objective and its optimiser. Build it with
    :func:`prepare`; ``step`` does one AdamW update over one batch of every task."""

    def __init__(self, model, layers, inputs: list[TaskInputs], config: TaraConfig, device, pad_id: int,
                 teacher: list[TeacherTask] | None = None):
        self.model, self.layers, self.inputs, self.config = model, layers, inputs, config
        self.device, self.pad_id, self.teacher = device, pad_id, teacher
        self.preference = torch.tensor(config.preference, dtype=torch.float32, device=device)
        self.params = [p for layer in layers.values() for p in layer.trainable()]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.baselines: list[float] | None = None
        self._streams = [self._stream(t) for t in range(len(inputs))]

    # batches: per task, a seeded stream of reshuffled epochs of item indices (the last partial batch of each epoch
    # kept, as a DataLoader with drop_last=False does)
    def _stream(self, t: int):
        gen = module_generator(self.config.seed, f"task{t}", "tara-batches")
        n, bs = len(self.inputs[t].ids), self.config.batch_size
        while True:
            perm = torch.randperm(n, generator=gen).tolist()
            for i in range(0, n, bs):
                yield perm[i:i + bs]

    def steps_per_epoch(self) -> int:
        bs = self.config.batch_size
        return min(self.config.steps_per_epoch, min(math.ceil(len(x.ids) / bs) for x in self.inputs))

    def next_batches(self) -> list[list[int]]:
        return [next(s) for s in self._streams]

    def _losses(self, batches: list[list[int]]) -> torch.Tensor:
        """Per task, the objective's raw value on its batch: the mean entropy, or the mean teacher loss per reply
        token."""
        cfg = self.config
        sizes = [len(rows) for rows in batches]
        if cfg.objective == "entropy":
            # One forward pass over all T batches: the merged model is the same for every task (a causal LM has no
            # per-task head), and with right padding each prompt's positions see exactly what they would see alone.
            rows = [self.inputs[t].ids[j] for t, idx in enumerate(batches) for j in idx]
            with autocast_context(self.device, cfg.autocast):
                sums, counts = entropy_sums(self.model, rows, cfg.positions, self.pad_id, self.device)
            sums, counts = sums.float(), counts.float()
            return torch.stack([s.sum() / c.sum() for s, c in zip(sums.split(sizes), counts.split(sizes))])
        items = [(t, j) for t, idx in enumerate(batches) for j in idx]
        prompts = [self.inputs[t].ids[j] for t, j in items]
        replies = [self.teacher[t].replies[j] for t, j in items]
        logits = reply_logits(self.model, prompts, replies, self.pad_id, self.device, cfg.autocast)
        cat = lambda xs: torch.cat(xs).to(self.device)  # noqa: E731
        tokens = token_losses(logits, cat([torch.tensor(r) for r in replies]),
                              cat([self.teacher[t].topk_ids[j] for t, j in items]),
                              cat([self.teacher[t].topk_logp[j] for t, j in items]), cfg.teacher_loss)
        per_task = [sum(len(self.teacher[t].replies[j]) for j in idx) for t, idx in enumerate(batches)]
        return torch.stack([x.mean() for x in tokens.split(per_task)])

    def scores(self, batches: list[list[int]]) -> torch.Tensor:
        """score_t: entropy minus the own adapter's; teacher: the loss (over its value at the init: balance init)."""
        assert self.baselines is not None, "compute the baselines first"
        losses = self._losses(batches)
        base = torch.tensor(self.baselines, device=self.device)
        if self.config.objective == "entropy":
            return losses - base
        return losses / base.clamp_min(1e-12) if self.config.balance == "init" else losses

    def loss(self, batches) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.scores(batches)
        return aggregate(scores, self.preference, self.config.loss, self.config.mu), scores

    def step(self, batches) -> tuple[float, list[float]]:
        """One AdamW update on one batch per task; returns the loss before the update."""
        loss, scores = self.loss(batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach()), scores.detach().cpu().tolist()

    @torch.no_grad()
    def full_loss(self, t: int, only_task: int | None = None, chunk: int = 64) -> float:
        """The objective's raw value over all of task t's inputs (mean entropy, or mean teacher loss per reply
        token), of the merged model or of one adapter alone."""
        for layer in self.layers.values():
            layer.only_task = only_task
        try:
            n, total, count = len(self.inputs[t].ids), 0.0, 0.0
            for i in range(0, n, chunk):
                idx = list(range(i, min(n, i + chunk)))
                batches = [idx if u == t else [] for u in range(len(self.inputs))]
                w = float(len(idx)) if self.config.objective == "entropy" and self.config.positions == "last" else \
                    float(sum(len(self.inputs[t].ids[j]) for j in idx)) if self.config.objective == "entropy" else \
                    float(sum(len(self.teacher[t].replies[j]) for j in idx))
                total, count = total + float(self._losses(batches)[t]) * w, count + w
            return total / count
        finally:
            for layer in self.layers.values():
                layer.only_task = None

    def compute_baselines(self) -> list[float]:
        """entropy: H_t^FT, each individual (uncalibrated) adapter on its own task's inputs; teacher: each task's
        loss at the start (what ``balance: init`` divides by)."""
        if self.config.objective == "entropy":
            self.baselines = [self.full_loss(t, only_task=t) for t in range(len(self.inputs))]
        else:
            self.baselines = [self.full_loss(t) for t in range(len(self.inputs))]
        return self.baselines

    def full_scores(self) -> list[float]:
        losses = torch.tensor([self.full_loss(t) for t in range(len(self.inputs))])
        base = torch.tensor(self.baselines)
        if self.config.objective == "entropy":
            return (losses - base).tolist()
        return (losses / base.clamp_min(1e-12) if self.config.balance == "init" else losses).tolist()


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
            progress: bool | Reporter = False, cache_dir: str | Path | None = None,
            base_digest: str | None = None) -> TaraTrainer:
    """Load the base model (unless ``model`` is given), wrap its merged layers, tokenize the inputs, and compute each
    adapter's own entropy baseline (entropy objective) or each adapter's teacher replies, read from ``cache_dir``
    when there (teacher objective; see :mod:`pico.tara.teacher`). ``inputs``: one item per adapter, a JSONL path or a
    list of prompts / token ids. ``tokenizer``: a tokenizer object or a path; default: the one saved with the base
    model, if any. ``base_digest``: the base model's content digest for the teacher cache key (default: its
    directory's files hashed)."""
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
    task_inputs = tokenize_inputs(inputs, aset.names, tokenizer, config.max_length, vocab, config.chat_template)
    layers = build_layers(model, aset, config, dev, progress)
    teacher = None
    if config.objective == "teacher":
        aset.hash_sources()
        if base_digest is None:
            base_digest = base_files_digest(base)
        eos = end_tokens(tokenizer, model)
        settings = {"max_new": config.max_new, "topk": config.topk, "eos": eos, "pad": pad_id,
                    "autocast": config.autocast, "model_dtype": model_dtype, "device": dev.type}
        keys = [teacher_key(base_digest, src.sha256, x.ids, settings) for src, x in zip(aset.sources, task_inputs)]
        bar = progress_bar(sum(len(x.ids) for x in task_inputs), progress, "teacher replies", unit="prompt")
        try:
            teacher = teach(model, layers, [x.ids for x in task_inputs], keys, pad_id=pad_id, eos_ids=eos,
                            max_new=config.max_new, topk=config.topk, device=dev, autocast=config.autocast,
                            cache_dir=Path(cache_dir) if cache_dir is not None else None, progress=bar.update)
        finally:
            bar.close()
    trainer = TaraTrainer(model, layers, task_inputs, config, dev, pad_id, teacher)
    trainer.compute_baselines()
    return trainer


def end_tokens(tokenizer, model) -> list[int]:
    """The tokens that end a reply: the tokenizer's end-of-sequence token and the model's generation config's."""
    ids = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if value is not None:
            ids.update([value] if isinstance(value, int) else value)
    return sorted(int(i) for i in ids)


def train(trainer: TaraTrainer, progress: bool | Reporter = True) -> TaraResult:
    """Run the configured steps of AdamW; record the loss curve."""
    cfg = trainer.config
    steps = cfg.total_steps(trainer.steps_per_epoch())
    result = TaraResult(trainer.layers, list(trainer.baselines))
    if cfg.objective == "teacher":  # the baselines are the losses at the init: no second pass
        result.full_scores_init = [1.0 if cfg.balance == "init" else b for b in trainer.baselines]
    else:
        result.full_scores_init = trainer.full_scores()
    bar = progress_bar(steps, progress, f"{cfg.variant}, {cfg.objective} ({len(trainer.inputs)} tasks)",
                       unit="step")
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
