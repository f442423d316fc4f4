"""Prefect artifacts of a night, created inside the flow so scheduled runs show them in the UI (stable keys: each
night adds a version to the same artifact's history).

    pico-candidates    table     the search's candidates by validation mean (mean ± stderr per candidate)
    pico-leaderboard   table     registered versions on this benchmark by test mean (± stderr), then baselines
    pico-decision      markdown  the chosen recipe and why, the gate's decision and its statistics
    pico-mlflow-run    link      the night's MLflow run
"""

from __future__ import annotations

KEYS = ("pico-candidates", "pico-leaderboard", "pico-decision", "pico-mlflow-run")


def _pm(mean, se) -> str:
    return f"{mean:.4f}" + (f" ± {float(se):.4f}" if se not in (None, "", "none") else "")


def leaderboard_rows(board: list[dict], baselines: list[dict], this_version: str | None) -> list[dict]:
    rows = []
    for r in board:
        recipe = r.get("recipe") or {}
        row = {"model": f"v{r['version']}", "recipe": f"{recipe.get('method', '?')}/{recipe.get('space', '?')}"
                                                      f"/{recipe.get('calibrate', '?')} lam={recipe.get('lam', '?')}",
               "aliases": ",".join(r["aliases"]) + (" (this night)" if r["version"] == this_version else ""),
               "test mean": _pm(r["mean"], r.get("mean_stderr"))}
        row.update({t: f"{s:.3f}" for t, s in sorted(r["scores"].items())})
        rows.append(row)
    for b in baselines:
        row = {"model": f"({b['label']})", "recipe": "baseline, not registered", "aliases": "",
               "test mean": _pm(b["mean"], b.get("mean_stderr"))}
        row.update({t: f"{s:.3f}" for t, s in sorted(b["scores"].items())})
        rows.append(row)
    return rows


def decision_markdown(summary: dict) -> str:
    d, ev = summary["decision"], summary["eval"]
    verdict = ("PROMOTED to champion" if d["promoted"] and not d["unchanged"] else
               "champion unchanged" if d["unchanged"] else "NOT promoted (candidate)")
    lines = [f"# {summary['model']} v{d['version']}: {verdict}", ""]
    s = summary.get("search")
    if s:
        lines += [f"**Recipe**: `{s['chosen']}`, chosen on the validation split: {s['why']}.",
                  f"The test split was read only for the chosen merge (and the champion/baselines for the gate and "
                  f"leaderboard), never to choose. {s['cached']} of {s['candidates']} candidates came from the cache.",
                  ""]
    else:
        lines += [f"**Recipe**: `{summary.get('recipe_label', '')}` (one recipe in params.yaml, no search).", ""]
    lines += [f"**Test mean** {_pm(ev['mean'], ev.get('mean_stderr'))}", "", "**Gate**: " + "; ".join(d["reasons"])]
    g = summary.get("gate") or {}
    comp = g.get("comparison")
    if comp:
        lines += ["", "| task | diff | won | lost | McNemar p (worse) |", "|---|---|---|---|---|"]
        for t, x in comp["tasks"].items():
            lines.append(f"| {t} | {x['diff']:+.3f} ± {x['stderr']:.3f} | {x['won']} | {x['lost']} | "
                         f"{x['p_worse']:.4f} |")
        lines += ["", f"mean gain {comp['gain']:+.4f} ± {comp['gain_stderr']:.4f}, paired randomization "
                      f"p = {comp['p_gain']:.4f}"]
    if summary.get("mlflow_url"):
        lines += ["", f"MLflow run: {summary['mlflow_url']}"]
    return "\n".join(lines)


def publish(summary: dict, board: list[dict], candidate_rows: list[dict] | None) -> list[str]:
    """Create the night's artifacts in the current flow run. Returns the keys created."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    made = []
    if candidate_rows:
        create_table_artifact(key="pico-candidates", table=candidate_rows,
                              description="Recipe search: candidates by validation mean (the argmax is the night's "
                                          "merge)")
        made.append("pico-candidates")
    create_table_artifact(key="pico-leaderboard",
                          table=leaderboard_rows(board, summary["baselines"], summary["registered"]["version"]),
                          description="Registered versions by test mean ± stderr (same benchmark), then baselines")
    made.append("pico-leaderboard")
    create_markdown_artifact(key="pico-decision", markdown=decision_markdown(summary),
                             description="The night's recipe and promotion decision")
    made.append("pico-decision")
    if summary.get("mlflow_url"):
        create_link_artifact(key="pico-mlflow-run", link=summary["mlflow_url"],
                             link_text=f"MLflow run {summary['registered']['run_id']}",
                             description="The night's MLflow run (child runs: one per candidate)")
        made.append("pico-mlflow-run")
    return made
