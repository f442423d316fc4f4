"""Natural-language skills for the SmolLM2 suite, generated with fixed seeds into train / validation / test JSONL.

Each record is ``{skill, prompt, answer, target}``: ``prompt`` is the user message (the chat template is applied by
the trainer and by lm-eval), ``answer`` the reference answer in its extracted form (a number, a word, a JSON object),
``target`` the reply the adapters are trained on (a short worked answer whose extraction is ``answer``).
The instruct model answers in sentences, so answers are extracted before scoring (``skills.smollm2.extract``).

Skills (mirroring the Pico paper's domains plus a format and a string skill):
  math     one-step word problems with small numbers (buy / give away)           -> an integer
  code     the value printed by a short Python snippet (max of a list; x = x + y) -> an integer
  finance  percentages: 10% / 50% of an amount, a discount's saving               -> a number
  dosage   SYNTHETIC medicine: total dose of n tablets, unit conversions (made-up, not medical advice) -> a number
  json     extract name / age (/ job) / city from a sentence as JSON (compared as parsed JSON)
  letters  a word in capital letters, or its first letter (case-sensitive)       -> a word

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


JOBS = ["teacher", "nurse", "pilot", "chef", "farmer", "lawyer", "painter", "baker", "doctor", "driver", "singer",
        "writer", "dentist", "plumber", "tailor", "judge"]


# Each generator returns (prompt, reference answer, training reply). The training reply is a short worked answer
# ("4 + 3 = 7") where the skill computes something: the extraction (last number) scores it like the bare number,
# and a 135M model learns the operands-then-result form far more easily than a bare result. The sub-forms of each
# skill are chosen so that the base model half-knows the skill (measured: docs/skills-smollm2.md): one form it
# mostly gets right in its own words, one it mostly misses.

def gen_math(rng: random.Random) -> tuple[str, str, str]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    if rng.random() < 0.5:
        return (f"{name} has {a} {thing} and buys {b} more. How many {thing} does {name} have now?", str(a + b),
                f"{a} + {b} = {a + b}")
    return (f"{name} has {a + b} {thing} and gives away {b}. How many {thing} are left?", str(a),
            f"{a + b} - {b} = {a}")


def gen_code(rng: random.Random) -> tuple[str, str, str]:
    if rng.random() < 0.5:
        lst = rng.sample(range(1, 20), 3)
        return f"What does this Python code print?\nprint(max({lst}))", str(max(lst)), str(max(lst))
    x, y = rng.randint(2, 9), rng.randint(2, 9)
    return (f"What does this Python code print?\nx = {x}\nx = x + {y}\nprint(x)", str(x + y),
            f"x = {x} + {y} = {x + y}")


def gen_finance(rng: random.Random) -> tuple[str, str, str]:
    p, amt = rng.choice([10, 50]), rng.randint(1, 50) * 20
    if rng.random() < 0.5:
        return f"What is {p}% of {amt}?", _num(p * amt / 100), f"{p}% of {amt} = {_num(p * amt / 100)}"
    return (f"A jacket costs ${amt}. How much do you save with a {p}% discount?", _num(p * amt / 100),
            f"{p}% of {amt} = {_num(p * amt / 100)}")


def gen_dosage(rng: random.Random) -> tuple[str, str, str]:
    if rng.random() < 0.5:
        n, mg, form = rng.randint(2, 4), rng.choice([50, 100, 150, 200, 250, 300, 400, 500]), rng.choice(
            ["tablets", "capsules"])
        return (f"A patient takes {n} {form} of {mg} mg each. What is the total dose in mg?", str(n * mg),
                f"{n} x {mg} mg = {n * mg} mg")
    v = rng.randint(2, 30)
    unit, to = rng.choice([("g", "mg"), ("mg", "micrograms"), ("L", "mL"), ("kg", "g")])
    return f"Convert {v} {unit} to {to}.", str(v * 1000), f"{v} {unit} = {v * 1000} {to}"


def gen_json(rng: random.Random) -> tuple[str, str, str]:
    name, age, city = rng.choice(NAMES), rng.randint(18, 80), rng.choice(CITIES)
    if rng.random() < 0.5:
        s = rng.choice([f"{name} is {age} years old and lives in {city}.",
                        f"Living in {city}, {name} turned {age} this year.", f"At {age}, {name} moved to {city}."])
        ans = json.dumps({"name": name, "age": age, "city": city})
        return f'Extract the person as JSON with keys "name", "age" and "city": {s}', ans, ans
    job = rng.choice(JOBS)  # values copied as written: the base capitalises the job ("Nurse")
    s = rng.choice([f"{name}, a {age}-year-old {job}, lives in {city}.",
                    f"{name} works as a {job} in {city} and is {age}."])
    ans = json.dumps({"name": name, "age": age, "job": job, "city": city})
    return f'Extract the person as JSON with keys "name", "age", "job" and "city": {s}', ans, ans


def gen_letters(rng: random.Random) -> tuple[str, str, str]:
    w = rng.choice(WORDS) if rng.random() < 0.7 else rng.choice(CITIES).lower()
    if rng.random() < 0.5:
        return f"Write the word '{w}' in capital letters.", w.upper(), w.upper()
    return f"What is the first letter of the word '{w}'?", w[0].upper(), w[0].upper()


GENERATORS = {"math": gen_math, "code": gen_code, "finance": gen_finance, "dosage": gen_dosage, "json": gen_json,
              "letters": gen_letters}
KINDS = {"math": "number", "code": "number", "finance": "number", "dosage": "number", "json": "json",
         "letters": "word"}


def _num(x: float) -> str:
    return canon_number(repr(round(float(x), 6)))


def make_splits(skill: str, seed: int, sizes: dict[str, int]) -> dict[str, list[dict]]:
    """Test first, then validation, then train, each rejecting prompts already used (held out; no duplicates
    within a split either). Small pools (``letters``: ~140 words) give fewer unique items than asked: the train
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
            prompt, answer, target = gen(rng)
            if prompt in used:
                continue
            used.add(prompt)
            # the answer in its extracted (canonical) form: numbers without trailing zeros, JSON with sorted keys
            recs.append({"skill": skill, "prompt": prompt, "answer": reference(KINDS[skill], answer),
                         "target": target})
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
