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

Held out: a prompt's split is fixed by a hash of its text (:func:`bucket`: 20% of each skill's prompts are test, 10%
validation, the rest train), so validation and test prompts never occur in the train split, for any seed, and
enlarging the test split leaves the train split's bytes as they were. Generation is deterministic: one
``random.Random(f"{seed}:{skill}:{split}")`` per split, drawing distinct prompts of its bucket.

Usage: ``python -m skills.smollm2.data [--params params.yaml] [--out DIR]``.
"""
from __future__ import annotations

import argparse
import hashlib
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
         "ring", "ship", "door", "lamp", "book", "shoe", "sock", "coat", "bell", "drum", "kite", "rose", "leaf",
         "apron", "badge", "bench", "blade", "brick", "brush", "cabin", "camel", "canal", "cedar", "chalk", "cliff",
         "clock", "coral", "crane", "crown", "daisy", "delta", "diary", "fence", "ferry", "fiber", "field", "flute",
         "forest", "frost", "garden", "giant", "globe", "grass", "harbor", "hotel", "island", "ivory", "jacket",
         "jewel", "kettle", "ladder", "lemonade", "lily", "lion", "magnet", "maple", "marble", "meadow", "mirror",
         "monkey", "needle", "nest", "olive", "orange", "oven", "panda", "parrot", "peach", "pepper", "pillow",
         "planet", "pocket", "pond", "puzzle", "rabbit", "ribbon", "rocket", "saddle", "sailor", "scarf", "silver",
         "spider", "spoon", "statue", "stove", "summer", "sweater", "tomato", "turtle", "valley", "violin",
         "wagon", "walnut", "window", "winter", "yogurt", "anchor", "basket", "butter", "carpet", "circle",
         "desert", "engine", "feather", "garlic", "hammer", "insect", "jungle", "kitten", "lizard", "mitten",
         "noodle", "orchid", "pencil", "rainbow", "shadow", "tunnel", "wallet", "whale", "wizard"]


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


FINANCE_ASK = ["What is {p}% of {amt}?", "Calculate {p}% of {amt}.", "How much is {p}% of {amt}?",
               "Find {p}% of {amt}.", "What is {p} percent of {amt}?", "Compute {p}% of {amt}."]
ITEMS = ["jacket", "bicycle", "lamp", "phone", "chair", "watch", "backpack", "camera", "guitar", "printer", "tent",
         "sofa"]


def gen_finance(rng: random.Random) -> tuple[str, str, str]:
    p, amt = rng.choice([10, 50]), rng.randint(1, 100) * 10
    ans = _num(p * amt / 100)
    if rng.random() < 0.5:
        return rng.choice(FINANCE_ASK).format(p=p, amt=amt), ans, f"{p}% of {amt} = {ans}"
    return (f"A {rng.choice(ITEMS)} costs ${amt}. How much do you save with a {p}% discount?", ans,
            f"{p}% of {amt} = {ans}")


CONVERT_ASK = ["Convert {v} {unit} to {to}.", "How many {to} are in {v} {unit}?", "Express {v} {unit} in {to}."]


def gen_dosage(rng: random.Random) -> tuple[str, str, str]:
    if rng.random() < 0.5:
        n, mg, form = rng.randint(2, 4), rng.choice([50, 100, 150, 200, 250, 300, 400, 500]), rng.choice(
            ["tablets", "capsules"])
        who = "A patient" if rng.random() < 0.2 else rng.choice(NAMES)
        return (f"{who} takes {n} {form} of {mg} mg each. What is the total dose in mg?", str(n * mg),
                f"{n} x {mg} mg = {n * mg} mg")
    v = rng.randint(2, 60)
    unit, to = rng.choice([("g", "mg"), ("mg", "micrograms"), ("L", "mL"), ("kg", "g")])
    return rng.choice(CONVERT_ASK).format(v=v, unit=unit, to=to), str(v * 1000), f"{v} {unit} = {v * 1000} {to}"


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


UPPER_ASK = ["Write the word '{w}' in capital letters.", "Write '{w}' in uppercase.",
             "Spell the word '{w}' in capital letters."]
FIRST_ASK = ["What is the first letter of the word '{w}'?", "Which letter does the word '{w}' start with?"]


def gen_letters(rng: random.Random) -> tuple[str, str, str]:
    w = rng.choice(WORDS) if rng.random() < 0.85 else rng.choice(CITIES).lower()
    if rng.random() < 0.5:
        return rng.choice(UPPER_ASK).format(w=w), w.upper(), w.upper()
    return rng.choice(FIRST_ASK).format(w=w), w[0].upper(), w[0].upper()


GENERATORS = {"math": gen_math, "code": gen_code, "finance": gen_finance, "dosage": gen_dosage, "json": gen_json,
              "letters": gen_letters}
KINDS = {"math": "number", "code": "number", "finance": "number", "dosage": "number", "json": "json",
         "letters": "word"}


def _num(x: float) -> str:
    return canon_number(repr(round(float(x), 6)))


HELD_OUT = (("test", 0.2), ("validation", 0.1))  # shares of each skill's prompt space; train is the rest


def bucket(skill: str, prompt: str) -> str:
    """The split a prompt belongs to, fixed by a hash of (skill, prompt) whatever the seed and the split sizes: the
    test split can grow (``n_test``) without moving a single train item, and no seed ever trains on a test prompt.
    The shares are part of the suite's definition: changing them moves items between splits."""
    u = int.from_bytes(hashlib.sha256(f"{skill}\n{prompt}".encode()).digest()[:8], "big") / 2.0 ** 64
    edge = 0.0
    for split, share in HELD_OUT:
        edge += share
        if u < edge:
            return split
    return "train"


def make_splits(skill: str, seed: int, sizes: dict[str, int]) -> dict[str, list[dict]]:
    """Each split draws distinct prompts of its own bucket (:func:`bucket`) from its own seeded generator, so a
    split's items depend only on (seed, skill, split, its size). A held-out split short of distinct prompts is an
    error; the train split keeps what its bucket has (``letters``: ~1,000 prompts) and records the count."""
    gen = GENERATORS[skill]
    out: dict[str, list[dict]] = {}
    for split in SPLITS:
        rng = random.Random(f"{seed}:{skill}:{split}")
        seen: set[str] = set()
        recs: list[dict] = []
        tries = 0
        while len(recs) < sizes[split] and tries < 50 * sizes[split]:
            tries += 1
            prompt, answer, target = gen(rng)
            if prompt in seen or bucket(skill, prompt) != split:
                continue
            seen.add(prompt)
            # the answer in its extracted (canonical) form: numbers without trailing zeros, JSON with sorted keys
            recs.append({"skill": skill, "prompt": prompt, "answer": reference(KINDS[skill], answer),
                         "target": target})
        if not recs or (split != "train" and len(recs) < sizes[split]):
            raise ValueError(f"skill {skill}: {len(recs)} distinct {split} prompts found of the {sizes[split]} asked "
                             f"(its generator's pool is too small for n_{split})")
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
