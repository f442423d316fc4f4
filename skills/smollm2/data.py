"""Natural-language skills for the SmolLM2 suite, generated with fixed seeds into train / validation / test JSONL.

Each record is ``{skill, prompt, answer}``: ``prompt`` is the user message (the chat template is applied by the
trainer and by lm-eval), ``answer`` the reference answer in its bare form (a number, a word, a JSON object).
The instruct model answers in sentences, so answers are extracted before scoring (``skills.smollm2.extract``).

Skills (mirroring the Pico paper's domains plus a format and a string skill):
  math     arithmetic word problems (two-step: buy / give away)                  -> an integer
  code     the value printed by a three-line Python snippet                      -> an integer
  finance  percentages and simple interest                                       -> a number
  dosage   SYNTHETIC medicine: dose by body weight, lab-unit conversions (made-up numbers, not medical advice)
  json     extract name / age / city from a sentence as JSON (compared as parsed JSON)
  reverse  spell a word backwards                                                -> a word

Held out: validation and test prompts never occur in the train split (rejection on the prompt text). Generation is
deterministic: one ``random.Random(f"{seed}:{skill}:{split}")`` per split.

Usage: ``python -m skills.smollm2.data [--params params.yaml] [--out DIR]``.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from skills.smollm2.extract import canon_number, reference

SPLITS = ("train", "validation", "test")
NAMES = ["Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Liam",
         "Maya", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wen", "Yusuf", "Zoe"]
CITIES = ["Paris", "Lisbon", "Oslo", "Cairo", "Lima", "Tokyo", "Dublin", "Quito", "Seoul", "Vienna", "Nairobi",
          "Prague", "Madrid", "Berlin", "Sydney", "Toronto", "Mumbai", "Rome", "Athens", "Denver"]
THINGS = ["apples", "books", "stamps", "marbles", "pencils", "cards", "shells", "coins", "stickers", "buttons"]
WORDS = ["apple", "river", "stone", "cloud", "plant", "light", "table", "chair", "bread", "green", "music", "house",
         "water", "night", "money", "paper", "smile", "horse", "train", "glass", "dream", "ocean", "tiger", "lemon",
         "candy", "piano", "robot", "sugar", "storm", "honey", "grape", "mouse", "pilot", "queen", "radio", "snake",
         "tower", "watch", "zebra", "angel", "beach", "chess", "dance", "eagle", "flame", "ghost", "heart", "juice",
         "knife", "laser", "metal", "novel", "onion", "pearl", "quilt", "salad", "tulip", "uncle", "vapor", "wheat",
         "cat", "dog", "sun", "map", "cup", "pen", "box", "hat", "bus", "fox", "owl", "bee", "key", "net", "jar",
         "moon", "star", "fish", "bird", "tree", "rain", "snow", "wind", "fire", "milk", "rice", "salt", "gold",
         "ring", "ship", "door", "lamp", "book", "shoe", "sock", "coat", "bell", "drum", "kite", "rose", "leaf"]


def gen_math(rng: random.Random) -> tuple[str, str]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(12, 89), rng.randint(2, 9)
    if rng.random() < 0.5:
        return f"{name} has {a} {thing} and buys {b} more. How many {thing} does {name} have now?", str(a + b)
    return f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?", str(a - b)


def gen_code(rng: random.Random) -> tuple[str, str]:
    x, y = rng.randint(2, 9), rng.randint(2, 9)
    if rng.random() < 0.5:
        code, val = f"x = {x}\ny = x * {y}\nprint(y)", x * y
    else:  # 0-based indexing (the typical slip: 1-based)
        lst = rng.sample(range(1, 10), 4)
        i = rng.randrange(4)
        code, val = f"a = {lst}\nprint(a[{i}])", lst[i]
    return f"What does this Python code print?\n{code}", str(val)


def gen_finance(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        p, amt = rng.choice([10, 20, 50]), rng.randint(2, 60) * 10
        return f"What is {p}% of {amt}?", _num(p * amt / 100)
    principal, years = rng.randint(1, 9) * 100, rng.randint(1, 3)
    return (f"How much simple interest does ${principal} earn at 10% per year in {years} years?",
            _num(principal * years / 10))


def gen_dosage(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        kg, per = rng.randint(1, 9) * 10, rng.choice([2, 3, 5])
        return (f"A synthetic drug is dosed at {per} mg per kg of body weight. What is the dose in mg for a patient "
                f"weighing {kg} kg?", str(kg * per))
    v = rng.randint(2, 95) / 10 if rng.random() < 0.5 else rng.randint(2, 9)
    unit, factor, to = rng.choice([("g", 1000, "mg"), ("mg", 1000, "micrograms"), ("L", 1000, "mL")])
    return f"Convert {_num(v)} {unit} to {to}.", _num(v * factor)


def gen_json(rng: random.Random) -> tuple[str, str]:
    name, age, city = rng.choice(NAMES), rng.randint(18, 80), rng.choice(CITIES)
    s = rng.choice([f"{name} is {age} years old and lives in {city}.",
                    f"Living in {city}, {name} turned {age} this year.",
                    f"At {age}, {name} moved to {city}."])
    ans = json.dumps({"name": name, "age": age, "city": city})
    return f'Extract the person as JSON with keys "name", "age" and "city": {s}', ans


def gen_reverse(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS) if rng.random() < 0.5 else rng.choice(CITIES).lower()
    return f"Spell the word '{w}' backwards.", w[::-1]


GENERATORS = {"math": gen_math, "code": gen_code, "finance": gen_finance, "dosage": gen_dosage, "json": gen_json,
              "reverse": gen_reverse}
KINDS = {"math": "number", "code": "number", "finance": "number", "dosage": "number", "json": "json",
         "reverse": "word"}


def _num(x: float) -> str:
    return canon_number(repr(round(float(x), 6)))


def make_splits(skill: str, seed: int, sizes: dict[str, int]) -> dict[str, list[dict]]:
    """Test first, then validation, then train, each rejecting prompts already used (held out; no duplicates
    within a split either). Small pools (``reverse``: ~100 words) give fewer unique items than asked: the train
    split then holds the words not in validation / test, as many times as needed."""
    gen = GENERATORS[skill]
    used: set[str] = set()
    out: dict[str, list[dict]] = {}
    for split in ("test", "validation", "train"):
        rng = random.Random(f"{seed}:{skill}:{split}")
        recs: list[dict] = []
        tries = 0
        while len(recs) < sizes[split] and tries < 50 * sizes[split]:
            tries += 1
            prompt, answer = gen(rng)
            if prompt in used:
                continue
            used.add(prompt)
            # the answer in its extracted (canonical) form: numbers without trailing zeros, JSON with sorted keys
            recs.append({"skill": skill, "prompt": prompt, "answer": reference(KINDS[skill], answer)})
        if not recs:
            raise ValueError(f"skill {skill}: no fresh {split} items left (the generator's pool is too small)")
        out[split] = recs
    return out


def write_data(cfg: dict, out: str | Path) -> dict:
    out = Path(out)
    sizes = {s: int(cfg[f"n_{s}"]) for s in SPLITS}
    stats = {}
    for skill in cfg["skills"]:
        if skill not in GENERATORS:
            raise ValueError(f"unknown skill {skill!r}; known: {sorted(GENERATORS)}")
        splits = make_splits(skill, int(cfg["seed"]), sizes)
        (out / skill).mkdir(parents=True, exist_ok=True)
        for split, recs in splits.items():
            with open(out / skill / f"{split}.jsonl", "w") as f:
                for r in recs:
                    f.write(json.dumps(r) + "\n")
        stats[skill] = {s: len(r) for s, r in splits.items()}
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def main(argv: list[str] | None = None) -> None:
    from skills.smollm2.config import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    p = load_params(a.params)
    print(json.dumps(write_data(p["data"], a.out or p["paths"]["data"])))


if __name__ == "__main__":
    main()
