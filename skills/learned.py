"""Learned merges on either suite: `pico tara --objective teacher` on each skill's calibration prompts, timed, then
scored on the test split by the suite's fast scorer (the same replies as lm-eval: tests/test_skills_report.py for the
character-level suite, tests/skills/test_smollm2.py for SmolLM2).

    python -m skills.learned --suite skills --variant factors --init "tsv/core lam=0.8" --steps 40 --max-new 10 \
        --checkpoints 10,20,40 --out build/suite/learned/factors-tsv [--build DIR] [--json results.jsonl]
    python -m skills.smollm2.learned ...     # the same, --suite smollm2

After each checkpoint's step the merge is written (``<out>/step-N``) and scored; one JSON row per checkpoint (config,
seconds preparing = teacher replies + the loss at the init, seconds training, test accuracy per skill, the CPU and
the load) goes to ``--json``. Teacher replies are cached by content (``--cache``, default the suite's build folder):
the first run with a prompt set pays for them (``teacher_cached: false``, its ``seconds_prepare`` is the uncached
cost).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import skills  # noqa: F401


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all its threads)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def prompt_files(calibration: Path, names: list[str], n: int, out: Path) -> list[Path]:
    """The first ``n`` calibration prompts of each skill, one file per adapter."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name in names:
        lines = (calibration / f"{name}.jsonl").read_text().splitlines(keepends=True)[:n]
        path = out / f"{name}-{n}.jsonl"
        path.write_text("".join(lines))
        files.append(path)
    return files


def load_suite(suite: str, params: str) -> dict:
    """The suite's params section (``suite:`` or ``smollm2:``), every path absolute."""
    if suite == "skills":
        from skills.config import load_suite_params

        return load_suite_params(params)
    from skills.smollm2.config import load_params

    return load_params(params)


def score_adapter(suite: str, paths: dict, adapter: Path, skills_: list[str], p: dict) -> dict[str, float]:
    """Test accuracy per skill by the suite's fast greedy scorer (lm-eval's replies)."""
    from peft import PeftModel

    max_new, batch = int(p["eval"]["max_gen_toks"]), int(p["eval"]["batch_size"])
    if suite == "skills":
        from skills.base import load_base
        from skills.common import accuracy
        from skills.data import read_jsonl

        model = PeftModel.from_pretrained(load_base(paths["base"]), str(adapter)).eval()
        return {s: accuracy(model, read_jsonl(paths["data"] / s / "test.jsonl"), max_new, batch) for s in skills_}
    from skills.smollm2.common import load_base, score
    from skills.smollm2.data import read_jsonl as read_smollm2

    model, tok = load_base(paths["base"])
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    return {s: score(model, tok, read_smollm2(paths["data"] / s / "test.jsonl"), max_new, batch) for s in skills_}


SUITES = {"skills": "the character-level suite (params.yaml suite:)", "smollm2": "SmolLM2 (params.yaml smollm2:)"}


def main(argv: list[str] | None = None, suite: str | None = None) -> None:
    """``suite`` fixed by the caller (skills.smollm2.learned), else ``--suite``."""
    import torch

    from pico.adapters import load_adapters
    from pico.options import add_flags, from_args
    from pico.tara import TaraConfig, TaraError, TaraResult, prepare, write_tara
    from pico.tara.inputs import hash_dir_files
    from pico.writer import json_digest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if suite is None:
        ap.add_argument("--suite", required=True, choices=SUITES, help="; ".join(f"{k}: {v}" for k, v in SUITES.items()))
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--build", default=None, help="the suite's build directory (default: params' paths)")
    ap.add_argument("--calibration", default=None, help="calibration prompts directory (default: the build's)")
    ap.add_argument("--prompts", type=int, default=64, help="calibration prompts per adapter (the first N)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--json", default=None, help="append the result row here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-score", action="store_true")
    ap.add_argument("--checkpoints", default=None, help="write and score the merge after these steps, e.g. 10,20,40")
    ap.add_argument("--cache", default=None, help="teacher replies cache (default: teacher-cache beside the base)")
    add_flags(ap, TaraConfig, objective="teacher")  # every pico tara option, as in `pico tara`
    a = ap.parse_args(argv)
    suite = suite or a.suite
    torch.set_num_threads(a.threads)
    p = load_suite(suite, a.params)
    paths = {k: Path(v) for k, v in p["paths"].items()}
    if a.build:
        paths = {k: Path(a.build) / Path(v).name for k, v in paths.items()}
    if a.calibration:
        paths["calibration"] = Path(a.calibration)
    skills_ = p["data"]["skills"]
    cache = Path(a.cache) if a.cache else paths["base"].parent / "teacher-cache"
    sources = [paths["adapters"] / s for s in skills_]
    files = prompt_files(paths["calibration"], skills_, a.prompts, Path(a.out) / "prompts")
    config = from_args(TaraConfig, a, TaraError)
    checkpoints = sorted(int(x) for x in a.checkpoints.split(",")) if a.checkpoints else [None]
    aset = load_adapters([str(s) for s in sources])
    base_files: dict = {}
    hash_dir_files(paths["base"], base_files)
    t0, c0 = time.perf_counter(), cpu_seconds()
    trainer = prepare(paths["base"], aset, files, config, device="cpu", cache_dir=cache,
                      base_digest=json_digest(base_files))
    prep, prep_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    cfg = trainer.config
    total = cfg.total_steps(trainer.steps_per_epoch())
    checkpoints = [c if c is not None else total for c in checkpoints]
    result = TaraResult(trainer.layers, list(trainer.baselines))
    result.full_scores_init = [1.0 if cfg.balance == "init" else b for b in trainer.baselines]
    common = {"suite": suite, "prompts": a.prompts, "config": {**cfg.to_dict(), "preference": None}, "cpu": cpu_name(),
              "threads": a.threads, "load": os.getloadavg()[0], "teacher_cached": all(x.cached for x in trainer.teacher),
              "seconds_prepare": round(prep, 1), "cpu_seconds_prepare": round(prep_cpu, 1),
              "teacher_reply_tokens": {n: round(x.mean_length(), 1) for n, x in zip(skills_, trainer.teacher)},
              "loss_at_init": dict(zip(skills_, [round(b, 4) for b in trainer.baselines]))}
    print(json.dumps(common), flush=True)
    train_sec = train_cpu = 0.0
    for step in range(-1, max(checkpoints)):
        if step >= 0:
            t1, c1 = time.perf_counter(), cpu_seconds()
            loss, scores = trainer.step(trainer.next_batches())
            train_sec, train_cpu = train_sec + time.perf_counter() - t1, train_cpu + cpu_seconds() - c1
            result.curve.append({"step": step, "epoch": step // trainer.steps_per_epoch(), "loss": loss,
                                 "scores": scores})
        if step + 1 not in checkpoints:
            continue
        out = Path(a.out) / f"step-{step + 1}"
        write_tara(trainer, result, aset, paths["base"], out, overwrite=True, base_files=base_files)
        row = {**common, "steps": step + 1, "out": str(out), "seconds_train": round(train_sec, 1), "cpu_seconds_train": round(train_cpu, 1),
               "seconds_total": round(prep + train_sec, 1), "loss": [round(p["loss"], 4) for p in result.curve]}
        print(json.dumps({k: v for k, v in row.items() if k not in common or k == "seconds_prepare"}), flush=True)
        if not a.no_score:
            t2 = time.perf_counter()
            acc = score_adapter(suite, paths, out, skills_, p)
            row.update(test=acc, test_mean=round(sum(acc.values()) / len(acc), 4),
                       score_seconds=round(time.perf_counter() - t2, 1))
            print(json.dumps({"steps": step + 1, "test": acc, "mean": row["test_mean"]}), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
