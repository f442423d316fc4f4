"""Replay data for the SmolLM2 suite's adapters: the base model's own replies to a seeded sample of train prompts.

An adapter trained on its skill alone imposes its reply format on every prompt (the `math` adapter alone scored 0 on
dosage, json and letters), and merging such adapters sums the damage. The character-level suite keeps its adapters
small edits by replaying the pre-training mixture in half of every batch; an instruct model's nearest equivalent is
its own behaviour: the base's greedy replies, half right as the base is, to prompts of the suite. An adapter replays
only the prompts of skills it is not trained on (``replay_frac`` of each batch, params.yaml
``smollm2.adapters.common``), so it learns "answer like the base elsewhere" and no other skill: the replies are the
base's, never the references.

Output: ``<paths.replay>/replay.jsonl``, records ``{skill, prompt, target}`` (``target`` = the base's reply).
Usage: ``python -m skills.smollm2.replay [--params params.yaml]``.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import skills  # noqa: F401

import torch

from skills.lmeval import find_skills
from skills.smollm2.data import read_jsonl


def write_replay(base_dir, data_dir, out_dir, cfg: dict, max_new: int = 48, batch_size: int = 64) -> Path:
    """Sample ``cfg['n_per_skill']`` train prompts per skill (seeded), answer them greedily with the base."""
    from skills.smollm2.common import greedy, load_base

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    skills_ = find_skills(data_dir)[1]
    prompts = []
    for skill in skills_:
        train = [r["prompt"] for r in read_jsonl(data_dir / skill / "train.jsonl")]
        rng = random.Random(f"{cfg['seed']}:replay:{skill}")
        prompts += [(skill, p) for p in rng.sample(train, min(int(cfg["n_per_skill"]), len(train)))]
    model, tok = load_base(base_dir)
    t0 = time.time()

    def progress(done: int, total: int) -> None:
        sec = time.time() - t0
        print(f"replay: {done}/{total} prompts answered, {sec:.0f} s, eta {sec / done * (total - done):.0f} s",
              flush=True)

    replies = greedy(model, tok, [p for _, p in prompts], max_new=int(cfg.get("max_new", max_new)),
                     batch_size=batch_size, progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "replay.jsonl.tmp"
    with open(tmp, "w") as f:
        for (skill, prompt), reply in zip(prompts, replies):
            f.write(json.dumps({"skill": skill, "prompt": prompt, "target": reply}) + "\n")
    tmp.replace(out_dir / "replay.jsonl")
    return out_dir / "replay.jsonl"


def read_replay(replay_dir, exclude) -> list[tuple[str, str]]:
    """(prompt, base reply) pairs of every skill not in ``exclude``; an error naming the file when it is missing."""
    if replay_dir is None:
        raise ValueError("replay_frac > 0 needs the replay data: pass replay_dir (params.yaml smollm2.paths.replay)")
    path = Path(replay_dir) / "replay.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no replay data; build it first: python -m skills.smollm2.replay "
                                "(dvc repro smollm2_replay), or set replay_frac: 0")
    exclude = set(exclude)
    return [(r["prompt"], r["target"]) for r in read_jsonl(path) if r["skill"] not in exclude]


def main(argv: list[str] | None = None) -> None:
    from skills.smollm2.config import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    a = ap.parse_args(argv)
    p = load_params(a.params)
    path = write_replay(p["paths"]["base"], p["paths"]["data"], p["paths"]["replay"], p["replay"],
                        batch_size=int(p["eval"].get("batch_size", 64)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
