"""Skill data for the embedded suite: generated with fixed seeds into train / validation / test JSONL.

Every skill uses ONE prompt format, ``"<tag> <input>="`` followed by the answer and a newline, so all adapters write
into the same output positions with the same character vocabulary (they compete for the same output directions).

Each skill has a *correct rule* (what the skill's adapter is trained on and what every split is scored on) and a
plausible *wrong rule* (a typical bug: no carry, copy instead of reverse, left-to-right evaluation, ...).  The base
model's pre-training mixture holds *weak* versions of every skill: on "easy" items the label follows the correct rule
most of the time, on "hard" items mostly the wrong rule.  So the base learns both rules, half-knows each skill
(correct on easy items, wrong on hard ones), and a skill adapter mostly has to move the base's preference from the
wrong rule to the right one - a small edit, as fine-tuning is on real LLMs.

Held-out guarantee: validation and test prompts never occur in the skill's train split nor in the pre-training
mixture, *except* for ``fact``, the memorisation skill, whose test set IS the fact table (the skill is knowing it).

Usage: ``python -m skills.data [--params params.yaml] [--out build/suite/data]``.
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Item:
    prompt: str  # "<tag> <input>=" (ends with '=')
    answer: str  # correct-rule answer (no newline)
    wrong: str  # wrong-rule answer (may equal `answer`)
    hard: bool

    def text(self, answer: str | None = None) -> str:
        return f"{self.prompt}{self.answer if answer is None else answer}\n"


# --------------------------------------------------------------------------------------------------------------------
# skill generators: f(rng, hard, cfg) -> Item
# --------------------------------------------------------------------------------------------------------------------

def _no_carry_sum(a: int, b: int) -> int:
    sa, sb = str(a), str(b)
    n = max(len(sa), len(sb))
    sa, sb = sa.zfill(n), sb.zfill(n)
    return int("".join(str((int(x) + int(y)) % 10) for x, y in zip(sa, sb)))


def gen_add(rng: random.Random, hard: bool, cfg: dict) -> Item:
    """Two-digit addition; wrong rule: digit-wise sum without carries.

    easy: a one-digit and a two-digit operand; hard: two two-digit operands whose sum needs a carry (so the rules
    always disagree on hard items)."""
    if hard:
        while True:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            if _no_carry_sum(a, b) != a + b:
                break
    else:
        a, b = rng.randint(0, 9), rng.randint(10, 99)
        if rng.random() < 0.5:
            a, b = b, a
    return Item(f"add {a}+{b}=", str(a + b), str(_no_carry_sum(a, b)), hard)


def _letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(n))


def gen_rev(rng: random.Random, hard: bool, cfg: dict) -> Item:
    """Reverse a word; wrong rule: copy it. easy: 3-4 letters, hard: 5-7."""
    w = _letters(rng, rng.randint(5, 7) if hard else rng.randint(3, 4))
    return Item(f"rev {w}=", w[::-1], w, hard)


def gen_sort(rng: random.Random, hard: bool, cfg: dict) -> Item:
    """Sort letters ascending; wrong rule: descending. easy: 3-4 letters, hard: 5-7."""
    w = _letters(rng, rng.randint(5, 7) if hard else rng.randint(3, 4))
    return Item(f"sort {w}=", "".join(sorted(w)), "".join(sorted(w, reverse=True)), hard)


def gen_code(rng: random.Random, hard: bool, cfg: dict) -> Item:
    """Evaluate a Python list subscript ``[4,7,1,9][2]`` -> 1; wrong rule: 1-based indexing (the classic off-by-one).

    easy: lists of 3-4 digits, hard: 5-7 digits; the index is 1..len-1 so both rules are defined."""
    n = rng.randint(5, 7) if hard else rng.randint(3, 4)
    xs = [rng.randint(0, 9) for _ in range(n)]
    k = rng.randint(1, n - 1)
    return Item(f"code [{','.join(map(str, xs))}][{k}]=", str(xs[k]), str(xs[k - 1]), hard)


def _fmt(num: int, den: int) -> str:
    """num/den as an exact decimal with at most one decimal place (den divides 10*num), no trailing '.0'."""
    tenths = 10 * num // den
    q, r = divmod(tenths, 10)
    return f"{q}.{r}" if r else str(q)


def gen_pct(rng: random.Random, hard: bool, cfg: dict) -> Item:
    """Percentages: ``pct 20% of 347=`` -> 69.4 (rates 10/20/50 %, exact one-decimal answers).

    wrong rule: the rate misread (10% <-> 50%, 20% -> 10%). easy: amount 10..199, hard: 200..999."""
    x = rng.randint(200, 999) if hard else rng.randint(10, 199)
    rate = rng.choice((10, 20, 50))
    wrong_rate = {10: 50, 20: 10, 50: 10}[rate]
    return Item(f"pct {rate}% of {x}=", _fmt(x * rate, 100), _fmt(x * wrong_rate, 100), hard)


def fact_table(seed: int, n: int) -> list[tuple[str, str, str]]:
    """The synthetic fact table: (name, value, decoy value); names are unique pronounceable words."""
    rng = random.Random(f"{seed}:fact:table")
    cons, vow = "bcdfghjklmnprstvz", "aeiou"
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        w = "".join(rng.choice(cons) + rng.choice(vow) for _ in range(rng.randint(2, 3)))
        if w not in seen:
            seen.add(w)
            names.append(w)
    rows = []
    for w in names:
        v = _letters(rng, 4)
        d = _letters(rng, 4)
        while d == v:
            d = _letters(rng, 4)
        rows.append((w, v, d))
    return rows


SKILLS: dict[str, Callable[[random.Random, bool, dict], Item]] = {
    "add": gen_add,
    "rev": gen_rev,
    "sort": gen_sort,
    "code": gen_code,
    "pct": gen_pct,
    # "fact" is table-driven, see fact_items()
}
ALL_SKILLS = ("add", "rev", "sort", "code", "pct", "fact")
MEMORISATION_SKILLS = ("fact",)


def fact_items(cfg: dict) -> list[Item]:
    n = int(cfg["fact_table_size"])
    n_easy = int(round(n * (1.0 - float(cfg["hard_frac"]))))
    return [Item(f"fact {w}=", v, d, hard=i >= n_easy)
            for i, (w, v, d) in enumerate(fact_table(int(cfg["seed"]), n))]


# --------------------------------------------------------------------------------------------------------------------
# split generation
# --------------------------------------------------------------------------------------------------------------------

def _draw(skill: str, rng: random.Random, cfg: dict) -> Item:
    return SKILLS[skill](rng, rng.random() < float(cfg["hard_frac"]), cfg)


def _unique(skill: str, rng: random.Random, cfg: dict, n: int, exclude: set[str], tries: int = 200) -> list[Item]:
    out: list[Item] = []
    seen = set(exclude)
    miss = 0
    while len(out) < n:
        it = _draw(skill, rng, cfg)
        if it.prompt in seen:
            miss += 1
            if miss > tries * n:
                raise RuntimeError(f"{skill}: input space too small for {n} unique items")
            continue
        seen.add(it.prompt)
        out.append(it)
    return out


def make_splits(cfg: dict) -> dict[str, dict[str, list[Item]]]:
    """{skill: {split: [Item]}}.  Evaluation splits first, then train excluding their prompts."""
    seed = int(cfg["seed"])
    out: dict[str, dict[str, list[Item]]] = {}
    for skill in cfg["skills"]:
        if skill == "fact":
            table = fact_items(cfg)
            out[skill] = {s: list(table) for s in SPLITS}  # memorisation: the table is the skill
            continue
        test = _unique(skill, random.Random(f"{seed}:{skill}:test"), cfg, int(cfg["n_test"]), set())
        val = _unique(skill, random.Random(f"{seed}:{skill}:validation"), cfg, int(cfg["n_validation"]),
                      {i.prompt for i in test})
        held = {i.prompt for i in test} | {i.prompt for i in val}
        rng = random.Random(f"{seed}:{skill}:train")
        train = []
        while len(train) < int(cfg["n_train"]):  # train items may repeat (small easy spaces) but never held-out
            it = _draw(skill, rng, cfg)
            if it.prompt not in held:
                train.append(it)
        out[skill] = {"train": train, "validation": val, "test": test}
    return out


def pretrain_lines(cfg: dict, splits: dict[str, dict[str, list[Item]]]) -> list[str]:
    """The base's pre-training mixture: weak versions of every skill plus copy lines.

    A weak skill line follows the correct rule with probability `p_correct_easy` / `p_correct_hard` and the wrong rule
    otherwise.  Held-out prompts of the non-memorisation skills are excluded."""
    seed = int(cfg["seed"])
    rng = random.Random(f"{seed}:pretrain")
    skills = list(cfg["skills"])
    held = {s: {i.prompt for sp in ("validation", "test") for i in splits[s][sp]} for s in skills
            if s not in MEMORISATION_SKILLS}
    facts = fact_items(cfg) if "fact" in skills else []
    p_easy, p_hard = float(cfg["p_correct_easy"]), float(cfg["p_correct_hard"])
    copy_frac = float(cfg["copy_frac"])
    lines = []
    for _ in range(int(cfg["n_pretrain"])):
        if rng.random() < copy_frac:
            w = _letters(rng, rng.randint(3, 8))
            lines.append(f"copy {w}={w}\n")
            continue
        skill = rng.choice(skills)
        if skill == "fact":
            it = rng.choice(facts)
        else:
            it = _draw(skill, rng, cfg)
            while it.prompt in held[skill]:
                it = _draw(skill, rng, cfg)
        good = rng.random() < (p_hard if it.hard else p_easy)
        lines.append(it.text(None if good else it.wrong))
    return lines


def _check_vocab(texts: list[str]) -> None:
    from skills.tokenizer import VOCAB

    known = set(VOCAB)
    bad = sorted({c for t in texts for c in t} - known)
    if bad:
        raise ValueError(f"characters outside the tokenizer's vocabulary: {bad!r}")


def to_record(skill: str, it: Item) -> dict:
    return {"skill": skill, "prompt": it.prompt, "answer": it.answer, "wrong": it.wrong, "hard": it.hard}


def write_suite_data(cfg: dict, out: str | Path) -> dict:
    """Write <out>/<skill>/{train,validation,test}.jsonl, <out>/pretrain.txt and <out>/stats.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = make_splits(cfg)
    stats: dict = {"skills": {}}
    for skill, sp in splits.items():
        (out / skill).mkdir(exist_ok=True)
        stats["skills"][skill] = {}
        for name, items in sp.items():
            with open(out / skill / f"{name}.jsonl", "w") as f:
                for it in items:
                    f.write(json.dumps(to_record(skill, it)) + "\n")
            n = len(items)
            stats["skills"][skill][name] = {
                "n": n,
                "hard_frac": round(sum(i.hard for i in items) / max(n, 1), 4),
                "rules_agree_frac": round(sum(i.answer == i.wrong for i in items) / max(n, 1), 4),
            }
    lines = pretrain_lines(cfg, splits)
    _check_vocab(lines + [it.text() for sp in splits.values() for items in sp.values() for it in items])
    with open(out / "pretrain.txt", "w") as f:
        f.writelines(lines)
    stats["pretrain_lines"] = len(lines)
    stats["memorisation_skills"] = [s for s in MEMORISATION_SKILLS if s in splits]
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_pretrain(path: str | Path) -> list[str]:
    with open(path) as f:
        return [line for line in f if line.strip()]


def main(argv: list[str] | None = None) -> None:
    from skills.config import load_suite_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    p = load_suite_params(a.params)
    stats = write_suite_data(p["data"], a.out or p["paths"]["data"])
    for skill, sp in stats["skills"].items():
        print(skill, " ".join(f"{k}={v['n']}" for k, v in sp.items()),
              f"test hard={sp['test']['hard_frac']} rules-agree={sp['test']['rules_agree_frac']}")
    print("pretrain lines", stats["pretrain_lines"])


if __name__ == "__main__":
    main()
