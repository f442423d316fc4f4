"""Learned merges on the SmolLM2 suite: `pico tara --objective teacher` on each skill's calibration prompts, timed,
then scored on the test split by the suite's fast scorer (the same replies as lm-eval: tests/skills/test_smollm2.py).

    python -m skills.smollm2.learned --variant core --init "tsv/core lam=0.5" --steps 40 --prompts 64 \
        --out build/smollm2/learned/core-tsv [--build DIR] [--json results.jsonl]

Each run appends one JSON row (config, seconds for the teacher replies and for the training, test accuracy per skill,
the CPU) to ``--json``. Teacher replies are cached by content under ``<build>/teacher-cache`` (the first run with a
prompt set pays for them: its ``seconds_prepare`` is the uncached cost).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import skills  # noqa: F401


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


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


def main(argv: list[str] | None = None) -> None:
    import torch

    from pico.tara import tara_merge
    from pico.tara.cli import config_from_args
    from pico.tara.config import config_fields
    from skills.smollm2.config import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--build", default=None, help="the suite's build directory (default: params' paths)")
    ap.add_argument("--calibration", default=None, help="calibration prompts directory (default: the build's)")
    ap.add_argument("--prompts", type=int, default=64, help="calibration prompts per adapter (the first N)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--json", default=None, help="append the result row here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-score", action="store_true")
    for spec in config_fields():  # every pico tara option, as in `pico tara`
        ap.add_argument("--" + spec.name.replace("_", "-"), dest=spec.name,
                        type=str if spec.type is list else spec.type, default=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    p = load_params(a.params)
    paths = {k: Path(v) for k, v in p["paths"].items()}
    if a.build:
        paths = {k: Path(a.build) / Path(v).name for k, v in paths.items()}
    if a.calibration:
        paths["calibration"] = Path(a.calibration)
    skills_ = p["data"]["skills"]
    sources = [paths["adapters"] / s for s in skills_]
    out = Path(a.out)
    files = prompt_files(paths["calibration"], skills_, a.prompts, out.parent / "prompts")
    if not hasattr(a, "objective"):
        a.objective = "teacher"
    config = config_from_args(a)
    t0 = time.time()
    manifest = tara_merge(paths["base"], sources, files, out, config, device="cpu", overwrite=True, progress=False,
                          cache_dir=Path(a.build or paths["base"].parent) / "teacher-cache")
    row = {"out": str(out), "prompts": a.prompts, "config": manifest["recipe"], "cpu": cpu_name(),
           "threads": a.threads, "seconds": round(manifest["seconds"], 1),
           "seconds_prepare": round(manifest["seconds_prepare"], 1), "seconds_train": round(manifest["seconds_train"], 1),
           "wall": round(time.time() - t0, 1),
           "loss_init": manifest["training"]["loss_all_inputs_init"],
           "loss_final": manifest["training"]["loss_all_inputs_final"], "loss_curve": manifest["training"]["loss"]}
    print(json.dumps({k: v for k, v in row.items() if k != "loss_curve"}), flush=True)
    if not a.no_score:
        from peft import PeftModel

        from skills.smollm2.common import load_base, score
        from skills.smollm2.data import read_jsonl

        t1 = time.time()
        model, tok = load_base(paths["base"])
        model = PeftModel.from_pretrained(model, str(out)).eval()
        acc = {s: score(model, tok, read_jsonl(paths["data"] / s / "test.jsonl"),
                        int(p["eval"].get("max_gen_toks", 40)), int(p["eval"].get("batch_size", 64)))
               for s in skills_}
        row.update(test=acc, test_mean=round(sum(acc.values()) / len(acc), 4), score_seconds=round(time.time() - t1, 1))
        print(json.dumps({"test": acc, "mean": row["test_mean"]}), flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
