"""`pico tara`: the command line of TARA (hooked into pico/cli.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..adapters import load_adapters
from ..options import add_flags, from_args
from .config import TaraConfig, TaraError
from .run import tara_merge
from .teacher import default_cache_dir

EPILOG = """examples:
  pico tara ./add ./rev ./sort --base ./base --prompts add.jsonl rev.jsonl sort.jsonl --out merged
  pico tara a b --base ./base --prompts a.jsonl b.jsonl --variant tara-b --calibrate pico --out merged
  pico tara a b --base ./base --prompts a.jsonl b.jsonl --preference 2,1 --epochs 5 --out merged
  pico tara a b --base ./base --prompts a.jsonl b.jsonl --objective teacher --variant factors \\
      --init 'tsv/core lam=0.5' --steps 20 --autocast bf16 --out merged

Each prompts file is a JSONL of unlabeled inputs of the matching adapter's task, one object per line with a
"prompt" (a user message: through the chat template per --chat-template), "messages" (a chat), "text" (raw text) or
"input_ids". TARA needs these inputs and T forward/backward passes of the base model per step; the data-free
`pico merge` needs neither. With --objective teacher each adapter first answers its own prompts (cached)."""


def add_tara_parser(sub) -> None:
    p = sub.add_parser("tara", help="TARA: learn per-direction merge weights from unlabeled inputs (not data-free)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SRC", help="adapter directory or hf://org/name@revision")
    p.add_argument("--base", required=True, type=Path, help="base model directory (transformers save_pretrained)")
    p.add_argument("--prompts", required=True, nargs="+", type=Path, metavar="JSONL",
                   help="one JSONL of unlabeled prompts per adapter, in SRC order")
    p.add_argument("--out", required=True, type=Path, help="output directory (must not exist unless --force)")
    add_flags(p, TaraConfig)  # TARA's options (pico/tara/config.py)
    p.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: the base model's)")
    p.add_argument("--teacher-cache", type=Path, default=None,
                   help="where teacher replies are kept by content (default: $PICO_TEACHER_CACHE or "
                        "~/.cache/pico-merge/teacher)")
    p.add_argument("--no-teacher-cache", action="store_true", help="generate the teacher replies, keep nothing")
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
    if args.threads:
        torch.set_num_threads(args.threads)
    config = from_args(TaraConfig, args, TaraError)
    aset = load_adapters(args.sources, common_modules_only=args.common_modules)
    config.resolve(len(aset))  # option errors before any model is loaded
    if len(args.prompts) != len(aset):
        raise TaraError(f"{len(args.prompts)} prompt files given for {len(aset)} adapters; give one per adapter, "
                        "in SRC order")
    cache = None if args.no_teacher_cache else (args.teacher_cache or default_cache_dir())
    manifest = tara_merge(args.base, aset, args.prompts, args.out, config, tokenizer=args.tokenizer,
                          device=args.device, model_dtype=args.model_dtype, dtype=getattr(torch, args.dtype),
                          overwrite=args.force, progress=not args.quiet, plot=not args.no_plot, cache_dir=cache)
    if not args.quiet:
        tr = manifest["training"]
        print(f"{manifest['recipe']['variant']} ({config.objective}): {len(aset)} adapters, "
              f"{tr['coefficients']} trained values, {tr['steps']} steps in {manifest['seconds']:.1f} s "
              f"({manifest['seconds_prepare']:.1f} s preparing); loss on all inputs "
              f"{tr['loss_all_inputs_init']:.4f} -> {tr['loss_all_inputs_final']:.4f} -> {args.out} "
              f"(rank <= {manifest['output']['max_rank']})", file=sys.stderr)
    return 0
