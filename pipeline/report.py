"""The text the main command prints after a night: the leaderboard, the decision, timings and where to look."""

from __future__ import annotations

from . import promotion
from .settings import Settings
from .records import NightlyResult


def leaderboard_lines(settings: Settings, summary: NightlyResult) -> list[str]:
    ev = summary.eval
    tasks_ = list(ev.scores)
    bench = settings.pipeline.eval
    what = {"skills": f"skills suite, {bench.split} split", "lm-eval": "lm-eval: " + ", ".join(bench.tasks),
            "callable": f"scorer {bench.callable}"}[bench.suite]
    what += f", limit {bench.limit}" if bench.limit else ""
    lines = ["", f"Leaderboard ({what}; registered versions by mean, then baselines)",
             f"{'':<30}" + "".join(f"{t[:9]:>10}" for t in tasks_) + f"{'mean':>10}{'± se':>8}"]

    def row(label, scores, mean, se=None):
        return (f"{label:<30}" + "".join(f"{scores.get(t, float('nan')):>10.3f}" for t in tasks_) + f"{mean:>10.3f}"
                + (f"{float(se):>8.3f}" if se not in (None, "", "none") else ""))

    board = promotion.leaderboard(settings, limit=8, fingerprint=summary.fingerprint)
    for r in board:
        recipe = r["recipe"]
        tag = f"v{r['version']} {recipe.get('method', '?')}/{recipe.get('calibrate', '?')}"
        if r["aliases"]:
            tag += " [" + ",".join(sorted(r["aliases"])) + "]"
        if r["version"] == summary.registered.version:
            tag += " *"
        lines.append(row(tag, r["scores"], r["mean"], r.get("mean_stderr")))
    champ = summary.champion_before
    if champ and champ.version not in {r["version"] for r in board} and champ.scores:
        lines.append(row(f"v{champ.version} [champion before]", champ.scores, champ.mean))
    for b in summary.baselines:
        lines.append(row(f"({b.label})", b.scores, b.mean, b.mean_stderr))
    lines.append("* this run; (..) baselines, not registered")
    return lines


def report(summary: NightlyResult | dict, settings: Settings) -> str:
    summary = NightlyResult.model_validate(summary)
    lines = leaderboard_lines(settings, summary)
    s = summary.search
    if s:
        lines += ["", f"Recipe search ({s['candidates']} candidates, {s['cached']} cached, {s['seconds']} s; chosen on "
                      "the validation split, the test split read only for the chosen merge):"]
        for r in s["leaderboard"][:5]:
            lines.append(f"  {r['rank']:>2}. {r['candidate']:<44} val mean {r['val mean']}"
                         + ("   <- chosen" if r["chosen"] else ""))
        lines.append(f"  Chosen: {s['chosen']} ({s['why']})")
    d = summary.decision
    verdict = ("PROMOTED to champion" if d.promoted and not d.unchanged else
               "champion unchanged" if d.unchanged else "NOT promoted: set as candidate")
    lines += ["", f"Decision: {summary.model} v{d.version} {verdict}: " + "; ".join(d.reasons)]
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
