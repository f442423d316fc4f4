"""Calibration split: a few unlabeled prompts per skill for learned merges (``pico tara --objective teacher``).

Rows ``{"prompt": ...}`` only (no answer: the adapters answer them themselves), drawn with a fixed seed from the
skill's train split, never a prompt of its validation or test split (checked, not assumed). A derived file of the
data stage, so adding it changes no existing output. The character-level suite's ``fact`` skill has no such prompts
(its train, validation and test splits are all the fact table), so its calibration prompts are fresh names of the
table's form (``fact <name>=``, no name of the table): the adapter's format without its facts.

Writes ``<out>/<skill>.jsonl``. Usage: ``python -m skills.calibration --suite smollm2|suite [--params params.yaml]``.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def sample_prompts(train: list[str], held: set[str], n: int, seed: str) -> list[str]:
    """``n`` distinct train prompts (fewer if there are not that many), none in ``held``, in a seeded order."""
    pool = sorted({p for p in train if p not in held})
    return random.Random(seed).sample(pool, min(n, len(pool)))


def fact_prompts(table_names: set[str], n: int, seed: str) -> list[str]:
    """``fact <name>=`` prompts with fresh pronounceable names (the table's construction, none of its names)."""
    rng, cons, vow = random.Random(seed), "bcdfghjklmnprstvz", "aeiou"
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice(cons) + rng.choice(vow) for _ in range(rng.randint(2, 3)))
        if w not in table_names and f"fact {w}=" not in out:
            out.append(f"fact {w}=")
    return out


def write_calibration(data_dir, out_dir, skills: list[str], n: int, seed: int) -> dict[str, int]:
    from skills.data import MEMORISATION_SKILLS, read_jsonl

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for skill in skills:
        split = {s: [r["prompt"] for r in read_jsonl(data_dir / skill / f"{s}.jsonl")]
                 for s in ("train", "validation", "test")}
        held = set(split["validation"]) | set(split["test"])
        if skill in MEMORISATION_SKILLS and set(split["train"]) <= held:  # every train prompt is a test item
            names = {p.removeprefix("fact ").removesuffix("=") for p in held}
            prompts = fact_prompts(names, n, f"{seed}:{skill}:calibration")
        else:
            prompts = sample_prompts(split["train"], held, n, f"{seed}:{skill}:calibration")
        if not prompts or set(prompts) & held:
            raise ValueError(f"skill {skill}: no calibration prompts disjoint from validation and test")
        tmp = out_dir / f"{skill}.jsonl.tmp"
        tmp.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        tmp.replace(out_dir / f"{skill}.jsonl")
        counts[skill] = len(prompts)
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=["smollm2", "suite"], default="smollm2")
    ap.add_argument("--params", default="params.yaml")
    a = ap.parse_args(argv)
    if a.suite == "smollm2":
        from skills.smollm2.config import load_params

        p = load_params(a.params)
    else:
        from skills.config import load_suite_params

        p = load_suite_params(a.params)
    cfg = p["calibration"]
    print(json.dumps(write_calibration(p["paths"]["data"], p["paths"]["calibration"], p["data"]["skills"],
                                       int(cfg["n_per_skill"]), int(cfg["seed"]))))


if __name__ == "__main__":
    main()
