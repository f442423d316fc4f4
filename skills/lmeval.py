"""lm-eval task definitions for the skills suite: one YAML task per skill over the local JSONL, plus group tasks.

Tasks (exact match, greedy, stop at newline, zero-shot):
  ``skills_<skill>``      scored on the skill's test split;       group ``skills``      = all of them
  ``skills_<skill>_val``  scored on the skill's validation split; group ``skills_val``  = all of them

The YAMLs are generated with ABSOLUTE ``data_files`` paths (datasets resolves relative paths against the cwd), so
they work from any working directory.  They are written outside the DVC outputs (default ``build/suite/lm_eval_tasks``)
and rewritten whenever the data directory they point at changes, so a moved checkout never reads stale paths.

Command line (writes the YAMLs and prints the include path to give lm-eval):
  ``python -m skills.lmeval [--data build/suite/data] [--out build/suite/lm_eval_tasks]``
  ``lm_eval --model hf --model_args pretrained=BASE,tokenizer=BASE,peft=ADAPTER --include_path <that dir> \\
      --tasks skills --batch_size 256``
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from skills.config import resolve

SPLIT_SUFFIX = {"test": "", "validation": "_val"}
DEFAULT_TASKS_DIR = "build/suite/lm_eval_tasks"


def task_name(skill: str, split: str = "test", prefix: str = "skills") -> str:
    return f"{prefix}_{skill}{SPLIT_SUFFIX[split]}"


def group_name(split: str = "test", prefix: str = "skills") -> str:
    return f"{prefix}{SPLIT_SUFFIX[split]}"


def jsonl_task(skill: str, data_dir: Path, split: str, prefix: str = "skills", **fields) -> dict:
    """A ``generate_until`` task over ``<data_dir>/<skill>/<split>.jsonl`` ({prompt, answer} rows), exact match;
    ``fields`` add to or replace the common keys (generation, filters, delimiters, metadata)."""
    files = {s: str((data_dir / skill / f"{s}.jsonl").resolve()) for s in ("train", "validation", "test")}
    metadata = fields.pop("metadata", {"version": 1.0, "skill": skill, "split": split})
    return {
        "task": task_name(skill, split, prefix),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "output_type": "generate_until",
        "training_split": "train",
        "test_split": split,
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        **fields,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": metadata,
    }


STOP = ["\n"]  # lm-eval's `until`: one line per answer (the served model stops there too)


def task_config(skill: str, data_dir: Path, split: str, max_gen_toks: int = 10) -> dict:
    return jsonl_task(skill, data_dir, split, target_delimiter="", num_fewshot=0,
                      generation_kwargs={"until": list(STOP), "max_gen_toks": int(max_gen_toks), "do_sample": False})


def group_config(skills: list[str], split: str, prefix: str = "skills", **aggregate) -> dict:
    return {
        "group": group_name(split, prefix),
        "task": [task_name(s, split, prefix) for s in skills],
        "aggregate_metric_list": [{"metric": "exact_match", **aggregate, "aggregation": "mean",
                                   "weight_by_size": False}],
        "metadata": {"version": 1.0},
    }


def find_skills(data_dir: Path, skills=None) -> tuple[list[str], list[str]]:
    """(the requested skills, every skill with a ``test.jsonl`` under data_dir); unknown ones raise, naming both."""
    found = sorted(p.name for p in data_dir.iterdir() if (p / "test.jsonl").exists())
    if not found:
        raise FileNotFoundError(f"no skill data (<skill>/test.jsonl) under {data_dir}")
    wanted = list(skills) if skills else found
    missing = [s for s in wanted if s not in found]
    if missing:
        raise ValueError(f"unknown skills {missing}; available under {data_dir}: {found}")
    return wanted, found


def write_task_files(out: Path, files: dict[str, str]) -> Path:
    """Make ``out`` hold exactly these YAMLs (stale task YAMLs dropped), each replaced atomically when changed."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.yaml"):  # drop tasks of skills no longer present
        if old.name not in files:
            old.unlink()
    for name, text in files.items():
        f = out / name
        if not f.exists() or f.read_text() != text:
            tmp = f.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text)
            tmp.replace(f)
    return out


def write_tasks(data_dir: str | Path, out_dir: str | Path | None = None, skills: list[str] | None = None,
                max_gen_toks: int = 10) -> Path:
    """Write (or refresh) the task YAMLs for every skill found in data_dir; returns the include path."""
    data_dir = resolve(data_dir).resolve()
    if skills is None:
        skills, _ = find_skills(data_dir)
    wanted: dict[str, str] = {}
    for split in SPLIT_SUFFIX:
        for s in skills:
            wanted[f"{task_name(s, split)}.yaml"] = yaml.safe_dump(task_config(s, data_dir, split, max_gen_toks),
                                                                  sort_keys=False)
        wanted[f"{group_name(split)}.yaml"] = yaml.safe_dump(group_config(skills, split), sort_keys=False)
    return write_task_files(resolve(out_dir or DEFAULT_TASKS_DIR), wanted)


_TASK_MANAGERS: dict[str, object] = {}


def task_manager(include_path: str | Path):
    """A cached `lm_eval.tasks.TaskManager` for the include path (indexing lm-eval's own tasks takes seconds)."""
    from lm_eval.tasks import TaskManager

    key = str(Path(include_path).resolve())
    if key not in _TASK_MANAGERS:
        # include_defaults=False: do not index the thousands of built-in tasks (seconds); ours are self-contained
        _TASK_MANAGERS[key] = TaskManager(include_path=key, include_defaults=False)
    return _TASK_MANAGERS[key]


def main(argv: list[str] | None = None) -> None:
    from skills.config import load_suite_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    p = load_suite_params(a.params)
    path = write_tasks(a.data or p["paths"]["data"], a.out, p["data"]["skills"],
                       int(p.get("eval", {}).get("max_gen_toks", 10)))
    print(path)


if __name__ == "__main__":
    main()
