"""The merge report on the SmolLM2 suite: skills/report.py's machinery (methods x spaces, Pico off / post / pre with
lambda chosen on validation, ablations, TARA) with this suite's scorer, plus the Pico paper's Figure-2 quantities per
projection: the mean pairwise overlap of the tasks' B column spaces and of their A row spaces, beside the overlap of
random subspaces of the same ranks (the baseline, max(r_t, r_u) / dim per pair).

    python -m skills.smollm2.report [--fast] [--no-ablations] [--all-rows] [--tara tara-a+none,tara-a+pico]
                                    [--methods ta,ties] [--figure2-only]

The rows are params.yaml ``smollm2.report.rows`` (each merge costs minutes here, so the list is chosen: see
RESULTS.md), lambda on the first ``report.val_limit`` validation items per skill.

Writes build/smollm2/report/{report.md,report.json,figure2.json,...}.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import skills  # noqa: F401
from skills.report import METHODS, Evaluator

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class SmolEvaluator(Evaluator):
    """Fast greedy (skills.smollm2.common.score) for validation, lm-eval with the params' settings for test."""

    def __init__(self, base_dir, data_dir, skills, *, fast_only=False, settings: dict | None = None, tasks_dir=None,
                 val_limit: int | None = None):
        from skills.smollm2.data import read_jsonl

        self.settings = {k: v for k, v in (settings or {}).items() if k != "split"}
        self.base_dir, self.data_dir, self.skills = Path(base_dir), Path(data_dir), list(skills)
        self.fast_only, self.tasks_dir = fast_only, tasks_dir
        self.batch_size = int(self.settings.get("batch_size", 64))
        self.max_new = int(self.settings.get("max_gen_toks", 40))
        self.recs = {sp: {s: read_jsonl(self.data_dir / s / f"{sp}.jsonl") for s in skills}
                     for sp in ("validation", "test")}
        if val_limit:  # lambda is chosen on the first val_limit validation items of each skill (cost: see RESULTS)
            self.recs["validation"] = {s: r[:int(val_limit)] for s, r in self.recs["validation"].items()}
        self.bench_seconds: list[float] = []
        self._base = None

    def _model(self, adapter_dir):
        import torch

        from skills.smollm2.common import load_base

        if self.settings.get("threads"):
            torch.set_num_threads(int(self.settings["threads"]))
        model, self.tok = load_base(self.base_dir)
        if adapter_dir is None:
            return model
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(adapter_dir)).eval()

    def fast(self, model, split: str) -> dict[str, float]:
        from skills.smollm2.common import score

        return {s: score(model, self.tok, self.recs[split][s], self.max_new, self.batch_size) for s in self.skills}

    def test(self, adapter_dir):
        t0 = time.time()
        if self.fast_only:
            acc = self.fast(self._model(adapter_dir), "test")
        else:
            from skills.smollm2.evaluate import evaluate

            acc = evaluate(self.base_dir, adapter_dir, self.skills, "test", data_dir=self.data_dir,
                           tasks_dir=self.tasks_dir, settings=self.settings)
        self.bench_seconds.append(time.time() - t0)
        return acc


def figure2(sources: list[str]) -> dict:
    """Per projection kind: mean over layers of pico's pairwise B / A subspace overlap, and the random baseline."""
    from pico import inspect_adapters, load_adapters

    aset = load_adapters(sources)
    info = inspect_adapters(aset, device="cpu", progress=False)
    shapes: dict[str, tuple[list[int], int, int]] = {}
    for module in aset.modules:
        fac = aset.factors(module)
        ranks = [int(b.shape[1]) for b, _ in fac]
        shapes[module] = (ranks, int(fac[0][0].shape[0]), int(fac[0][1].shape[1]))

    def baseline(ranks, dim):
        pairs = [(a, b) for i, a in enumerate(ranks) for b in ranks[i + 1:]]
        return sum(max(a, b) / dim for a, b in pairs) / len(pairs)

    out: dict = {}
    for proj in PROJ:
        mods = [m for m in info if re.search(rf"\b{proj}\b", m)]
        if not mods:
            continue
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        val = lambda v: mean(v) if isinstance(v, list) else v  # noqa: E731
        out[proj] = {"overlap_B": round(mean([val(info[m]["overlap_B"]) for m in mods]), 4),
                     "overlap_A": round(mean([val(info[m]["overlap_A"]) for m in mods]), 4),
                     "random_B": round(mean([baseline(shapes[m][0], shapes[m][1]) for m in mods]), 4),
                     "random_A": round(mean([baseline(shapes[m][0], shapes[m][2]) for m in mods]), 4),
                     "layers": len(mods)}
    allm = list(out.values())
    out["all"] = {k: round(sum(v[k] for v in allm) / len(allm), 4)
                  for k in ("overlap_B", "overlap_A", "random_B", "random_A")}
    return out


def seed_drift(p: dict, names: list[str]) -> dict:
    """What a shared seed does, without training twice: per adapter, the overlap of its TRAINED A row space with its
    INITIAL one (re-created exactly: the same seed, the same load, the same PEFT config as the trainer), mean over
    modules, and the relative change ||A - A_0|| / ||A_0||. An overlap near 1 means A barely moved from LoRA's random
    start, so two adapters trained from one seed (equal rank) would share their A row spaces by construction."""
    import torch
    from peft import get_peft_model
    from safetensors.torch import load_file

    from pico.linalg import subspace_overlap
    from skills.adapters import lora_config
    from skills.smollm2.common import load_base, seed_all

    common = p["adapters"]["common"]
    out = {}
    for n in names:
        run = {**common, **p["adapters"]["runs"][n]}
        seed_all(int(run["seed"]))  # the trainer's order: seed, load the base, wrap it
        model = get_peft_model(load_base(p["paths"]["base"])[0], lora_config(run, common))
        init = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_A" in k}
        trained = load_file(str(Path(p["paths"]["adapters"]) / n / "adapter_model.safetensors"))
        ov, rel = [], []
        for k, a0 in init.items():
            a = trained[k.replace(".lora_A.default.", ".lora_A.")].float()  # PEFT saves without the adapter name
            ov.append(float(subspace_overlap([torch.linalg.qr(a0.mT)[0], torch.linalg.qr(a.mT)[0]])))
            rel.append(float((a - a0).norm() / a0.norm()))
        out[n] = {"A_overlap_with_init": round(sum(ov) / len(ov), 4), "A_rel_change": round(sum(rel) / len(rel), 4),
                  "modules": len(ov)}
    return out


def render_figure2(fig: dict, names: list[str]) -> str:
    lines = [f"Adapters: {', '.join(names)}. Mean pairwise subspace overlap (||Q_t^T Q_u||_F^2 / min(r_t, r_u)), "
             "mean over layers; random: the expected overlap of random subspaces of the same ranks.", "",
             "| projection | B overlap | B random | A overlap | A random |", "|---|---|---|---|---|"]
    for k, v in fig.items():
        lines.append(f"| {k} | {v['overlap_B']:.3f} | {v['random_B']:.3f} | {v['overlap_A']:.3f} | "
                     f"{v['random_A']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from skills.report import run_report
    from skills.smollm2.config import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=None)
    ap.add_argument("--fast", action="store_true", help="score test with the fast greedy scorer, not lm-eval")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: smollm2.eval.threads, null = every core); 1 when two reports share "
                         "the box")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--adapters", default=None, help="comma-separated single-skill adapters (default: all present)")
    ap.add_argument("--figure2-only", action="store_true")
    ap.add_argument("--all-rows", action="store_true",
                    help="every method x space x Pico off/on (the product), not the params' report.rows")
    ap.add_argument("--rows", default=None, metavar="START:END",
                    help="only these of smollm2.report.rows (a Python slice, e.g. 0:9 and 9:), to split the report "
                         "over processes, each with its own --out")
    ap.add_argument("--tara", default="", metavar="V+C,...",
                    help="TARA rows, e.g. tara-a+none,tara-a+pico (trained on the chat-templated validation prompts)")
    ap.add_argument("--tara-epochs", type=int, default=10)
    a = ap.parse_args(argv)
    p = load_params(a.params)
    if a.threads:
        p["eval"]["threads"] = a.threads
    out = Path(a.out or p["paths"]["report"])
    out.mkdir(parents=True, exist_ok=True)
    runs = p["adapters"]["runs"]
    adir = Path(p["paths"]["adapters"])
    order = {s: i for i, s in enumerate(p["data"]["skills"])}  # tables in the skills' order, not the build's
    names = a.adapters.split(",") if a.adapters else sorted(
        (n for n, r in runs.items() if len(r["skills"]) == 1 and (adir / n).is_dir()),
        key=lambda n: order.get(runs[n]["skills"][0], len(order)))
    fig = figure2([str(adir / n) for n in names])
    drift = seed_drift(p, names)
    (out / "figure2.json").write_text(json.dumps({"adapters": names, "overlap": fig, "seed_drift": drift},
                                                 indent=1) + "\n")
    text = render_figure2(fig, names) + "\nTrained A vs its own random initial A (what a shared seed would share):\n\n"
    text += "| adapter | A overlap with init | ||A - A0|| / ||A0|| |\n|---|---|---|\n"
    text += "".join(f"| {n} | {d['A_overlap_with_init']:.3f} | {d['A_rel_change']:.3f} |\n" for n, d in drift.items())
    (out / "figure2.md").write_text(text)
    print(text)
    if a.figure2_only:
        return
    p["adapters"]["runs"] = {n: r for n, r in runs.items()
                             if n in names or (len(r["skills"]) > 1 and (adir / n).is_dir())}
    p["data"]["skills"] = [runs[n]["skills"][0] for n in names]
    if a.all_rows:
        p["report"].pop("rows", None)
    elif a.rows:
        start, _, end = a.rows.partition(":")
        p["report"]["rows"] = p["report"]["rows"][int(start) if start else None:int(end) if end else None]
    ev = SmolEvaluator(p["paths"]["base"], p["paths"]["data"], p["data"]["skills"], fast_only=a.fast,
                       settings=p["eval"], tasks_dir=out / "lm_eval_tasks", val_limit=p["report"].get("val_limit"))
    tara = None
    if a.tara:
        tara = {"configs": [tuple(c.split("+")) for c in a.tara.split(",")], "epochs": a.tara_epochs,
                "prompt_files": chat_prompt_files(p, names, out / "tara_prompts")}
    run_report(p, out, fast_only=a.fast, ablations=not a.no_ablations, methods=a.methods.split(","),
               evaluator=ev, tara=tara)


def chat_prompt_files(p: dict, names: list[str], out: Path) -> list[Path]:
    """TARA's unlabeled inputs for each adapter: its skill's validation prompts with the chat template applied, as
    token ids (the form the model sees at test time; TARA would otherwise tokenize the bare text)."""
    from transformers import AutoTokenizer

    from skills.smollm2.common import chat_prompt
    from skills.smollm2.data import read_jsonl

    tok = AutoTokenizer.from_pretrained(p["paths"]["base"])
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for n in names:
        skill = p["adapters"]["runs"][n]["skills"][0]
        f = out / f"{skill}.jsonl"
        with open(f, "w") as fh:
            for r in read_jsonl(Path(p["paths"]["data"]) / skill / "validation.jsonl"):
                ids = tok(chat_prompt(tok, r["prompt"]), add_special_tokens=False)["input_ids"]
                fh.write(json.dumps({"input_ids": ids}) + "\n")
        files.append(f)
    return files


if __name__ == "__main__":
    main()
