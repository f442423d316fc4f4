"""The skills report: base, every team adapter on every skill, the multi-task LoRA, and merges, on the test split.

    python -m skills.report [--params params.yaml] [--out build/suite/report] [--fast] [--no-ablations]

Rows: the base, each single adapter, the multi-task LoRA, and every merge method of the `pico` library with Pico off
and on, in full and in core space where the method has both.  Columns: per-skill exact match, average, normalized
accuracy (merged / the skill's own adapter, averaged over skills, as the Core Space paper reports) and gain recovered
((merged - base) / (own adapter - base), averaged over skills).  Rows are sorted by average within their section; the
best merge is marked.  Test numbers come from lm-eval (`skills.evaluate`); the merge scale lambda of every method
that is not norm-pinned is chosen on the validation split with the fast greedy decoder (identical outputs, tested),
from ``suite.report.lam_grid``.  With Pico's official "post" rescaling the merged norm is pinned and lambda has no
effect, so those rows use lambda = 1 as the library does.

Then the Pico ablations of the spec (section 6), all on Task Arithmetic in core space: strength sweep (kappa, gamma),
random-direction control, uniform-shrink control, A-space control, sharing-aware variant, rescaling variants (with
per-layer ||dW_merged|| / mean_t ||dW_t||), and the B-versus-A collision / overlap diagnostics.

Outputs (in --out): report.md, report.json, report.png, ablations.md, and the merged adapters under merges/.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import skills  # noqa: F401  (thread wait policy before torch loads)
from pico import METHODS as _METHOD_REGISTRY  # noqa: E402  (importing pico registers every method)

# every registered method (pico/methods/); rows are sorted by score, so this is only the run order
METHODS = tuple(_METHOD_REGISTRY)
DEFAULT_LAM_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0)


from skills.rows import Row  # noqa: E402,F401  (re-exported: the report's row type)

# --------------------------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------------------------

class Evaluator:
    """Fast greedy decoding (validation, lambda selection) and lm-eval (the reported test numbers)."""

    def __init__(self, base_dir: Path, data_dir: Path, skills: list[str], *, fast_only: bool = False,
                 batch_size: int = 256, max_gen_toks: int = 10, tasks_dir: Path | None = None):
        from skills.data import read_jsonl

        self.base_dir, self.data_dir, self.skills = Path(base_dir), Path(data_dir), list(skills)
        self.fast_only, self.batch_size, self.max_new = fast_only, batch_size, max_gen_toks
        self.tasks_dir = tasks_dir
        self.recs = {sp: {s: read_jsonl(self.data_dir / s / f"{sp}.jsonl") for s in skills}
                     for sp in ("validation", "test")}
        self.bench_seconds: list[float] = []

    def _model(self, adapter_dir: Path | None):
        from skills.base import load_base

        model = load_base(self.base_dir)
        if adapter_dir is None:
            return model
        from peft import PeftModel

        m = PeftModel.from_pretrained(model, str(adapter_dir))
        m.eval()
        return m

    def fast(self, model, split: str) -> dict[str, float]:
        from skills.common import accuracy

        return {s: accuracy(model, self.recs[split][s], self.max_new, self.batch_size) for s in self.skills}

    def lam_grid(self, adapter_dir: Path, lams) -> dict[float, dict[str, float]]:
        from skills.adapters import set_lora_scale

        model = self._model(adapter_dir)
        out = {}
        for lam in lams:
            set_lora_scale(model, lam)
            out[lam] = self.fast(model, "validation")
        return out

    def test(self, adapter_dir: Path | None) -> dict[str, float]:
        t0 = time.time()
        if self.fast_only:
            acc = self.fast(self._model(adapter_dir), "test")
        else:
            from skills.evaluate import evaluate

            acc = evaluate(self.base_dir, adapter_dir, self.skills, "test", data_dir=self.data_dir,
                           tasks_dir=self.tasks_dir, batch_size=self.batch_size, max_gen_toks=self.max_new)
        self.bench_seconds.append(time.time() - t0)
        return acc


# --------------------------------------------------------------------------------------------------------------------
# merging
# --------------------------------------------------------------------------------------------------------------------

def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label).strip("_")


def merge_and_score(ev: Evaluator, sources: list[str], recipe_kw: dict, work: Path, lam_grid, log) -> Row:
    from pico import Recipe, load_adapters, merge

    recipe = Recipe(**recipe_kw)
    label = recipe.label()
    out = work / _slug(label)
    t0 = time.time()
    aset = load_adapters(sources)
    merge(aset, recipe, out, device="cpu", overwrite=True, progress=False)
    merge_sec = time.time() - t0
    lam, grid = 1.0, None
    if recipe.rescale != "post" and lam_grid:
        grid = ev.lam_grid(out, lam_grid)
        lam = max(lam_grid, key=lambda x: (round(sum(grid[x].values()), 9), -abs(math.log(x))))
        if lam != 1.0:  # write the chosen lambda into the merge itself (lambda scales the merged update exactly)
            recipe = Recipe(**{**recipe_kw, "lam": lam})
            merge(aset, recipe, out, device="cpu", overwrite=True, progress=False)
    acc = ev.test(out)
    extra = {"merge_sec": round(merge_sec, 2), "dir": str(out)}
    if grid is not None:
        extra["val_grid"] = {str(k): round(sum(v.values()) / len(v), 4) for k, v in grid.items()}
    log(f"  {label:42s} lam={lam:<5g} " + " ".join(f"{s}={a:.2f}" for s, a in acc.items()))
    return Row(label, "merge", acc, lam, recipe.to_dict(), extra)


def update_norm_ratios(sources: list[str], merged: str) -> dict:
    """Per module ||dW_merged||_F / mean_t ||dW_t||_F (LoRA scales absorbed), summarised over modules."""
    import torch

    from pico import load_adapters

    src, mer = load_adapters(sources), load_adapters([merged])
    ratios = []
    for module in src.modules:
        norms = [torch.linalg.matrix_norm(b @ a).item() for b, a in src.factors(module)]
        (b, a), = mer.factors(module)
        ratios.append(torch.linalg.matrix_norm(b @ a).item() / max(1e-30, sum(norms) / len(norms)))
    ratios.sort()
    return {"mean": sum(ratios) / len(ratios), "min": ratios[0], "median": ratios[len(ratios) // 2],
            "max": ratios[-1], "modules": len(ratios)}


def diagnostics(sources: list[str]) -> dict:
    """Collision spectra of stacked B vs stacked A and pairwise subspace overlap of B vs A (means over modules)."""
    import torch

    from pico import inspect_adapters, load_adapters

    info = inspect_adapters(load_adapters(sources), device="cpu", progress=False)

    def eff(c):  # effective number of directions exp(H(c))
        c = torch.tensor(c, dtype=torch.float64).clamp_min(1e-30)
        return float(torch.exp(-(c * c.log()).sum()))

    keys = ("collision_B", "collision_A")
    out: dict = {}
    for k in keys:
        vals = [v[k] for v in info.values()]
        out[k] = {"max_c_mean": sum(max(x) for x in vals) / len(vals),
                  "top5_share_mean": sum(sum(sorted(x, reverse=True)[:5]) for x in vals) / len(vals),
                  "effective_dirs_mean": sum(eff(x) for x in vals) / len(vals),
                  "dims_mean": sum(len(x) for x in vals) / len(vals)}
    for k in ("overlap_B", "overlap_A"):
        vals = [v[k] for v in info.values()]
        vals = [sum(x) / len(x) if isinstance(x, list) else x for x in vals]
        out[k] = sum(vals) / len(vals)
    alphas = [a for v in info.values() for a in (v.get("alpha") or [])]
    if alphas:
        out["alpha"] = {"min": min(alphas), "mean": sum(alphas) / len(alphas)}
    return out


# --------------------------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------------------------

def run_report(p: dict, out_dir: str | Path, *, fast_only: bool = False, ablations: bool = True,
               methods=METHODS, log=print, tara: bool | dict = False, evaluator: "Evaluator | None" = None) -> dict:
    """The report for a suite's params ``p`` (``paths``, ``data.skills``, ``adapters.runs``, ``eval``, ``report``).
    ``evaluator`` scores models for another suite (an :class:`Evaluator` subclass; default: this suite's)."""
    from pico.registry import get_method

    t_start = time.time()
    paths = p["paths"]
    skills = list(p["data"]["skills"])
    cfg = p.get("report", {})
    lam_grid = tuple(cfg.get("lam_grid", DEFAULT_LAM_GRID))
    out = Path(out_dir)
    work = out / "merges"
    work.mkdir(parents=True, exist_ok=True)
    runs = p["adapters"]["runs"]
    singles = [n for n, r in runs.items() if len(r["skills"]) == 1]
    multis = [n for n, r in runs.items() if len(r["skills"]) > 1]
    skill_of = {n: runs[n]["skills"][0] for n in singles}
    adir = Path(paths["adapters"])
    sources = [str(adir / n) for n in singles]
    ev = evaluator or Evaluator(Path(paths["base"]), Path(paths["data"]), skills, fast_only=fast_only,
                                batch_size=int(p.get("eval", {}).get("batch_size", 256)),
                                max_gen_toks=int(p.get("eval", {}).get("max_gen_toks", 10)),
                                tasks_dir=out / "lm_eval_tasks")

    rows: list[Row] = []
    log("references")
    rows.append(Row("base", "reference", ev.test(None)))
    for n in singles + multis:
        rows.append(Row(f"adapter {n}" if n in singles else f"multi-task LoRA ({n})", "reference",
                        ev.test(adir / n), extra={"train_info": _train_info(adir / n)}))
        log(f"  {rows[-1].name:42s} " + " ".join(f"{s}={a:.2f}" for s, a in rows[-1].acc.items()))
    base = rows[0].acc
    own = {skill_of[n]: r.acc[skill_of[n]] for n, r in zip(singles, rows[1:1 + len(singles)])}
    own = {s: own.get(s, float("nan")) for s in skills}

    log("merges")
    abl: dict = {}
    if cfg.get("rows"):  # an explicit list of recipes (a suite whose merges cost minutes each: params report.rows)
        abl = explicit_rows(ev, sources, work, lam_grid, log, cfg["rows"], rows)
    else:
        for m in methods:
            spaces = [s for s in ("full", "core") if s in get_method(m).spaces]
            for space in spaces:
                for calib in ("none", "pico"):
                    rows.append(merge_and_score(ev, sources, {"method": m, "space": space, "calibrate": calib},
                                                work, lam_grid, log))

    if tara:  # TARA (not data-free: unlabeled validation prompts), tara-a/b with and without Pico; skills/tara_rows.py
        from skills.tara_rows import skills_tara_rows

        rows += skills_tara_rows(ev, sources, work, log, skill_of=skill_of, **(tara if isinstance(tara, dict) else {}))

    if ablations and not abl:
        abl = run_ablations(ev, sources, work, lam_grid, log)
    if abl:
        rows += abl.pop("rows")

    table = []
    for r in rows:
        table.append({"name": r.name, "section": r.section, "acc": r.acc, "lam": r.lam, "recipe": r.recipe,
                      **r.summary(base, own), **({"extra": r.extra} if r.extra else {})})
    merges = [t for t in table if t["section"] == "merge"]
    best = max(merges, key=lambda t: t["avg"])["name"] if merges else None
    ta = [t for t in merges if t["recipe"]["method"] == "ta" and t["recipe"]["calibrate"] == "none"]
    ta_best = max(ta, key=lambda t: t["avg"]) if ta else None
    targets = check_targets(table, skills, own, base, ta_best, singles, skill_of,
                            float(cfg.get("adapter_min", 0.9)), float(cfg.get("base_gap", 0.3)))
    result = {
        "skills": skills, "base": base, "own_adapter": own, "rows": table, "best_merge": best, "targets": targets,
        "ablations": abl, "lam_grid": list(lam_grid), "evaluator": "fast greedy" if fast_only else "lm-eval",
        "eval_seconds": {"n": len(ev.bench_seconds), "mean": _mean(ev.bench_seconds),
                         "max": max(ev.bench_seconds) if ev.bench_seconds else None},
        "report_seconds": round(time.time() - t_start, 1),
    }
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "report.md").write_text(render_markdown(result))
    if abl:
        (out / "ablations.md").write_text(render_ablations(result))
    plot(result, out / "report.png")
    return result


def _mean(xs):
    return round(sum(xs) / len(xs), 2) if xs else None


def _train_info(d: Path) -> dict:
    f = d / "train_info.json"
    if not f.exists():
        return {}
    info = json.loads(f.read_text())
    keep = ("seed", "r", "lora_alpha", "use_rslora", "steps", "train_sec", "rel_update", "rel_update_max", "acc",
            "acc_half_scale")
    return {k: info[k] for k in keep if k in info}


def check_targets(table, skills, own, base, ta_best, singles, skill_of, adapter_min: float = 0.9,
                  base_gap: float = 0.3) -> dict:
    t: dict = {"adapter_min": adapter_min, "base_gap": base_gap}
    t["adapters_ge_min"] = {s: own[s] >= adapter_min for s in skills}
    t["base_gap_met"] = {s: own[s] - base[s] >= base_gap - 1e-9 for s in skills}
    if ta_best:
        t["ta_best"] = {"name": ta_best["name"], "lam": ta_best["lam"], "gain": ta_best["gain"],
                        "gain_in_20_80": 0.2 <= ta_best["gain"] <= 0.8,
                        "skills_lost": [s for s, g in ta_best["gain_per_skill"].items() if g <= 0]}
    t["all_met"] = (all(t["adapters_ge_min"].values()) and all(t["base_gap_met"].values())
                    and bool(ta_best) and t["ta_best"]["gain_in_20_80"] and not t["ta_best"]["skills_lost"])
    return t


# --------------------------------------------------------------------------------------------------------------------
# ablations (spec section 6), on TA in core space
# --------------------------------------------------------------------------------------------------------------------

def explicit_rows(ev: Evaluator, sources: list[str], work: Path, lam_grid, log, specs: list[dict],
                  rows: list[Row]) -> dict:
    """Merge rows from a list of recipe dicts (params ``report.rows``); an entry with ``group:`` is an ablation row
    (Task Arithmetic in core space unless it says otherwise). Appends the merge rows to ``rows``; returns the
    ablation dict (as :func:`run_ablations`) when any entry has a group, else {}."""
    abl_rows: list[Row] = []
    groups: dict[str, list[str]] = {}
    for spec in specs:
        kw = {k: v for k, v in spec.items() if k != "group"}
        if "group" not in spec:
            rows.append(merge_and_score(ev, sources, kw, work, lam_grid, log))
            continue
        log(f"ablation {spec['group']}")
        r = merge_and_score(ev, sources, {"method": "ta", "space": "core", **kw}, work, lam_grid, log)
        r.section, r.extra["group"] = "ablation", spec["group"]
        r.extra["norm_ratio"] = update_norm_ratios(sources, r.extra["dir"])
        abl_rows.append(r)
        groups.setdefault(spec["group"], []).append(r.name)
    if not groups:
        return {}
    return {"rows": abl_rows, "groups": groups, "diagnostics": diagnostics(sources), "T": len(sources)}


def run_ablations(ev: Evaluator, sources: list[str], work: Path, lam_grid, log) -> dict:
    T = len(sources)
    base_kw = {"method": "ta", "space": "core"}
    rows: list[Row] = []
    groups: dict[str, list[str]] = {}

    def add(group: str, kw: dict):
        log(f"ablation {group}")
        r = merge_and_score(ev, sources, {**base_kw, **kw}, work, lam_grid, log)
        r.section = "ablation"
        r.extra["group"] = group
        r.extra["norm_ratio"] = update_norm_ratios(sources, r.extra["dir"])
        rows.append(r)
        groups.setdefault(group, []).append(r.name)

    for f in (0.0, 0.25, 0.5, 1.0, 2.0):  # strength sweep, kappa = f (T - 1); f = 1 is the official Pico
        add("1. strength kappa", {"calibrate": "pico", "kappa": f * (T - 1), "rescale": "post"})
    for g in (0.5, 2.0):
        add("1. strength gamma", {"calibrate": "pico", "gamma": g, "rescale": "post"})
    add("2. random-direction control", {"calibrate": "pico-random", "rescale": "post"})
    add("3. uniform-shrink control", {"calibrate": "pico-uniform", "rescale": "post"})
    add("4. A-space control", {"calibrate": "pico-a", "rescale": "post"})
    add("5. sharing-aware variant", {"calibrate": "pico-sharing", "rescale": "post"})
    for rs in ("post", "pre", "none"):
        add("6. rescaling", {"calibrate": "pico", "rescale": rs})
    add("6. rescaling", {"calibrate": "none", "rescale": "none"})
    add("6. rescaling", {"calibrate": "none", "rescale": "post"})
    log("ablation 7. diagnostics")
    diag = diagnostics(sources)
    return {"rows": rows, "groups": groups, "diagnostics": diag, "T": T}


# --------------------------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------------------------

def _fmt(x):
    return "" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _table_md(rows, skills, best=None, bold_cols=True) -> list[str]:
    head = ["row"] + skills + ["avg", "normalized", "gain recovered", "lambda"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    colbest = {}
    if bold_cols and rows:
        for k in skills:
            colbest[k] = max(r["acc"][k] for r in rows)
        for k in ("avg", "normalized", "gain"):
            colbest[k] = max(r[k] for r in rows)
    for r in rows:
        name = r["name"] + (" **(best)**" if r["name"] == best else "")
        cells = [name]
        for k in skills:
            v = f"{r['acc'][k]:.3f}"
            cells.append(f"**{v}**" if bold_cols and r["acc"][k] == colbest.get(k) else v)
        for k in ("avg", "normalized", "gain"):
            v = f"{r[k]:.3f}"
            cells.append(f"**{v}**" if bold_cols and r[k] == colbest.get(k) else v)
        cells.append(_fmt(r["lam"]) if r["section"] != "reference" else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(res: dict) -> str:
    skills = res["skills"]
    refs = [r for r in res["rows"] if r["section"] == "reference"]
    merges = sorted((r for r in res["rows"] if r["section"] == "merge"), key=lambda r: -r["avg"])
    lines = ["# Skills suite report", "",
             f"Test split, exact match, evaluated with {res['evaluator']}. normalized = mean over skills of "
             "acc / own adapter's acc; gain recovered = mean over skills of (acc - base) / (own - base). "
             f"lambda chosen on validation from {res['lam_grid']} (norm-pinned 'post' rows: lambda = 1).", "",
             "## References", ""]
    lines += _table_md(refs, skills, bold_cols=False)
    lines += ["", "## Merges of the single-skill adapters (sorted by average; bold = best in column)", ""]
    lines += _table_md(merges, skills, best=res["best_merge"])
    t = res["targets"]
    lines += ["", "## Targets", ""]
    lines.append(f"- each adapter >= {t['adapter_min']:.2f} on its own skill: {t['adapters_ge_min']}")
    lines.append(f"- base >= {100 * t['base_gap']:.0f} points below the adapter: {t['base_gap_met']}")
    if "ta_best" in t:
        tb = t["ta_best"]
        lines.append(f"- plain TA ({tb['name']}, lambda {tb['lam']}) gain recovered {tb['gain']:.3f} "
                     f"(target 0.2-0.8: {tb['gain_in_20_80']}); skills lost (gain <= 0): {tb['skills_lost'] or 'none'}")
    lines.append(f"- all met: {t['all_met']}")
    es = res["eval_seconds"]
    lines += ["", f"One evaluation of all skills on the test split: mean {es['mean']} s, max "
                  f"{_fmt(es['max'] and round(es['max'], 1))} s over {es['n']} evaluations; whole report "
                  f"{res['report_seconds']} s."]
    return "\n".join(lines) + "\n"


def render_ablations(res: dict) -> str:
    skills = res["skills"]
    abl = res["ablations"]
    by_name = {r["name"]: r for r in res["rows"] if r["section"] == "ablation"}
    lines = ["# Pico ablations (spec section 6), Task Arithmetic in core space", "",
             f"T = {abl['T']} adapters; official kappa = T - 1 = {abl['T'] - 1}. Test split, exact match.", ""]
    head = ["variant"] + skills + ["avg", "gain recovered", "lambda", "norm ratio mean [min, max]"]
    for group, names in abl["groups"].items():
        lines += [f"## {group}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for n in names:
            r = by_name[n]
            nr = r["extra"]["norm_ratio"]
            lines.append("| " + " | ".join([n] + [f"{r['acc'][s]:.3f}" for s in skills] +
                                            [f"{r['avg']:.3f}", f"{r['gain']:.3f}", _fmt(r["lam"]),
                                             f"{nr['mean']:.3f} [{nr['min']:.3f}, {nr['max']:.3f}]"]) + " |")
        lines.append("")
    d = abl["diagnostics"]
    lines += ["## 7. B-versus-A diagnostics (means over modules)", "",
              "| quantity | B (stacked B_t) | A (stacked A_t) |", "|---|---|---|"]
    for k, label in (("max_c_mean", "largest collision share c_1"), ("top5_share_mean", "share of top-5 directions"),
                     ("effective_dirs_mean", "effective directions exp(H(c))"), ("dims_mean", "directions (sum r)")):
        lines.append(f"| {label} | {d['collision_B'][k]:.3f} | {d['collision_A'][k]:.3f} |")
    lines.append(f"| mean pairwise subspace overlap between tasks | {d['overlap_B']:.3f} | {d['overlap_A']:.3f} |")
    if "alpha" in d:
        lines += ["", f"Pico alphas: min {d['alpha']['min']:.3f}, mean {d['alpha']['mean']:.3f}."]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["rows"] if r["section"] in ("reference", "merge")]
    refs = [r for r in rows if r["section"] == "reference"]
    merges = sorted((r for r in rows if r["section"] == "merge"), key=lambda r: r["avg"])
    rows = merges + refs[::-1]
    names = [r["name"] + ("  (best)" if r["name"] == res["best_merge"] else "") for r in rows]
    skills = res["skills"]
    fig, axes = plt.subplots(1, 2, figsize=(16, max(6, 0.32 * len(rows) + 1.5)), sharey=True,
                             gridspec_kw={"width_ratios": [3, 1.3]})
    y = list(range(len(rows)))
    h = 0.8 / len(skills)
    cmap = plt.get_cmap("tab10")
    for i, s in enumerate(skills):
        axes[0].barh([v + (i - (len(skills) - 1) / 2) * h for v in y], [r["acc"][s] for r in rows], height=h,
                     color=cmap(i), label=s)
    axes[0].plot([r["avg"] for r in rows], y, "k|", markersize=14, label="average")
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].set_xlim(0, 1.0)
    axes[0].set_xlabel("exact match (test)")
    axes[0].legend(loc="lower right", fontsize=8, ncol=2)
    axes[1].barh(y, [r["gain"] for r in rows], color=["tab:green" if r["section"] == "merge" else "tab:gray"
                                                      for r in rows])
    axes[1].axvspan(0.2, 0.8, color="tab:green", alpha=0.08)
    axes[1].axvline(0, color="k", lw=0.5)
    axes[1].set_xlabel("gain recovered over the base")
    fig.suptitle("Skills suite: base, adapters, multi-task LoRA and merges (Pico off/on, full/core)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from skills.config import load_suite_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=None)
    ap.add_argument("--fast", action="store_true", help="score the test split with the fast decoder, not lm-eval")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--no-tara", action="store_true", help="skip TARA (trained on unlabeled validation prompts)")
    ap.add_argument("--methods", default=None, help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--clean", action="store_true", help="remove previous merges first")
    a = ap.parse_args(argv)
    p = load_suite_params(a.params)
    out = Path(a.out or p["paths"]["report"])
    if a.clean and (out / "merges").exists():
        shutil.rmtree(out / "merges")
    methods = tuple(a.methods.split(",")) if a.methods else METHODS
    res = run_report(p, out, fast_only=a.fast, ablations=not a.no_ablations, methods=methods, tara=not a.no_tara)
    print((out / "report.md").read_text())
    print(f"written: {out}/report.md, report.json, report.png" + (", ablations.md" if res["ablations"] else ""))


if __name__ == "__main__":
    main()
