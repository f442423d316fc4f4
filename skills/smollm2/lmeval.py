"""lm-eval task definitions for the SmolLM2 suite: one ``generate_until`` YAML task per skill and split, plus groups.

  ``smollm2_<skill>``      the skill's test split;        group ``smollm2``      = all of them
  ``smollm2_<skill>_val``  the skill's validation split;  group ``smollm2_val``  = all of them

The prompt (``doc_to_text``) is the bare user message: the chat template is applied by lm-eval itself
(``apply_chat_template=True``, from params, not from the task), so the same tasks serve any instruct model. Replies
go through an answer-extraction filter (``filter_list``: the last number, the first parsed JSON object, or the last
word; :mod:`skills.smollm2.extract`, loaded by lm-eval from the ``utils.py`` written beside the YAMLs) and are then
compared with ``exact_match`` to the reference in the same extracted form.

Command line: ``python -m skills.smollm2.lmeval`` writes the YAMLs and prints the include path:
  ``lm_eval --model hf --model_args pretrained=BASE,peft=ADAPTER --apply_chat_template --include_path DIR \\
      --tasks smollm2 --batch_size 64``
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from skills import lmeval as lm
from skills.config import resolve
from skills.lmeval import SPLIT_SUFFIX
from skills.smollm2.data import KINDS

PREFIX = "smollm2"
UTILS = ('"""Written by skills.smollm2.lmeval: the answer-extraction filter for these tasks."""\n'
         "from skills.smollm2.extract import make_lmeval_filter\n\nExtractAnswer = make_lmeval_filter()\n")


class _Function(str):
    """A YAML scalar written with lm-eval's ``!function`` tag."""


yaml.SafeDumper.add_representer(_Function, lambda d, v: d.represent_scalar("!function", str(v)))


def task_name(skill: str, split: str = "test") -> str:
    return lm.task_name(skill, split, PREFIX)


def group_name(split: str = "test") -> str:
    return lm.group_name(split, PREFIX)


STOP = ["<|im_end|>"]  # lm-eval's `until`: the end of the assistant's turn (the served model stops there too)


def task_config(skill: str, data_dir: Path, split: str, max_gen_toks: int = 32) -> dict:
    return lm.jsonl_task(
        skill, data_dir, split, PREFIX, fewshot_split="train", target_delimiter=" ", fewshot_delimiter="\n\n",
        generation_kwargs={"until": list(STOP), "max_gen_toks": int(max_gen_toks), "do_sample": False},
        filter_list=[{"name": "extract", "filter": [
            {"function": _Function("utils.ExtractAnswer"), "kind": KINDS[skill]}, {"function": "take_first"}]}],
        metadata={"version": 1.0, "skill": skill, "split": split, "answer": KINDS[skill]})


def group_config(skills: list[str], split: str) -> dict:
    return lm.group_config(skills, split, PREFIX, filter_list="extract")


def write_tasks(data_dir: str | Path, out_dir: str | Path, skills: list[str] | None = None,
                max_gen_toks: int = 32) -> Path:
    """Write (or refresh) the task YAMLs and their ``utils.py`` for the skills under data_dir; the include path."""
    data_dir = resolve(data_dir).resolve()
    if skills is None:
        skills, _ = lm.find_skills(data_dir)
    wanted = {}
    for split in SPLIT_SUFFIX:
        for s in skills:
            wanted[f"{task_name(s, split)}.yaml"] = yaml.safe_dump(task_config(s, data_dir, split, max_gen_toks),
                                                                  sort_keys=False)
        wanted[f"{group_name(split)}.yaml"] = yaml.safe_dump(group_config(skills, split), sort_keys=False)
    out = lm.write_task_files(resolve(out_dir), wanted)
    if not (out / "utils.py").exists() or (out / "utils.py").read_text() != UTILS:
        (out / "utils.py").write_text(UTILS)
    return out


def main(argv: list[str] | None = None) -> None:
    from skills.smollm2.config import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    a = ap.parse_args(argv)
    p = load_params(a.params)
    print(write_tasks(p["paths"]["data"], p["paths"]["tasks"], p["data"]["skills"],
                      int(p["eval"].get("max_gen_toks", 32))))


if __name__ == "__main__":
    main()
