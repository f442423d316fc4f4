"""Answer extraction: the instruct model answers in sentences ("10% of 380 is 0.10 * 380 = 38."), so the answer is
pulled out of the reply before it is compared, as users score LLMs. The same rules run inside lm-eval (the task
YAMLs' filters call :func:`lmeval_filter`) and in the fast scorer (:mod:`skills.smollm2.common`).

  number  the LAST number in the reply (thousands commas dropped; "38.0" == "38")
  json    the first {...} object in the reply, parsed, re-serialised with sorted keys (so key order and spacing
          do not matter; an unparsable reply scores 0)
  word    the last alphabetic word of the reply, case kept ("HORSE" != "horse")
"""
from __future__ import annotations

import json
import re

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_WORD = re.compile(r"[A-Za-z]+")
_OBJ = re.compile(r"\{.*?\}", re.S)


def canon_number(s: str) -> str:
    s = s.replace(",", "")
    try:
        x = float(s)
    except ValueError:
        return s
    return str(int(x)) if x == int(x) else repr(round(x, 6))


def extract(kind: str, text: str) -> str:
    if kind == "number":
        nums = _NUM.findall(text)
        return canon_number(nums[-1]) if nums else ""
    if kind == "json":
        for m in _OBJ.finditer(text):
            try:
                obj = json.loads(m.group(0))
            except ValueError:
                continue
            return json.dumps(obj, sort_keys=True)
        return ""
    if kind == "word":
        words = _WORD.findall(text)
        return words[-1] if words else ""
    raise ValueError(f"unknown answer kind {kind!r} (number | json | word)")


def reference(kind: str, answer: str) -> str:
    """The reference answer in the extracted form."""
    return extract(kind, answer)


def correct(kind: str, reply: str, answer: str) -> bool:
    got = extract(kind, reply)
    return got != "" and got == reference(kind, answer)


def make_lmeval_filter():
    """An lm-eval ``Filter`` class applying :func:`extract` to every reply (built lazily: lm-eval is only imported
    when a task YAML asks for it)."""
    from lm_eval.api.filter import Filter

    class ExtractAnswer(Filter):
        def __init__(self, kind: str = "number", **kwargs) -> None:
            super().__init__(**kwargs)
            if kind not in ("number", "json", "word"):
                raise ValueError(f"unknown answer kind {kind!r} (number | json | word)")
            self.kind = kind

        def apply(self, resps, docs):
            return [[extract(self.kind, r) for r in rs] for rs in resps]

    return ExtractAnswer
