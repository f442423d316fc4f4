"""One renderer of a night's result (:class:`NightlyResult`): the printed report, the Prefect artifacts' tables and
markdown, and the promotion notification all read the same rows and the same wording. Pure: it formats what it is
given (the registry's leaderboard is read by the caller)."""

from __future__ import annotations

from dataclasses import dataclass

from .gate import gain_text
from .records import CandidateRecord, Decision, NightlyResult
from .settings import Settings


def pm(mean: float, se) -> str:
    """mean ± stderr (the stderr when there is one)."""
    return f"{mean:.4f}" + (f" ± {float(se):.4f}" if se not in (None, "", "none") else "")


def verdict(d: Decision) -> str:
    return ("PROMOTED to champion" if d.promoted and not d.unchanged else
            "champion unchanged" if d.unchanged else "NOT promoted: set as candidate")


def recipe_of(summary: NightlyResult) -> str:
    return summary.search.chosen if summary.search else summary.recipe_label


def recipe_summary(recipe: dict) -> str:
    """ties / core / calibrate=pico (a pico merge) | learned factors / teacher / init=tsv/core lam=0.5 (pico tara)."""
    if "objective" in recipe:
        return f"learned {recipe['method']} / {recipe['objective']} / init={recipe.get('init')}"
    return f"{recipe['method']} / {recipe['space']} / calibrate={recipe['calibrate']}"


def candidate_rows(records: list[CandidateRecord], chosen_key: str | None = None) -> list[dict]:
    """Candidates by validation mean (finalists first, best first; ties: search order), as table rows."""
    rows: list[dict] = []
    finalist = lambda r: "finalist" in r.scored_on or "(learned)" in r.scored_on  # noqa: E731
    for r in sorted(records, key=lambda r: (not finalist(r), -r.validation.mean, r.index)):
        v = r.validation
        rows.append({"rank": len(rows) + 1, "candidate": r.label, "val mean": pm(v.mean, v.mean_stderr),
                     **{t: f"{s:.3f}" for t, s in v.scores.items()}, "scored on": r.scored_on,
                     "chosen": "yes" if r.key == chosen_key else ""})
    return rows


def learned_markdown(rec: CandidateRecord) -> str:
    """A learned candidate: where it started, what it cost, its validation scores and its loss curve."""
    t = rec.training or {}
    loss = t.get("loss") or []
    lines = [f"## {rec.label}", "",
             f"- started from `{t.get('init')}` ({t.get('variant')}, objective {t.get('objective')}), "
             f"{t.get('steps')} steps, {t.get('coefficients')} trained coefficients",
             f"- cost: {t.get('seconds_prepare', 0):.1f} s teacher replies and preparation + "
             f"{t.get('seconds_train', 0):.1f} s training; validation scoring {rec.score_s:.1f} s",
             f"- validation mean {pm(rec.validation.mean, rec.validation.mean_stderr)}: "
             + ", ".join(f"{k} {v:.3f}" for k, v in rec.validation.scores.items()),
             "- prompts: " + ", ".join(f"{k} {v['n']} ({v['sha256'][:12]})" for k, v in (t.get("prompts") or {}).items()),
             "", "| step | loss |", "|---:|---:|"]
    lines += [f"| {i + 1} | {x:.4f} |" for i, x in enumerate(loss)]
    return "\n".join(lines)


@dataclass
class Row:
    """One model of the leaderboard: a registered version, the champion before this night, or a baseline."""

    model: str  # v3, (base)
    recipe: dict | None  # None: a baseline
    aliases: list[str]
    mean: float
    stderr: float | str | None
    scores: dict[str, float]
    note: str = ""  # "this night", "champion before"


def leaderboard_rows(summary: NightlyResult, board: list[dict]) -> list[Row]:
    """Registered versions on this benchmark by test mean (the registry's order), the champion before this night if
    the board lacks it, then the baselines."""
    rows = [Row(f"v{r['version']}", r.get("recipe") or {}, sorted(r["aliases"]), r["mean"], r.get("mean_stderr"),
                r["scores"], "this night" if r["version"] == summary.registered.version else "") for r in board]
    champ = summary.champion_before
    if champ and champ.version not in {r["version"] for r in board} and champ.scores:
        rows.append(Row(f"v{champ.version}", {}, [], champ.mean, None, champ.scores, "champion before"))
    rows += [Row(f"({b.label})", None, [], b.mean, b.mean_stderr, b.scores) for b in summary.baselines]
    return rows


def leaderboard_table(summary: NightlyResult, board: list[dict]) -> list[dict]:
    """The leaderboard as table rows (the ``pico-leaderboard`` artifact)."""
    out = []
    for r in leaderboard_rows(summary, board):
        rec = r.recipe or {}
        recipe = ("baseline, not registered" if r.recipe is None else r.note if not rec else
                  f"{recipe_summary(rec)} steps={rec.get('steps')}" if "objective" in rec else
                  f"{rec.get('method', '?')}/{rec.get('space', '?')}/{rec.get('calibrate', '?')} "
                  f"lam={rec.get('lam', '?')}")
        row = {"model": r.model, "recipe": recipe,
               "aliases": ",".join(r.aliases) + (f" ({r.note})" if r.note == "this night" else ""),
               "test mean": pm(r.mean, r.stderr)}
        row.update({t: f"{s:.3f}" for t, s in sorted(r.scores.items())})
        out.append(row)
    return out


def leaderboard_text(summary: NightlyResult, board: list[dict], settings: Settings) -> list[str]:
    bench = settings.pipeline.eval
    tasks = list(summary.eval.scores)
    what = {"skills": f"skills suite, {bench.split} split", "lm-eval": "lm-eval: " + ", ".join(bench.tasks),
            "callable": f"scorer {bench.callable}"}[bench.suite]
    what += f", limit {bench.limit}" if bench.limit else ""
    lines = ["", f"Leaderboard ({what}; registered versions by mean, then baselines)",
             f"{'':<30}" + "".join(f"{t[:9]:>10}" for t in tasks) + f"{'mean':>10}{'± se':>8}"]
    for r in leaderboard_rows(summary, board):
        label = r.model
        if r.recipe:
            label += (f" learned/{r.recipe.get('method')}" if "objective" in r.recipe else
                      f" {r.recipe.get('method', '?')}/{r.recipe.get('calibrate', '?')}")
        if r.aliases:
            label += " [" + ",".join(r.aliases) + "]"
        label += " *" if r.note == "this night" else " [champion before]" if r.note else ""
        lines.append(f"{label:<30}" + "".join(f"{r.scores.get(t, float('nan')):>10.3f}" for t in tasks)
                     + f"{r.mean:>10.3f}" + (f"{float(r.stderr):>8.3f}" if r.stderr not in (None, "", "none") else ""))
    lines.append("* this run; (..) baselines, not registered")
    return lines


def report(summary: NightlyResult, settings: Settings, board: list[dict]) -> str:
    """What the main command prints after a night: the leaderboard, the search, the decision and where to look."""
    lines = leaderboard_text(summary, board, settings)
    s = summary.search
    if s:
        lines += ["", f"Recipe search ({s.candidates} candidates, {s.cached} cached, {s.seconds} s; chosen on the "
                      "validation split, the test split read only for the chosen merge):"]
        for r in s.leaderboard[:5]:
            lines.append(f"  {r['rank']:>2}. {r['candidate']:<44} val mean {r['val mean']}"
                         + ("   <- chosen" if r.get("chosen") else ""))
        lines.append(f"  Chosen: {s.chosen} ({s.why})")
    d = summary.decision
    lines += ["", f"Decision: {summary.model} v{d.version} {verdict(d)}: " + "; ".join(d.reasons)]
    uri = summary.tracking_uri
    ui = f"mlflow ui --backend-store-uri {uri}" if not uri.startswith("http") else uri
    dvc = summary.dvc
    lines += [
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in summary.timings.items()),
        "",
        "Where to look:",
        f"  MLflow UI:  {ui}   (run {summary.registered.run_id})",
        f"  Lineage:    pico lineage {summary.model} {d.version}   (or: champion)",
        f"  Merged:     {summary.store}" + (f"  (DVC: {dvc.path} md5 {dvc.md5}, dvc.lock)" if dvc.enabled else ""),
    ]
    return "\n".join(lines)


def decision_markdown(summary: NightlyResult) -> str:
    """The ``pico-decision`` artifact: the recipe and why, the gate's decision and its statistics."""
    d, ev, s = summary.decision, summary.eval, summary.search
    lines = [f"# {summary.model} v{d.version}: {verdict(d)}", ""]
    if s:
        lines += [f"**Recipe**: `{s.chosen}`, chosen on the validation split: {s.why}.",
                  f"The test split was read only for the chosen merge (and the champion/baselines for the gate and "
                  f"leaderboard), never to choose. {s.cached} of {s.candidates} candidates came from the cache.", ""]
    else:
        lines += [f"**Recipe**: `{summary.recipe_label}` (one recipe in params.yaml, no search).", ""]
    lines += [f"**Test mean** {pm(ev.mean, ev.mean_stderr)}", "", "**Gate**: " + "; ".join(d.reasons)]
    comp = summary.gate and summary.gate.comparison
    if comp:
        lines += ["", "| task | diff | won | lost | test | p (worse) | Holm-adjusted |", "|---|---|---|---|---|---|---|"]
        for t, x in comp.tasks.items():
            holm = x.get("p_worse_holm")
            lines.append(f"| {t} | {x['diff']:+.3f} ± {x['stderr']:.3f} | {x['won']} | {x['lost']} | "
                         f"{x.get('test', 'mcnemar')} | {x['p_worse']:.4f} | "
                         + (f"{holm:.4f} |" if holm is not None else "|"))
        lines += ["", f"{gain_text(comp)}; H0: gain <= min_delta {comp.min_delta:g}, paired randomization "
                      f"p = {comp.p_gain:.4f}"]
    if summary.mlflow_url:
        lines += ["", f"MLflow run: {summary.mlflow_url}"]
    return "\n".join(lines)


def promotion_message(summary: NightlyResult) -> tuple[str, str]:
    """(subject, body) of the promotion notification."""
    d, ev = summary.decision, summary.eval
    subject = f"pico nightly: {summary.model} v{d.version} promoted to champion"
    lines = [subject, f"recipe: {recipe_of(summary)}", f"test mean {pm(ev.mean, ev.mean_stderr or None)}",
             "why: " + "; ".join(d.reasons)]
    if summary.mlflow_url:
        lines.append(f"MLflow: {summary.mlflow_url}")
    return subject, "\n".join(lines)


def failure_message(flow_name: str, run_name: str, error: str, url: str | None = None) -> tuple[str, str]:
    subject = f"pico nightly FAILED: {flow_name} / {run_name}"
    body = f"{subject}\n{error}\nNo alias was moved." + (f"\nPrefect: {url}" if url else "")
    return subject, body
