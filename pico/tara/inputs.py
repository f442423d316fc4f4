"""TARA's unlabeled inputs: JSONL prompt files or in-memory lists, tokenized and checked; right-padded batches."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..writer import json_digest, sha256_file
from .config import TaraError


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
            digest = json_digest(rows)
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
