"""A miniature configuration of the SmolLM2 suite for tests: a tiny random Llama with a character-level tokenizer
and a ChatML chat template (the same turn markers as SmolLM2), few items, few steps - every stage of the real code.

    from skills.smollm2.tiny import build_tiny
    paths = build_tiny("/tmp/mini")   # {"base", "data", "tasks", "adapters": {name: dir}}

Seconds on a CPU; the models are far too small to be accurate, only to be real.
"""
from __future__ import annotations

import copy
import string
from pathlib import Path

CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]

TINY = {
    "data": {"seed": 3, "skills": ["math", "code", "finance", "dosage", "json", "letters"], "n_train": 40,
             "n_validation": 4, "n_test": 4},
    "replay": {"seed": 3, "n_per_skill": 3, "max_new": 6, "threads": 1},
    "adapters": {
        "common": {"threads": 1, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"],
                   "lora_dropout": 0.0, "batch_size": 4, "lr": 5e-3, "warmup": 1, "weight_decay": 0.0, "steps": 3,
                   "autocast": "bf16", "attn": "eager", "chunks": 2, "replay_frac": 0.5},
        "runs": {
            "math": {"skills": ["math"], "seed": 1, "r": 4, "lora_alpha": 8},
            "json": {"skills": ["json"], "seed": 2, "r": 8, "lora_alpha": 8, "use_rslora": True},
            "letters": {"skills": ["letters"], "seed": 3, "r": 2, "lora_alpha": 4, "half_scale_check": False},
            "multitask": {"skills": ["math", "json", "letters"], "seed": 4, "r": 8, "lora_alpha": 8, "steps": 4},
        },
    },
    "eval": {"device": "cpu", "dtype": "float32", "batch_size": 8, "apply_chat_template": True, "num_fewshot": 0,
             "max_gen_toks": 6, "threads": 1},
}


def tiny_params() -> dict:
    return copy.deepcopy(TINY)


def tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + sorted(set(string.printable)))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern=Regex(""), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<unk>", clean_up_tokenization_spaces=False,
                                  additional_special_tokens=SPECIAL[:3])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      initializer_range=0.5)  # large: a random model then writes varied characters
    return LlamaForCausalLM(cfg).eval()


def build_tiny(root: str | Path, params: dict | None = None) -> dict:
    """base (through the converter's save-and-check path) -> data -> replay -> adapters under root."""
    from skills.smollm2.adapters import train_adapter
    from skills.smollm2.convert import save_checked
    from skills.smollm2.data import write_data
    from skills.smollm2.replay import write_replay

    p = params or tiny_params()
    root = Path(root)
    tok = tiny_tokenizer()
    save_checked(tiny_model(len(tok)), tok, root / "base", source="tiny random Llama")
    write_data(p["data"], root / "data")
    write_replay(root / "base", root / "data", root / "replay", p["replay"], batch_size=8)
    out = {"base": str(root / "base"), "data": str(root / "data"), "tasks": str(root / "tasks"),
           "replay": str(root / "replay"), "adapters": {}}
    for name, run in p["adapters"]["runs"].items():
        train_adapter(root / "base", root / "data", run, p["adapters"]["common"], root / "adapters" / name,
                      p["eval"], replay_dir=root / "replay")
        out["adapters"][name] = str(root / "adapters" / name)
    return out
