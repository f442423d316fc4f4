"""The promotion policy, pure (no MLflow): whether a new version may replace the champion, and why.

:mod:`pipeline.promotion` reads the registry, calls :func:`decide` and moves the alias. With per-sample outcomes (every
suite scored through lm-eval's ``log_samples``, or a scorer returning them) the decision is the paired statistical
test below (:func:`judge`); a scorer with plain scores falls back to comparing means (:func:`gate`).

Pure Python (no Prefect, MLflow or lm-eval): the inputs are per-sample outcomes, ``{task: {item_id: 0 or 1}}`` for
the candidate and for the champion, scored on the same benchmark.

Which test, and why: **McNemar's exact test**, per task, and its stratified form for the mean.

* On one task the only items that say anything about "which model is better" are the discordant ones (one model
  right, the other wrong); under "no difference" each discordant item goes either way with probability 1/2. McNemar's
  exact test is that binomial: exact for any number of discordant items, where a paired bootstrap is
  anti-conservative for few of them (3 items lost out of 200 and none won: the bootstrap gives p ~ 0.05 that the task
  got worse, the exact test p = 0.125).
* The gated aggregate is the mean over tasks of per-task accuracy (tasks weigh the same, whatever their item counts),
  a weighted sum of per-task McNemar counts; its null distribution (each task's discordant items flipping fair coins)
  has no closed form, so it is drawn by Monte Carlo (a sign-flip randomization test, ``iters`` draws, fixed ``seed``:
  the same inputs always give the same p-value and decision).

A candidate is promoted when every task is at or above its floor, and, when there is a champion, the mean gain is
at least ``min_delta`` and significant (one-sided p < ``alpha``) and no task is significantly worse (one-sided exact
McNemar p < ``alpha``). The first night, with no champion, promotes on the floors alone.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import GateError
from .records import ChampionRecord, Comparison, Decision, Scores, Verdict
from .settings import GateSettings

CHAMPION, CANDIDATE = "champion", "candidate"


def mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


NO_CHAMPION = "no champion yet; every task at or above its floor"


def below_floors(scores: dict[str, float], cfg: GateSettings) -> list[str]:
    """The floor rule of both gates: each task under its floor, as a reason."""
    return [f"{task} {value:.3f} is below its floor {cfg.floor_of(task):.3f}"
            for task, value in sorted(scores.items()) if value < cfg.floor_of(task)]


def gate(scores: dict[str, float], champion: ChampionRecord | None, cfg: GateSettings) -> tuple[bool, list[str]]:
    """The promotion gate on means (a scorer with plain scores): mean not below the champion's (+ min_delta), no task
    below its floor."""
    reasons = below_floors(scores, cfg)
    if champion is not None:
        need = champion.mean + cfg.min_delta
        if mean(scores) < need - 1e-9:  # a tie is not "below": means re-read from MLflow may differ in the last bits
            reasons.append(f"mean {mean(scores):.4f} is below the champion's (v{champion.version}: "
                           f"{champion.mean:.4f}" + (f" + min_delta {cfg.min_delta}" if cfg.min_delta else "") + ")")
    return not reasons, reasons


def decide(version: str, scores: dict[str, float], champion: ChampionRecord | None, cfg: GateSettings,
           verdict: Verdict | None = None) -> Decision:
    """The decision for ``version`` against the current ``champion`` (None: there is none). ``verdict``: the paired
    test's outcome against that same champion (:func:`judge`), used instead of comparing means."""
    if champion is not None and champion.version == str(version):
        return Decision(promoted=True, alias=CHAMPION, version=version, unchanged=True,
                        reasons=[f"v{version} is already the champion (same bytes, same benchmark)"],
                        previous_champion=str(version))
    if verdict is not None:
        return Decision(promoted=verdict.promote, alias=CHAMPION if verdict.promote else CANDIDATE, version=version,
                        unchanged=False, reasons=list(verdict.reasons),
                        previous_champion=champion.version if champion else None)
    passed, reasons = gate(scores, champion, cfg)
    if passed and champion is None:
        reasons = [NO_CHAMPION]
    elif passed and champion is not None:
        reasons = [f"mean {mean(scores):.4f} >= champion v{champion.version} {champion.mean:.4f}"
                   + (f" + {cfg.min_delta}" if cfg.min_delta else "") + "; every task at or above its floor"]
    return Decision(promoted=passed, alias=CHAMPION if passed else CANDIDATE, version=version, unchanged=False,
                    reasons=reasons, previous_champion=champion.version if champion else None)


def accuracy_stderr(values) -> tuple[float, float]:
    """(mean, standard error of the mean) of 0/1 outcomes: sample std / sqrt(n), as lm-eval reports for a mean."""
    n = len(values)
    if n == 0:
        raise GateError("no items")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def summarize(outcomes: dict[str, dict]) -> dict:
    """Per-task accuracy and stderr, the mean over tasks and its stderr (tasks independent)."""
    scores, stderr = {}, {}
    for task, items in sorted(outcomes.items()):
        scores[task], stderr[task] = accuracy_stderr(list(items.values()))
    mean = sum(scores.values()) / len(scores)
    mean_se = math.sqrt(sum(se ** 2 for se in stderr.values())) / len(stderr)
    return {"scores": scores, "stderr": stderr, "mean": mean, "mean_stderr": mean_se,
            "n": {t: len(v) for t, v in sorted(outcomes.items())}}


def _binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exact (log-space terms, fine for any n)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def _check(outcomes: dict[str, dict], who: str) -> None:
    if not outcomes:
        raise GateError(f"{who}: no per-sample outcomes")
    for task, items in outcomes.items():
        if not items:
            raise GateError(f"{who}: task {task!r} has no items")
        bad = [k for k, v in items.items() if v not in (0, 1, 0.0, 1.0, True, False)]
        if bad:
            raise GateError(f"{who}: task {task!r} item {bad[0]!r} has outcome {items[bad[0]]!r}; the gate needs 0/1")


def compare(candidate: dict[str, dict], champion: dict[str, dict], *, iters: int = GateSettings().iters,
            seed: int = GateSettings().seed) -> Comparison:
    """The paired comparison of two models' per-sample outcomes on the same tasks and items."""
    _check(candidate, "candidate")
    _check(champion, "champion")
    if set(candidate) != set(champion):
        raise GateError(f"not the same tasks: candidate {sorted(candidate)}, champion {sorted(champion)}")
    tasks, weights, discordant = {}, [], []
    gain, var = 0.0, 0.0
    S = len(candidate)
    for task in sorted(candidate):
        a, b = candidate[task], champion[task]
        if set(a) != set(b):
            only = sorted(set(a) ^ set(b), key=str)[:3]
            raise GateError(f"task {task!r}: not the same items (candidate {len(a)}, champion {len(b)}; e.g. "
                            f"{only}); re-score the champion on this benchmark")
        d = [float(a[k]) - float(b[k]) for k in sorted(a, key=str)]
        n = len(d)
        won, lost = sum(1 for x in d if x > 0), sum(1 for x in d if x < 0)
        diff, se = accuracy_stderr(d) if n > 1 else (d[0], float("nan"))
        # McNemar exact, one-sided each way: P(won <= observed) under a fair coin on the won+lost discordant items
        p_worse = _binom_cdf(won, won + lost)
        p_better = _binom_cdf(lost, won + lost)
        tasks[task] = {"diff": diff, "stderr": se, "won": won, "lost": lost, "n": n, "p_worse": p_worse,
                       "p_better": p_better}
        gain += diff / S
        var += (se if se == se else 0.0) ** 2 / S ** 2
        weights.append(1.0 / (S * n))
        discordant.append(won + lost)
    observed = sum(weights[i] * (tasks[t]["won"] - tasks[t]["lost"]) for i, t in enumerate(sorted(tasks)))
    rng = np.random.default_rng(seed)
    w, D = np.asarray(weights), np.asarray(discordant)
    k = rng.binomial(D, 0.5, size=(int(iters), len(D)))  # items the candidate wins under "no difference"
    null = ((2 * k - D) * w).sum(axis=1)
    p_gain = float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + int(iters)))
    return Comparison(gain=gain, gain_stderr=math.sqrt(var), p_gain=p_gain, tasks=tasks)


def judge(candidate: dict[str, dict], champion: dict[str, dict] | None, cfg: GateSettings = GateSettings(), *,
          champion_name: str = "the champion") -> Verdict:
    """Promote or not, with the reasons (each failed condition, or why it passed)."""
    _check(candidate, "candidate")
    cand = Scores(**summarize(candidate))
    reasons = below_floors(cand.scores, cfg)
    if champion is None:
        return Verdict(promote=not reasons, reasons=reasons or [NO_CHAMPION], candidate=cand)
    comp = compare(candidate, champion, iters=cfg.iters, seed=cfg.seed)
    alpha = cfg.alpha
    champ = Scores(**summarize(champion))
    gain = f"mean gain {comp.gain:+.4f} ± {comp.gain_stderr:.4f} over {champion_name}"
    if comp.gain < cfg.min_delta:
        reasons.append(f"{gain} is below min_delta {cfg.min_delta:g}")
    elif comp.p_gain >= alpha:
        reasons.append(f"{gain} is not significant (paired randomization p = {comp.p_gain:.3f} >= alpha {alpha:g})")
    for task, t in comp.tasks.items():
        if t["p_worse"] < alpha:
            reasons.append(f"{task} is significantly worse than {champion_name}: {t['diff']:+.3f} ({t['lost']} items "
                           f"lost, {t['won']} won; McNemar p = {t['p_worse']:.4f} < alpha {alpha:g})")
    promote = not reasons
    if promote:
        reasons = [f"{gain} is significant (p = {comp.p_gain:.4f} < {alpha:g}); no task significantly worse; every "
                   "task at or above its floor"]
    return Verdict(promote=promote, reasons=reasons, candidate=cand, champion=champ, comparison=comp)
