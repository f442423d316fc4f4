"""The promotion policy, pure (no MLflow): whether a new version may replace the champion, and why.

:mod:`pipeline.promotion` reads the registry, calls :func:`decide` and moves the alias. With per-sample outcomes (every
suite scored through lm-eval's ``log_samples``, or a scorer returning them) the decision is the paired statistical
test below (:func:`judge`); a scorer with plain scores falls back to comparing means (:func:`gate`).

Pure Python (no Prefect, MLflow or lm-eval): the inputs are per-sample outcomes, ``{task: {item_id: value}}`` for the
candidate and for the champion, scored on the same benchmark. A value is 0/1 (accuracy, exact match) or any finite
number (a per-item F1, a similarity): a task is *binary* when every value of both models is 0 or 1.

The tests, and why:

* **Per task, is the candidate worse?** Binary task: **McNemar's exact test**. The only items that say anything are
  the discordant ones (one model right, the other wrong); under "no difference" each goes either way with probability
  1/2, so the count is a fair binomial: exact for any number of them, where a paired bootstrap is anti-conservative
  for few (3 items lost out of 200 and none won: the bootstrap gives p ~ 0.05, the exact test p = 0.125). Continuous
  task: the **paired sign-flip permutation test** on the per-item differences (under "no difference" each difference
  is as likely to have either sign; McNemar is its binary case), ``iters`` Monte Carlo draws. The veto "no task
  significantly worse" is **Holm-corrected** over the tasks: with S tasks and no real difference an uncorrected veto
  fires with probability up to 1 - (1 - alpha)^S (26% at 6 tasks), Holm's keeps it at most alpha.
* **Is the mean gain above min_delta?** The gated aggregate is the mean over tasks of the per-task mean (tasks weigh
  the same, whatever their item counts), a weighted sum of the per-item differences d (weight 1/(S n_task)). The null
  hypothesis is gain <= ``min_delta``: the differences are shifted by min_delta and the sign-flip randomization test
  asks how often random signs give a sum at least the observed one (``iters`` draws, fixed ``seed``: the same inputs
  always give the same p-value and decision). With min_delta 0 and binary tasks this is the stratified McNemar test.
* **How large is the gain?** A paired, task-stratified bootstrap (items resampled within each task, ``iters`` draws,
  the seed fixed) gives its (1 - 2 alpha) percentile interval; its lower end is the one-sided (1 - alpha) bound that
  matches the one-sided test. Shown in every decision; the test decides.

A candidate is promoted when every task is at or above its floor, and, when there is a champion, the mean gain is
significantly above ``min_delta`` (one-sided p < ``alpha``) and no task is significantly worse (Holm-adjusted p <
``alpha``). The first night, with no champion, promotes on the floors alone.
"""

from __future__ import annotations

import math
import numbers

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
    """(mean, standard error of the mean) of per-item values: sample std / sqrt(n), as lm-eval reports for a mean."""
    n = len(values)
    if n == 0:
        raise GateError("no items")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def summarize(outcomes: dict[str, dict]) -> dict:
    """Per-task score (the mean of its per-item values) and stderr, the mean over tasks and its stderr (tasks
    independent)."""
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
        for k, v in items.items():
            if not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise GateError(f"{who}: task {task!r} item {k!r} has outcome {v!r}; the gate needs a finite number "
                                "per item (0/1, or a per-item score)")


_CHUNK = 1 << 22  # Monte Carlo draws are made this many numbers at a time (memory stays ~32 MiB for any size)


def _signed_sums(mags: np.ndarray, counts: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` draws of sum(s_i |v_i|) with fair random signs s_i, the |v_i| given as distinct magnitudes and counts:
    a magnitude shared by c values adds (2K - c) times itself, K ~ Binomial(c, 1/2) (binary differences have at most
    three magnitudes per task, so millions of items cost what a few do); a magnitude held by one value gets a random
    bit (continuous differences: mostly these)."""
    out = np.zeros(m)
    many = counts > 1
    if many.any():
        c = counts[many]
        out += (2 * rng.binomial(c, 0.5, size=(m, c.size)) - c) @ mags[many]
    one = mags[~many]
    if one.size:
        bits = np.unpackbits(rng.integers(0, 256, size=(m, (one.size + 7) // 8), dtype=np.uint8), axis=1,
                             count=one.size)
        out += 2 * (bits @ one) - one.sum()
    return out


def sign_flip(values, iters: int, rng: np.random.Generator) -> tuple[float, float]:
    """The paired sign-flip randomization test of sum(values): (P(T >= observed), P(T <= observed)) where T is the sum
    with each value's sign a fair coin, from ``iters`` Monte Carlo draws, each with the +1 correction (never 0)."""
    v = np.asarray(values, dtype=float)
    observed = float(v.sum())
    mags, counts = np.unique(np.abs(v[v != 0]), return_counts=True)
    eps = 1e-9 * max(1.0, float(mags @ counts))  # the observed sum and the drawn ones add in different orders
    ge = le = done = 0
    step = max(1, _CHUNK // max(1, mags.size))
    while done < iters:
        m = min(step, iters - done)
        null = _signed_sums(mags, counts, m, rng)
        ge += int(np.count_nonzero(null >= observed - eps))
        le += int(np.count_nonzero(null <= observed + eps))
        done += m
    return (1 + ge) / (1 + iters), (1 + le) / (1 + iters)


def bootstrap_interval(diffs: list[np.ndarray], level: float, iters: int,
                       rng: np.random.Generator) -> tuple[float, float]:
    """The percentile interval at ``level`` of the mean over tasks of each task's mean difference, items resampled
    with replacement within each task (a paired, task-stratified bootstrap). A task with few distinct differences
    (binary: at most three) is resampled as multinomial counts of them, one with many as item indices."""
    total = np.zeros(iters)
    for d in diffs:
        vals, counts = np.unique(d, return_counts=True)
        n = d.size
        step = max(1, _CHUNK // (vals.size if vals.size <= 16 else n))
        for lo in range(0, iters, step):
            m = min(step, iters - lo)
            if vals.size <= 16:
                total[lo:lo + m] += rng.multinomial(n, counts / n, size=m) @ vals / n
            else:
                total[lo:lo + m] += d[rng.integers(0, n, size=(m, n))].mean(axis=1)
    total /= len(diffs)
    tail = (1 - level) / 2
    q: np.ndarray = np.quantile(total, [tail, 1 - tail])
    return float(q[0]), float(q[1])


def holm(p: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values: a task is rejected at alpha when its adjusted p < alpha, which keeps the
    chance of any false rejection among the tasks at most alpha (no assumption on their dependence)."""
    out, run = {}, 0.0
    for i, task in enumerate(sorted(p, key=lambda t: (p[t], t))):
        run = max(run, min(1.0, (len(p) - i) * p[task]))
        out[task] = run
    return out


def _binary(*tasks: dict) -> bool:
    return all(float(v) in (0.0, 1.0) for items in tasks for v in items.values())


def compare(candidate: dict[str, dict], champion: dict[str, dict], *, iters: int = GateSettings().iters,
            seed: int = GateSettings().seed, min_delta: float = GateSettings().min_delta,
            alpha: float = GateSettings().alpha) -> Comparison:
    """The paired comparison of two models' per-sample outcomes on the same tasks and items: per task the test of
    "worse" (McNemar exact on binary tasks, sign-flip otherwise) with its Holm adjustment, the test of gain <=
    ``min_delta`` on the mean, and the gain's (1 - 2 alpha) bootstrap interval."""
    _check(candidate, "candidate")
    _check(champion, "champion")
    if set(candidate) != set(champion):
        raise GateError(f"not the same tasks: candidate {sorted(candidate)}, champion {sorted(champion)}")
    tasks: dict[str, dict] = {}
    diffs, shifted = [], []
    gain, var = 0.0, 0.0
    S = len(candidate)
    for i, task in enumerate(sorted(candidate)):
        a, b = candidate[task], champion[task]
        if set(a) != set(b):
            only = sorted(set(a) ^ set(b), key=str)[:3]
            raise GateError(f"task {task!r}: not the same items (candidate {len(a)}, champion {len(b)}; e.g. "
                            f"{only}); re-score the champion on this benchmark")
        d = np.array([float(a[k]) - float(b[k]) for k in sorted(a, key=str)])
        n = len(d)
        won, lost = int(np.count_nonzero(d > 0)), int(np.count_nonzero(d < 0))
        diff, se = accuracy_stderr(d.tolist()) if n > 1 else (float(d[0]), float("nan"))
        if _binary(a, b):  # McNemar exact, one-sided each way: a fair coin on the won + lost discordant items
            test, p_worse, p_better = "mcnemar", _binom_cdf(won, won + lost), _binom_cdf(lost, won + lost)
        else:
            test = "sign-flip"
            p_better, p_worse = sign_flip(d, iters, np.random.default_rng([seed, 2, i]))
        tasks[task] = {"diff": diff, "stderr": se, "won": won, "lost": lost, "n": n, "test": test,
                       "p_worse": p_worse, "p_better": p_better}
        gain += diff / S
        var += (se if se == se else 0.0) ** 2 / S ** 2
        diffs.append(d)
        shifted.append((d - min_delta) / (S * n))  # sums to gain - min_delta: H0 is gain <= min_delta
    for task, p in holm({t: float(x["p_worse"]) for t, x in tasks.items()}).items():
        tasks[task]["p_worse_holm"] = p
    p_gain, _ = sign_flip(np.concatenate(shifted), int(iters), np.random.default_rng([seed, 0]))
    level = 1 - 2 * alpha
    low, high = bootstrap_interval(diffs, level, int(iters), np.random.default_rng([seed, 1]))
    return Comparison(gain=gain, gain_stderr=math.sqrt(var), p_gain=p_gain, min_delta=min_delta, ci_low=low,
                      ci_high=high, ci_level=level, tasks=tasks)


def gain_text(comp: Comparison, champion_name: str = "the champion") -> str:
    """"mean gain +0.0123 ± 0.0045 (90% CI [+0.0050, +0.0200]) over the champion v3"."""
    ci = (f" ({comp.ci_level:.0%} CI [{comp.ci_low:+.4f}, {comp.ci_high:+.4f}])" if comp.ci_low is not None
          else "")
    return f"mean gain {comp.gain:+.4f} ± {comp.gain_stderr:.4f}{ci} over {champion_name}"


def judge(candidate: dict[str, dict], champion: dict[str, dict] | None, cfg: GateSettings = GateSettings(), *,
          champion_name: str = "the champion") -> Verdict:
    """Promote or not, with the reasons (each failed condition, or why it passed)."""
    _check(candidate, "candidate")
    cand = Scores(**summarize(candidate))
    reasons = below_floors(cand.scores, cfg)
    if champion is None:
        return Verdict(promote=not reasons, reasons=reasons or [NO_CHAMPION], candidate=cand)
    comp = compare(candidate, champion, iters=cfg.iters, seed=cfg.seed, min_delta=cfg.min_delta, alpha=cfg.alpha)
    alpha = cfg.alpha
    champ = Scores(**summarize(champion))
    gain = gain_text(comp, champion_name)
    above = "significant" if not cfg.min_delta else f"significantly above min_delta {cfg.min_delta:g}"
    if comp.p_gain >= alpha:
        reasons.append(f"{gain} is not {above} (paired randomization p = {comp.p_gain:.3f} >= alpha {alpha:g})")
    S = len(comp.tasks)
    for task, t in comp.tasks.items():
        if t["p_worse_holm"] < alpha:
            name, lost, won = (("McNemar", "items lost", "won") if t["test"] == "mcnemar" else
                               ("sign-flip", "items worse", "better"))
            reasons.append(f"{task} is significantly worse than {champion_name}: {t['diff']:+.3f} ({t['lost']} "
                           f"{lost}, {t['won']} {won}; {name} p = {t['p_worse']:.4g}, Holm-adjusted over {S} "
                           f"tasks {t['p_worse_holm']:.4g} < alpha {alpha:g})")
    promote = not reasons
    if promote:
        reasons = [f"{gain} is {above} (p = {comp.p_gain:.4f} < {alpha:g}); no task significantly worse (Holm over "
                   f"{S} tasks); every task at or above its floor"]
    return Verdict(promote=promote, reasons=reasons, candidate=cand, champion=champ, comparison=comp)
