"""The statistical promotion gate (pipeline/gate.py) on constructed per-sample outcomes: McNemar per binary task,
the sign-flip test for continuous per-item scores, Holm's correction of the per-task veto, the test of gain <=
min_delta, the gain's bootstrap interval, and the floors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pipeline import gate
from pipeline.settings import GateSettings


def outcomes(n_items: dict[str, int], right: dict[str, set[int]]) -> dict[str, dict[str, int]]:
    """{task: {item id: 1 if the item is in right[task] else 0}}."""
    return {t: {f"{t}-{i}": int(i in right[t]) for i in range(n)} for t, n in n_items.items()}


N = {"a": 200, "b": 200, "c": 80}


def flip(base: dict, task: str, ids, to: int) -> dict:
    out = {t: dict(v) for t, v in base.items()}
    for i in ids:
        out[task][f"{task}-{i}"] = to
    return out


# the champion: right on the first 60% of each task's items
CHAMP = outcomes(N, {t: set(range(int(n * 0.6))) for t, n in N.items()})


def test_gain_smaller_than_its_noise_is_refused():
    # 3 more items right on task a, 2 fewer on b: the raw mean is higher, but 5 discordant items prove nothing
    cand = flip(flip(CHAMP, "a", range(120, 123), 1), "b", range(0, 2), 0)
    assert gate.summarize(cand)["mean"] > gate.summarize(CHAMP)["mean"]
    d = gate.judge(cand, CHAMP, GateSettings(alpha=0.05))
    assert not d.promote
    assert any("not significant" in r for r in d.reasons), d.reasons
    assert d.comparison.p_gain >= 0.05
    # the old rule (mean >= champion's) would have promoted it: the gate is what refuses
    assert d.comparison.gain > 0


def test_clear_gain_is_promoted():
    cand = CHAMP
    for t, n in N.items():  # 15% more items right on every task, none lost
        cand = flip(cand, t, range(int(n * 0.6), int(n * 0.75)), 1)
    d = gate.judge(cand, CHAMP, GateSettings(alpha=0.05))
    assert d.promote, d.reasons
    assert d.comparison.p_gain < 0.001
    assert d.comparison.gain == pytest.approx(0.15, abs=0.01)
    assert "significant" in d.reasons[0]


def test_significant_drop_on_one_skill_is_refused_with_the_reason():
    cand = CHAMP
    for t, n in N.items():
        cand = flip(cand, t, range(int(n * 0.6), int(n * 0.8)), 1)  # +20% everywhere ...
    cand = flip(flip(cand, "c", range(48, 64), 0), "c", range(0, 20), 0)  # ... but task c: 20 of 80 lost, none won
    d = gate.judge(cand, CHAMP, GateSettings(alpha=0.05))
    assert d.comparison.p_gain < 0.05  # the mean gain alone is significant
    assert not d.promote
    assert len(d.reasons) == 1 and d.reasons[0].startswith("c is significantly worse"), d.reasons
    assert "McNemar" in d.reasons[0] and "Holm-adjusted over 3 tasks" in d.reasons[0]


def test_first_night_promotes_on_the_floors_alone():
    d = gate.judge(CHAMP, None, GateSettings(floor=0.5))
    assert d.promote and d.reasons == ["no champion yet; every task at or above its floor"]
    d = gate.judge(CHAMP, None, GateSettings(floor=0.5, floors={"c": 0.7}))
    assert not d.promote and d.reasons == ["c 0.600 is below its floor 0.700"]


def test_floor_blocks_even_a_significant_gain():
    cand = CHAMP
    for t, n in N.items():
        cand = flip(cand, t, range(int(n * 0.6), int(n * 0.9)), 1)
    d = gate.judge(cand, CHAMP, GateSettings(floors={"a": 0.95}))
    assert not d.promote and d.reasons == ["a 0.900 is below its floor 0.950"]


def test_mcnemar_exact_values():
    # 3 lost, 0 won: P(X <= 0 | n=3) = 1/8; 10 lost, 1 won: P(X <= 1 | n=11) = 12/2048
    cand = flip(CHAMP, "a", range(0, 3), 0)
    assert gate.compare(cand, CHAMP).tasks["a"]["p_worse"] == pytest.approx(0.125)
    cand = flip(flip(CHAMP, "a", range(0, 10), 0), "a", [150], 1)
    assert gate.compare(cand, CHAMP).tasks["a"]["p_worse"] == pytest.approx(12 / 2048)


def test_deterministic_and_stderr():
    cand = flip(CHAMP, "a", range(120, 140), 1)
    one, two = gate.compare(cand, CHAMP, seed=3), gate.compare(cand, CHAMP, seed=3)
    assert one.p_gain == two.p_gain
    s = gate.summarize(CHAMP)
    assert s["stderr"]["a"] == pytest.approx((0.6 * 0.4 / 199) ** 0.5)
    assert s["mean_stderr"] == pytest.approx(sum(v ** 2 for v in s["stderr"].values()) ** 0.5 / 3)


def test_different_items_are_an_error_not_a_decision():
    other = {t: {f"x{k}": v for k, v in items.items()} for t, items in CHAMP.items()}
    with pytest.raises(gate.GateError, match="not the same items"):
        gate.judge(CHAMP, other)
    for bad in (float("nan"), float("inf"), "1", None):
        with pytest.raises(gate.GateError, match="needs a finite number per item"):
            gate.judge({"a": {"1": bad}}, None)
    with pytest.raises(ValueError, match="alpha"):  # the typed settings refuse it, before any judgement
        GateSettings(alpha=2)


def gained(points: float) -> dict:
    """The champion with ``points`` more items right on every task, none lost."""
    cand = CHAMP
    for t, n in N.items():
        cand = flip(cand, t, range(int(n * 0.6), int(n * (0.6 + points))), 1)
    return cand


def test_min_delta_is_the_null_hypothesis_not_a_point_comparison():
    # +10 points on every task (stderr of the mean gain ~0.015): the point estimate clears min_delta 0.09, but the
    # data cannot tell a gain of 0.10 from one of 0.09; a gain of 0.10 is clearly above 0.04
    cand = gained(0.10)
    p = {md: gate.compare(cand, CHAMP, min_delta=md).p_gain for md in (0.0, 0.04, 0.06, 0.08, 0.09)}
    assert list(p.values()) == sorted(p.values()) and p[0.09] > 0.2 and p[0.04] < 0.001, p
    refused = gate.judge(cand, CHAMP, GateSettings(min_delta=0.09))
    assert refused.comparison.gain == pytest.approx(0.10) and refused.comparison.gain > 0.09
    assert not refused.promote and len(refused.reasons) == 1
    assert "is not significantly above min_delta 0.09" in refused.reasons[0], refused.reasons
    assert refused.comparison.min_delta == 0.09 and refused.comparison.ci_low < 0.09  # the interval agrees
    passed = gate.judge(cand, CHAMP, GateSettings(min_delta=0.04))
    assert passed.promote and "significantly above min_delta 0.04" in passed.reasons[0], passed.reasons
    # the shifted randomization test against the normal approximation of H0: gain <= 0.08 (z = 0.02 / stderr)
    c = gate.compare(cand, CHAMP, min_delta=0.08)
    z = (c.gain - 0.08) / c.gain_stderr
    assert c.p_gain == pytest.approx(0.5 * math.erfc(z / 2 ** 0.5), abs=0.02)


def test_the_gain_interval_is_in_the_verdict_and_the_rendered_decision():
    from test_notify import night

    from pipeline import render
    from pipeline.records import Decision

    cand = gained(0.10)
    v = gate.judge(cand, CHAMP, GateSettings(alpha=0.05))
    c = v.comparison
    assert c.ci_level == pytest.approx(0.90) and c.ci_low < c.gain < c.ci_high
    # a paired bootstrap of a mean is close to mean +- z_0.95 stderr here (hundreds of items per task)
    assert c.ci_low == pytest.approx(c.gain - 1.645 * c.gain_stderr, abs=0.005)
    assert c.ci_high == pytest.approx(c.gain + 1.645 * c.gain_stderr, abs=0.005)
    assert gate.compare(cand, CHAMP, seed=0).ci_low == c.ci_low  # deterministic with the seed
    assert gate.compare(cand, CHAMP, seed=1).ci_low != c.ci_low
    ci = f"90% CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
    assert ci in v.reasons[0]
    assert f"{c.ci_low:.4f}" != f"{gate.compare(cand, CHAMP, alpha=0.01).ci_low:.4f}"  # a 98% interval is wider
    d = Decision(promoted=True, alias="champion", version="3", unchanged=False, reasons=v.reasons)
    md = render.decision_markdown(night(decision=d, gate=v))
    assert md.count(ci) == 2  # in the gate's reason and under the per-task table
    assert "H0: gain <= min_delta 0" in md and "| a | +0.100 ± " in md and "| mcnemar |" in md


def test_holm_adjusted_p_values():
    # sorted 0.01, 0.03, 0.04 over 3 tasks: 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)
    assert gate.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert gate.holm({"a": 0.5, "b": 0.9}) == {"a": 1.0, "b": 1.0}


def test_holm_keeps_a_modest_drop_among_six_tasks_from_vetoing():
    six = {t: 200 for t in "abcdef"}
    champ = outcomes(six, {t: set(range(120)) for t in six})
    cand = champ
    for t in six:
        cand = flip(cand, t, range(120, 160), 1)  # +20 points everywhere ...
    cand = flip(cand, "f", range(0, 6), 0)  # ... but task f: 6 lost, 0 won (McNemar p = 1/64 = 0.016)
    cand = flip(cand, "f", range(120, 160), 0)
    d = gate.judge(cand, champ, GateSettings(alpha=0.05))
    t = d.comparison.tasks["f"]
    assert t["p_worse"] == pytest.approx(1 / 64) and t["p_worse"] < 0.05  # the uncorrected veto would fire
    assert t["p_worse_holm"] == pytest.approx(6 / 64)  # the smallest of six: times 6
    assert d.promote, d.reasons
    # a clear drop still vetoes after the correction
    worse = flip(cand, "f", range(6, 20), 0)
    d = gate.judge(worse, champ, GateSettings(alpha=0.05))
    assert not d.promote and d.reasons[0].startswith("f is significantly worse") and "Holm-adjusted" in d.reasons[0]


def test_false_veto_rate_without_a_real_difference():
    """Two equally good models (each item right with probability 0.7, independently) on 6 tasks of 100 items, 300
    times: the uncorrected veto fires on some task in a large share of the nights, Holm's in at most ~alpha."""
    rng = np.random.default_rng(11)
    raw = holm = 0
    nights = 300
    for _ in range(nights):
        a = {t: {str(i): float(x) for i, x in enumerate(rng.random(100) < 0.7)} for t in "abcdef"}
        b = {t: {str(i): float(x) for i, x in enumerate(rng.random(100) < 0.7)} for t in "abcdef"}
        tasks = gate.compare(a, b, iters=100).tasks
        raw += any(x["p_worse"] < 0.05 for x in tasks.values())
        holm += any(x["p_worse_holm"] < 0.05 for x in tasks.values())
    assert raw / nights > 0.12  # 1 - (1 - alpha)^6 = 0.26 for a continuous test; McNemar is discrete, below it
    assert holm / nights <= 0.05 + 2 * (0.05 * 0.95 / nights) ** 0.5
    assert raw >= 3 * holm


def test_continuous_metrics_use_the_sign_flip_test():
    rng = np.random.default_rng(5)
    f1 = {t: {f"{t}-{i}": float(x) for i, x in enumerate(rng.random(n))} for t, n in N.items()}  # per-item F1
    better = {t: {k: min(1.0, v + 0.08) for k, v in items.items()} for t, items in f1.items()}
    d = gate.judge(better, f1, GateSettings())
    assert d.promote, d.reasons
    assert {x["test"] for x in d.comparison.tasks.values()} == {"sign-flip"}
    assert d.comparison.p_gain < 0.001 and 0.05 < d.comparison.gain < 0.08
    # one task clearly worse: vetoed, named with its test
    worse_c = {**better, "c": {k: max(0.0, v - 0.2) for k, v in f1["c"].items()}}
    d = gate.judge(worse_c, f1, GateSettings())
    assert not d.promote and any(r.startswith("c is significantly worse") and "sign-flip p" in r for r in d.reasons)
    # a binary task beside continuous ones keeps McNemar
    mixed = gate.compare({**better, "b": CHAMP["b"]}, {**f1, "b": CHAMP["b"]})
    assert mixed.tasks["b"]["test"] == "mcnemar" and mixed.tasks["a"]["test"] == "sign-flip"


def test_sign_flip_matches_the_exact_distribution():
    values = np.array([0.3, -0.1, 0.2, 0.5, 0.4, -0.25, 0.05])
    sums = [float(np.dot(s, values)) for s in itertools.product((-1, 1), repeat=values.size)]
    exact_ge = sum(x >= values.sum() - 1e-12 for x in sums) / len(sums)
    exact_le = sum(x <= values.sum() + 1e-12 for x in sums) / len(sums)
    ge, le = gate.sign_flip(values, 40000, np.random.default_rng(0))
    assert ge == pytest.approx(exact_ge, abs=0.005) and le == pytest.approx(exact_le, abs=0.005)
    # binary differences: the sign-flip test is McNemar's binomial (7 won, 1 lost: P(X <= 1 | n = 8) = 9/256)
    ge, _ = gate.sign_flip(np.array([1.0] * 7 + [-1.0] + [0.0] * 50), 40000, np.random.default_rng(0))
    assert ge == pytest.approx(9 / 256, abs=0.004)


def write_project(root, pipeline: dict, top: dict | None = None):
    """A params.yaml and a one-adapter catalog: enough for load_settings (nothing is fetched)."""
    import yaml

    root.mkdir(exist_ok=True)
    (root / "adapters.yaml").write_text(yaml.safe_dump({"adapters": ["./a"]}))
    (root / "params.yaml").write_text(yaml.safe_dump({**(top or {}), "pipeline": pipeline}))
    return root


def test_task_lists_and_floor_keys_are_refused_at_load(tmp_path):
    from pipeline.settings import ConfigError, load_settings

    lm = {"suite": "lm-eval", "tasks": ["qa_test", "qa_extra"]}
    with pytest.raises(ConfigError, match=r"params.yaml: pipeline: search.tasks: qa_extra also in eval.tasks: the "
                                          r"recipe would be chosen on the test items"):
        load_settings(write_project(tmp_path / "p1", {"eval": lm, "search": {"tasks": ["qa_val", "qa_extra"]}}))
    with pytest.raises(ConfigError, match=r"pipeline.eval: metric: 'name' or 'name,filter'.*got 'a,b,c'"):
        load_settings(write_project(tmp_path / "p2", {"eval": {**lm, "metric": "a,b,c"}}))
    # the skills named in eval.skills are the benchmark's tasks: a floor on another name is a typo
    skills = {"suite": "skills", "skills": ["add", "rev"]}
    with pytest.raises(ConfigError, match=r"params.yaml: pipeline: gate.floors: 'ad' is not a task of eval.skills "
                                          r"\(its tasks: add, rev\)"):
        load_settings(write_project(tmp_path / "p3", {"eval": skills, "gate": {"floors": {"ad": 0.5, "rev": 0.2}}}))
    ok = load_settings(write_project(tmp_path / "p4", {"eval": skills, "gate": {"floors": {"rev": 0.2}}}))
    assert ok.pipeline.gate.floor_of("rev") == 0.2


def test_floor_keys_are_checked_against_the_scorer_task_names(tmp_path):
    """All skills (eval.skills null): the names are the suite's (params.yaml suite.data.skills), which the scorer
    reports through tasks(context); check_benchmark (the night's first step) refuses a floor on any other name."""
    from pipeline import evaluation
    from pipeline.settings import ConfigError, load_settings

    top = {"suite": {"data": {"skills": ["add", "rev", "sort"]}}}
    bad = load_settings(write_project(tmp_path / "p1", {"gate": {"floors": {"sortt": 0.3}}}, top))
    with pytest.raises(ConfigError, match=r"params.yaml: pipeline.gate.floors: 'sortt' is not a task of the "
                                          r"benchmark \(its tasks: add, rev, sort\)"):
        evaluation.check_benchmark(bad)
    good = load_settings(write_project(tmp_path / "p2", {"gate": {"floors": {"sort": 0.3}}}, top))
    assert evaluation.check_benchmark(good) == ["add", "rev", "sort"]
    some = load_settings(write_project(tmp_path / "p3", {"eval": {"skills": ["rev", "add"]}}, top))
    assert evaluation.task_names(some) == ["add", "rev"]
    # no suite.data.skills in params.yaml: the built data folder names them; nothing built yet: not known, unchecked
    data = tmp_path / "data"
    for skill in ("add", "pct"):
        (data / skill).mkdir(parents=True)
        (data / skill / "test.jsonl").write_text("")
    built = load_settings(write_project(tmp_path / "p5", {"gate": {"floors": {"pct": 0.3}}},
                                        {"suite": {"paths": {"data": str(data)}}}))
    assert evaluation.check_benchmark(built) == ["add", "pct"]
    unbuilt = load_settings(write_project(tmp_path / "p6", {"gate": {"floors": {"pct": 0.3}}},
                                          {"suite": {"paths": {"data": str(tmp_path / "none")}}}))
    assert evaluation.check_benchmark(unbuilt) is None


def _power(n: int, q: float, gain: float, nights: int, rng) -> float:
    """Share of simulated nights where the gate's one-sided test finds a true mean gain: 6 tasks of n paired items,
    each item won with probability (q + gain) / 2, lost with (q - gain) / 2 (q: the discordant share)."""
    found = 0
    for _ in range(nights):
        champ, cand = {}, {}
        for t in "abcdef":
            u = rng.random(n)
            won, lost = u < (q + gain) / 2, (u >= (q + gain) / 2) & (u < q)
            base = rng.random(n) < 0.5  # the concordant items: both right or both wrong
            champ[t] = {str(i): float(x) for i, x in enumerate(np.where(won, 0, np.where(lost, 1, base)))}
            cand[t] = {str(i): float(x) for i, x in enumerate(np.where(won, 1, np.where(lost, 0, base)))}
        found += gate.compare(cand, champ, iters=400).p_gain < 0.05
    return found / nights


def test_power_of_the_test_split_matches_the_documented_table():
    """docs/pipeline.md's power table: the smallest gain found with 80% power is 2.49 sqrt(q / N). The gate itself,
    on simulated nights: at 100 items per skill (the SmolLM2 suite's test split) a 3.9-point gain with q = 0.15 is
    found in ~80% of nights; at the former 40 items per skill the same gain in well under half."""
    rng = np.random.default_rng(7)
    mde = 2.49 * (0.15 / 600) ** 0.5
    assert round(100 * mde, 1) == 3.9
    at_100 = _power(100, 0.15, mde, 150, rng)
    at_40 = _power(40, 0.15, mde, 150, rng)
    assert 0.68 <= at_100 <= 0.92, at_100
    assert at_40 <= 0.5, at_40
