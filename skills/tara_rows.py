"""TARA rows for the skills report: learn TARA on the suite's validation prompts, score the result on the test split.

TARA (pico/tara/, spec section 5) is not data-free: for every skill adapter it reads that skill's *validation*
prompts (unlabeled: only the "prompt" field is used, the answers are never read) and trains one coefficient per
direction, with one forward/backward pass over a batch of every task per step. It learns the merge scale itself, so
unlike the data-free rows there is no lambda search. Outputs go to ``<work>/tara-a``, ``<work>/tara-a+pico``, ...;
an existing output whose manifest shows the same recipe and the same sources (sha256) is reused.

Hook for skills/report.py (one line in ``run_report``, after the merges loop)::

    rows += skills_tara_rows(ev, sources, work, log)   # from skills.tara_rows import skills_tara_rows

Standalone: ``python -m skills.tara_rows [--variants tara-a,tara-b] [--calibrate none,pico] [--epochs 10]`` trains and
scores with lm-eval (``skills.evaluate``) on the suite built under ``suite.paths``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_CONFIGS = (("tara-a", "none"), ("tara-a", "pico"), ("tara-b", "none"), ("tara-b", "pico"))


def out_name(variant: str, calibrate: str) -> str:
    return variant + ("+pico" if calibrate == "pico" else "")


def row_label(variant: str, calibrate: str) -> str:
    """Report label, in the style of the data-free rows ("ta/core +pico (post)"), marked as using data."""
    return variant + (" +pico (pre)" if calibrate == "pico" else "") + " [val prompts]"


def _reusable(out: Path, recipe: dict, sources: list[Path]) -> dict | None:
    """The manifest of an existing output made with this recipe from these exact adapter files, else None."""
    from pico.adapters import load_adapters

    path = out / "merge_manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("recipe") != recipe:
        return None
    aset = load_adapters(sources)
    aset.hash_sources()
    if [s["sha256"] for s in manifest["sources"]] != [s.sha256 for s in aset.sources]:
        return None
    return manifest


def train_suite_tara(base: str | Path, sources: list[str | Path], prompt_files: list[str | Path],
                     work: str | Path, configs=DEFAULT_CONFIGS, *, epochs: int = 10, seed: int = 0,
                     device: str = "auto", force: bool = False, progress: bool = False, log=print) -> list[dict]:
    """Train TARA for each (variant, calibrate) into ``work/<name>``; returns one dict per config (name, label,
    dir, manifest, train_seconds or None when reused)."""
    from pico.tara import TaraConfig, tara_merge

    sources = [Path(s) for s in sources]
    out = []
    for variant, calibrate in configs:
        config = TaraConfig(variant=variant, calibrate=calibrate, epochs=epochs, seed=seed)
        recipe = {"method": variant, **config.resolve(len(sources)).to_dict()}
        target = Path(work) / out_name(variant, calibrate)
        manifest = None if force else _reusable(target, recipe, sources)
        seconds = None
        if manifest is None:
            manifest = tara_merge(base, sources, list(prompt_files), target, config, device=device,
                                  overwrite=True, progress=progress)
            seconds = round(manifest["seconds"], 1)
        tr = manifest["training"]
        log(f"  {row_label(variant, calibrate):42s} trained in {seconds if seconds is not None else 'reused'} s: "
            f"{tr['steps']} steps, {tr['coefficients']} coefficients, pseudo-loss on all validation prompts "
            f"{tr['loss_all_inputs_init']:.4f} -> {tr['loss_all_inputs_final']:.4f}")
        out.append({"name": out_name(variant, calibrate), "label": row_label(variant, calibrate), "dir": target,
                    "manifest": manifest, "train_seconds": seconds, "variant": variant, "calibrate": calibrate})
    return out


def skills_tara_rows(ev, sources: list[str], work: str | Path, log=print, *, configs=DEFAULT_CONFIGS,
                     epochs: int = 10, skill_of: dict[str, str] | None = None, force: bool = False,
                     prompt_files: list | None = None) -> list:
    """Report rows (``skills.report.Row``, section "merge") for TARA next to the data-free merges.

    ``ev`` is the report's Evaluator (its ``base_dir``, ``data_dir`` and ``test``), ``sources`` the single-skill
    adapter directories in report order, ``work`` the report's merges directory. Each adapter's prompts are
    ``<data>/<skill>/validation.jsonl``, the skill being ``skill_of[adapter dir name]`` (default: the dir name), unless
    ``prompt_files`` gives them (one per source, e.g. chat-templated token ids)."""
    from skills.rows import Row

    skill_of = skill_of or {}
    prompts = prompt_files or [Path(ev.data_dir) / skill_of.get(Path(s).name, Path(s).name) / "validation.jsonl"
                               for s in sources]
    log("TARA (not data-free: unlabeled validation prompts of each skill)")
    rows = []
    for info in train_suite_tara(ev.base_dir, sources, prompts, work, configs, epochs=epochs, force=force, log=log):
        acc = ev.test(info["dir"])
        tr, m = info["manifest"]["training"], info["manifest"]
        log(f"  {info['label']:42s} " + " ".join(f"{s}={a:.2f}" for s, a in acc.items()))
        rows.append(Row(info["label"], "merge", acc, None, {**m["recipe"], "data_free": False}, {
            "dir": str(info["dir"]), "train_sec": info["train_seconds"], "steps": tr["steps"],
            "coefficients": tr["coefficients"], "max_rank": m["output"]["max_rank"],
            "pseudo_loss": [tr["loss_all_inputs_init"], tr["loss_all_inputs_final"]],
            "inputs": {x["adapter"]: x["n"] for x in m["inputs"]}}))
    return rows


def main(argv: list[str] | None = None) -> None:
    import torch

    from skills.config import load_suite_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--variants", default="tara-a,tara-b")
    ap.add_argument("--calibrate", default="none,pico")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="default: <suite.paths.report>/tara")
    ap.add_argument("--no-eval", action="store_true", help="train only")
    ap.add_argument("--force", action="store_true", help="retrain even when a matching output exists")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    p = load_suite_params(a.params)
    paths = p["paths"]
    runs = p["adapters"]["runs"]
    singles = [n for n, r in runs.items() if len(r["skills"]) == 1]
    sources = [Path(paths["adapters"]) / n for n in singles]
    prompts = [Path(paths["data"]) / runs[n]["skills"][0] / "validation.jsonl" for n in singles]
    torch.set_num_threads(a.threads)
    configs = [(v, c) for v in a.variants.split(",") for c in a.calibrate.split(",")]
    results = train_suite_tara(paths["base"], sources, prompts, a.out or Path(paths["report"]) / "tara", configs,
                               epochs=a.epochs, force=a.force, progress=True)
    out = []
    for r in results:
        row = {k: (str(v) if isinstance(v, Path) else v) for k, v in r.items() if k != "manifest"}
        row["training"] = {k: r["manifest"]["training"][k] for k in ("steps", "coefficients", "loss_all_inputs_init",
                                                                     "loss_all_inputs_final")}
        if not a.no_eval:
            from skills.evaluate import average, evaluate

            t0 = time.perf_counter()
            row["accuracy"] = evaluate(paths["base"], r["dir"], [runs[n]["skills"][0] for n in singles], "test",
                                       data_dir=paths["data"], threads=a.threads)
            row["average"], row["eval_seconds"] = average(row["accuracy"]), round(time.perf_counter() - t0, 1)
            print(f"{r['label']:36s} avg {row['average']:.3f} " +
                  " ".join(f"{s}={v:.3f}" for s, v in row["accuracy"].items()))
        out.append(row)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
