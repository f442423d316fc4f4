"""Learned merges on the SmolLM2 suite: ``python -m skills.learned --suite smollm2`` (skills/learned.py), e.g.

    python -m skills.smollm2.learned --variant core --init "tsv/core lam=0.5" --steps 40 --prompts 64 \
        --checkpoints 10,20,40 --out build/smollm2/learned/core-tsv [--build DIR] [--json results.jsonl]
"""
from __future__ import annotations

from skills.learned import main as _main


def main(argv: list[str] | None = None) -> None:
    _main(argv, suite="smollm2")


if __name__ == "__main__":
    main()
