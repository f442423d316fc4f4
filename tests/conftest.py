"""Tiny randomly initialised Llama models and real PEFT adapters, built in the tests (no downloads).

Shared by every test folder: the ``base`` and ``adapters`` fixtures, and the builders ``make_base``,
``make_adapter``, ``edit_config``, ``random_prompts`` as fixtures (tests request them; no test imports this file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _make_base(path: Path, seed: int = 0, hidden: int = 32) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def _make_adapter(base: Path, path: Path, *, r: int = 4, alpha: int = 8, seed: int = 1, rslora: bool = False,
                 targets=TARGETS, shared: torch.Tensor | None = None, **extra) -> Path:
    """A real PEFT LoRA adapter with random A and B (B optionally pulled towards shared output directions)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), use_rslora=rslora,
                        init_lora_weights=False, **extra)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name and shared is not None and p.shape[0] == shared.shape[0]:
                p.add_(shared[:, : p.shape[1]] * 3)
    peft_model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    return _make_base(tmp_path_factory.mktemp("base") / "tiny-llama")


@pytest.fixture(scope="session")
def adapters(base, tmp_path_factory) -> list[Path]:
    """Three adapters with mixed ranks and alphas, one rsLoRA, sharing some B directions."""
    root = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(123)
    shared = torch.randn(32, 8)
    return [
        _make_adapter(base, root / "math", r=4, alpha=8, seed=1, shared=shared),
        _make_adapter(base, root / "code", r=8, alpha=8, seed=2, shared=shared),
        _make_adapter(base, root / "med", r=2, alpha=4, seed=3, rslora=True, shared=shared),
    ]


def _edit_config(path: Path, **changes) -> None:
    cfg_path = path / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(changes)
    cfg_path.write_text(json.dumps(cfg))


def _random_prompts(T: int, n: int = 24, vocab: int = 64, seed: int = 0) -> list[list[list[int]]]:
    """T tasks of n random token-id prompts (lengths 3-11) for TARA."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(T):
        lengths = torch.randint(3, 12, (n,), generator=g)
        out.append([torch.randint(4, vocab, (int(k),), generator=g).tolist() for k in lengths])
    return out


@pytest.fixture(scope="session")
def prompt_files(adapters, tmp_path_factory) -> list[Path]:
    """One JSONL of token-id prompts per adapter of ``adapters``."""
    root = tmp_path_factory.mktemp("prompts")
    out = []
    for p, rows in zip(adapters, _random_prompts(len(adapters))):
        path = root / f"{p.name}.jsonl"
        path.write_text("".join(json.dumps({"input_ids": ids}) + "\n" for ids in rows))
        out.append(path)
    return out


@pytest.fixture(scope="session")
def make_base():
    return _make_base


@pytest.fixture(scope="session")
def make_adapter():
    return _make_adapter


@pytest.fixture(scope="session")
def edit_config():
    return _edit_config


@pytest.fixture(scope="session")
def random_prompts():
    return _random_prompts


def pytest_sessionfinish(session, exitstatus):
    """Stop Prefect's ephemeral API servers while pytest's streams are open: left to atexit, their "Stopping
    temporary server" log line hits a closed stream and prints a logging traceback at the end of every run."""
    import sys

    if "prefect.server.api.server" not in sys.modules:
        return
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()
