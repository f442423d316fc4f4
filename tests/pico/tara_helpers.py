"""What the TARA tests share: a tiny base with peaked predictions and two adapters on it, and the merged update of a
written adapter."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def peaked_base(make_adapter, root: Path, seed: int, adapter_seeds: tuple[int, int], **config) -> tuple[Path, list[Path]]:
    """A tiny Llama whose predictions are far from uniform (large init), so entropies and replies move visibly, and
    two adapters on it (ranks 4 and 6)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3, **config)
    LlamaForCausalLM(cfg).save_pretrained(root / "base")
    return root / "base", [make_adapter(root / "base", root / "x", r=4, alpha=8, seed=adapter_seeds[0]),
                           make_adapter(root / "base", root / "y", r=6, alpha=6, seed=adapter_seeds[1])]


def delta(path: Path, module: str) -> torch.Tensor:
    """B @ A of ``module`` in the adapter at ``path``, float64."""
    t = load_file(str(path / "adapter_model.safetensors"))
    key = f"base_model.model.{module}.lora_"
    return t[key + "B.weight"].double() @ t[key + "A.weight"].double()


def rel(x, y):
    return float((x - y).norm() / y.norm().clamp_min(1e-30))
