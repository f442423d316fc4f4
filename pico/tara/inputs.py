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


def read_prompts(path: str | Path) -> list[str | list[int] | dict]:
    """Rows of a JSONL file (see :func:`read_prompt_rows`), without their line numbers."""
    return [row for _, row in read_prompt_rows(path)]


def read_prompt_rows(path: str | Path) -> list[tuple[int, str | list[int] | dict]]:
    """(line number, row) of a JSONL prompts file. A row is its "input_ids" (token ids, used as they are), its
    "messages" (a chat: kept as ``{"messages": [...]}``, for the chat template), its "prompt" (a user message: the
    chat template is applied when ``chat_template`` says so) or its "text" (raw text), in that order of preference.
    Anything else is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TaraError(f"{path}: no such prompts file")
    rows: list[tuple[int, str | list[int] | dict]] = []
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
                rows.append((lineno, ids))
            elif "messages" in row:
                msgs = row["messages"]
                if (not isinstance(msgs, list) or not msgs or not all(
                        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                        for m in msgs)):
                    raise TaraError(f"{path}:{lineno}: \"messages\" must be a non-empty list of "
                                    "{\"role\": ..., \"content\": ...} objects with string values")
                rows.append((lineno, {"messages": msgs}))
            elif isinstance(row.get("prompt"), str) or isinstance(row.get("text"), str):
                rows.append((lineno, {"prompt": row["prompt"]} if isinstance(row.get("prompt"), str) else row["text"]))
            else:
                raise TaraError(f"{path}:{lineno}: no \"prompt\", \"messages\" or \"text\" field (nor "
                                "\"input_ids\")")
    if not rows:
        raise TaraError(f"{path}: holds no prompts")
    return rows


def uses_chat_template(tokenizer, mode: str) -> bool:
    """Whether "prompt" rows go through the chat template: ``on``, ``off``, or ``auto`` (when the tokenizer has one)."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and tokenizer is not None and not has:
        raise TaraError("--chat-template on, but the tokenizer has no chat template")
    return mode == "on" or (mode == "auto" and has)


def encode_row(row, tokenizer, chat: bool) -> list[int]:
    """Token ids of one prompt row: ids as given; a "messages" chat or (with ``chat``) a "prompt" through the chat
    template with the generation prompt added; raw text otherwise."""
    if isinstance(row, list):
        return row
    if tokenizer is None:
        raise TaraError("prompts are text but no tokenizer was found; pass a tokenizer (--tokenizer DIR) or give "
                        "token ids (\"input_ids\")")
    if isinstance(row, dict) and ("messages" in row or chat):
        if not getattr(tokenizer, "chat_template", None):
            raise TaraError("a \"messages\" row needs a tokenizer with a chat template")
        msgs = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(row["prompt"] if isinstance(row, dict) else row)["input_ids"]


def tokenize_inputs(inputs: Sequence, names: Sequence[str], tokenizer, max_length: int,
                    vocab_size: int, chat_template: str = "auto") -> list[TaskInputs]:
    """Turn per-task inputs (a JSONL path, or a list of strings / token id lists / {"messages"} / {"prompt"} rows)
    into token ids; an error names the file and line of a bad row."""
    if len(inputs) != len(names):
        raise TaraError(f"{len(inputs)} prompt sets given for {len(names)} adapters; give one per adapter, "
                        "in adapter order")
    chat = uses_chat_template(tokenizer, chat_template)
    out = []
    for name, item in zip(names, inputs):
        if isinstance(item, (str, Path)):
            rows, origin, digest = read_prompt_rows(item), str(item), sha256_file(Path(item))
        else:
            rows, origin = list(enumerate(item, 1)), "<memory>"
            if not rows:
                raise TaraError(f"{name}: no unlabeled inputs given")
            digest = json_digest([r for _, r in rows])
        ids = []
        for lineno, row in rows:
            where = f"{origin}:{lineno}" if origin != "<memory>" else f"{name}: prompt {lineno}"
            try:
                row = encode_row(row, tokenizer, chat)
            except TaraError as exc:
                raise TaraError(f"{where}: {exc}") from None
            except Exception as exc:  # the tokenizer's own complaint (a bad role, a template error)
                raise TaraError(f"{where}: the tokenizer refused this prompt: {exc}") from None
            row = [int(i) for i in row][-max_length:]
            if not row:
                raise TaraError(f"{where}: the prompt tokenizes to nothing")
            if min(row) < 0 or max(row) >= vocab_size:
                raise TaraError(f"{where}: token id {max(row) if max(row) >= vocab_size else min(row)} is outside "
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


def hash_dir_files(path: str | Path, out: dict) -> None:
    """``out[name]`` = the sha256 of each file of the directory ``path`` (none when it is not one)."""
    path = Path(path)
    if path.is_dir():
        for f in sorted(path.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                out[f.name] = sha256_file(f)


def base_files_digest(base: str | Path) -> str:
    """Content digest of a base model directory (every file's sha256), or of its name when it is not a directory."""
    files: dict = {}
    hash_dir_files(Path(base), files)
    return json_digest(files) if files else json_digest(str(base))
