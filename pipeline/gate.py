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
from dataclasses import dataclass, field

import numpy as np

from .settings import GateSettings
from .records import ChampionRecord, Decision

CHAMPION, CANDIDATE = "champion", "candidate"


def mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


def gate(scores: dict[str, float], champion: ChampionRecord | None, cfg: GateSettings) -> tuple[bool, list[str]]:
    """The promotion gate: mean not below the champion's (+ min_delta), no task below its floor."""
    reasons = []
    for task, value in sorted(scores.items()):
        floor = cfg.floor_of(task)
        if value < floor:
            reasons.append(f"{task} {value:.3f} is below its floor {floor:.3f}")
    if champion is not None:
        need = champion.mean + cfg.min_delta
        if mean(scores) < need - 1e-9:  # a tie is not "below": means re-read from MLflow may differ in the last bits
            reasons.append(f"mean {mean(scores):.4f} is below the champion's (v{champion.version}: "
                           f"{champion.mean:.4f}" + (f" + min_delta {cfg.min_delta}" if cfg.min_delta else "") + ")")
    return not reasons, reasons


def decide(version: str, scores: dict[str, float], champion: ChampionRecord | None, cfg: GateSettings,
           verdict: "Verdict | None" = None) -> Decision:
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
        reasons = ["no champion yet; every task at or above its floor"]
    elif passed:
        reasons = [f"mean {mean(scores):.4f} >= champion v{champion.version} {champion.mean:.4f}"
                   + (f" + {cfg.min_delta}" if cfg.min_delta else "") + "; every task at or above its floor"]
    return Decision(promoted=passed, alias=CHAMPION if passed else CANDIDATE, version=version, unchanged=False,
                    reasons=reasons, previous_champion=champion.version if champion else None)


DEFAULTS = {"alpha": 0.05, "iters": 20000, "seed": 0, "min_delta": 0.0, "floor": 0.0, "floors": {}}


class GateError(ValueError):
    """The outcomes cannot be compared (different items, empty tasks, values other than 0/1)."""


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


@dataclass
class Comparison:
    """Candidate minus champion on the same items."""

    gain: float  # mean over tasks of the accuracy difference
    gain_stderr: float  # paired standard error of that gain
    p_gain: float  # one-sided: P(gain this large | no difference), randomization test
    tasks: dict = field(default_factory=dict)  # task -> {diff, stderr, won, lost, n, p_worse, p_better}


def compare(candidate: dict[str, dict], champion: dict[str, dict], *, iters: int = DEFAULTS["iters"],
            seed: int = DEFAULTS["seed"]) -> Comparison:
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


@dataclass
class Verdict:
    promote: bool
    reasons: list[str]
    candidate: dict  # summarize(candidate)
    champion: dict | None = None  # summarize(champion)
    comparison: Comparison | None = None

    def to_dict(self) -> dict:
        out = {"promote": self.promote, "reasons": self.reasons, "candidate": self.candidate,
               "champion": self.champion}
        if self.comparison is not None:
            c = self.comparison
            out["comparison"] = {"gain": c.gain, "gain_stderr": c.gain_stderr, "p_gain": c.p_gain, "tasks": c.tasks}
        return out


def config(cfg: GateSettings | dict | None) -> dict:
    """The gate settings with defaults filled in, checked (a bad value names the key)."""
    if isinstance(cfg, GateSettings):
        cfg = cfg.model_dump()
    out = {**DEFAULTS, **{k: v for k, v in (cfg or {}).items() if k in DEFAULTS}}
    if not 0 < float(out["alpha"]) < 1:
        raise ValueError(f"pipeline.gate.alpha must be in (0, 1), got {out['alpha']}")
    if int(out["iters"]) < 100:
        raise ValueError(f"pipeline.gate.iters must be >= 100, got {out['iters']}")
    return out


def judge(candidate: dict[str, dict], champion: dict[str, dict] | None, cfg: GateSettings | dict | None = None, *,
           champion_name: str = "the champion") -> Verdict:
    """Promote or not, with the reasons (each failed condition, or why it passed)."""
    cfg = config(cfg)
    _check(candidate, "candidate")
    cand = summarize(candidate)
    reasons = []
    for task, value in cand["scores"].items():
        floor = float((cfg.get("floors") or {}).get(task, cfg["floor"]))
        if value < floor:
            reasons.append(f"{task} {value:.3f} is below its floor {floor:.3f}")
    if champion is None:
        if reasons:
            return Verdict(False, reasons, cand)
        return Verdict(True, ["no champion yet; every task at or above its floor"], cand)
    comp = compare(candidate, champion, iters=int(cfg["iters"]), seed=int(cfg["seed"]))
    alpha = float(cfg["alpha"])
    champ = summarize(champion)
    gain = f"mean gain {comp.gain:+.4f} ± {comp.gain_stderr:.4f} over {champion_name}"
    if comp.gain < float(cfg["min_delta"]):
        reasons.append(f"{gain} is below min_delta {float(cfg['min_delta']):g}")
    elif comp.p_gain >= alpha:
        reasons.append(f"{gain} is not significant (paired randomization p = {comp.p_gain:.3f} >= alpha {alpha:g})")
    for task, t in comp.tasks.items():
        if t["p_worse"] < alpha:
            reasons.append(f"{task} is significantly worse than {champion_name}: {t['diff']:+.3f} ({t['lost']} items "
                           f"lost, {t['won']} won; McNemar p = {t['p_worse']:.4f} < alpha {alpha:g})")
    if reasons:
        return Verdict(False, reasons, cand, champ, comp)
    return Verdict(True, [f"{gain} is significant (p = {comp.p_gain:.4f} < {alpha:g}); no task significantly worse; "
                           "every task at or above its floor"], cand, champ, comp)
