"""The statistical promotion gate (pipeline/gate.py) on constructed per-sample outcomes."""

from __future__ import annotations

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
    assert "McNemar" in d.reasons[0]


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
    with pytest.raises(gate.GateError, match="needs 0/1"):
        gate.judge({"a": {"1": 0.5}}, None)
    with pytest.raises(ValueError, match="alpha"):  # the typed settings refuse it, before any judgement
        GateSettings(alpha=2)
