"""The skills suite as the nightly pipeline's benchmark, plugged in through ``pipeline.eval.callable``
(``pipeline.eval.suite: skills`` is the alias of ``callable: skills.scorer:suite``).

The pipeline (pipeline/) never imports skills/: it calls this object with (base_dir, adapter_dir, split, limit) and a
``context`` carrying the project, params file, work folder and eval settings, and reads its optional ``fingerprint``,
``inputs``, ``prewarm`` and ``tasks`` methods.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import yaml


class SkillsSuite:
    @staticmethod
    def _suite(context) -> dict:
        """The top-level ``suite:`` section of the project's params.yaml."""
        return (yaml.safe_load(Path(context.params_path).read_text()) or {}).get("suite") or {}

    def data_dir(self, context) -> Path:
        """``suite.paths.data`` of the project's params.yaml (default build/suite/data), relative to the project."""
        p = Path(((self._suite(context).get("paths") or {}).get("data")) or "build/suite/data")
        return p if p.is_absolute() else Path(context.project) / p

    def eval_settings(self, context) -> dict:
        """``suite.eval`` of the project's params.yaml (max_gen_toks, threads)."""
        return self._suite(context).get("eval") or {}

    def __call__(self, base_dir, adapter_dir, split, limit, *, context) -> dict[str, float]:
        from skills.evaluate import evaluate

        # task YAMLs under the project's work dir: never shared with another checkout or run
        return evaluate(base_dir, adapter_dir, skills=context.eval.skills, split=split, limit=limit,
                        data_dir=self.data_dir(context), batch_size=int(context.eval.batch_size),
                        tasks_dir=Path(context.work) / "lm_eval_tasks",
                        threads=self.eval_settings(context).get("threads", 2))

    def tasks(self, context) -> list[str] | None:
        """The task names its scores carry (the pipeline checks ``gate.floors`` against them), known before the data
        is built: ``suite.data.skills`` of params.yaml, else the skills of the data folder when it is there (None: not
        known yet); those of ``pipeline.eval.skills`` when set."""
        skills = (self._suite(context).get("data") or {}).get("skills")
        if skills is None:
            data = self.data_dir(context)
            if not data.is_dir():
                return None
            skills = sorted(p.name for p in data.iterdir() if (p / f"{context.eval.split}.jsonl").is_file())
        return [s for s in skills if not context.eval.skills or s in context.eval.skills]

    def generation(self, context) -> dict:
        """How the benchmark generates (the registered model serves the same way): plain prompts, no chat template,
        greedy, cut at lm-eval's stop strings after at most max_gen_toks tokens."""
        from skills.lmeval import STOP

        return {"apply_chat_template": False, "max_new_tokens": int(self.eval_settings(context).get("max_gen_toks", 10)),
                "stop": list(STOP)}

    def outcomes(self, base_dir, adapter_dir, split, limit, *, context) -> dict[str, dict[str, float]]:
        """Per-item 0/1 outcomes ``{skill: {item: 0/1}}``: the test split through lm-eval's ``log_samples`` (the
        benchmark's own numbers); the validation split (choosing a recipe) through the suite report's fast path, the
        KV-cached greedy decoder (its outputs equal lm-eval's: tests/test_skills_report.py). Items are named
        ``<doc_id>:<sha256(prompt=answer)[:12]>`` on both paths, so outcomes compare by content."""
        data = self.data_dir(context)
        skills = sorted(p.name for p in data.iterdir() if (p / f"{split}.jsonl").is_file())
        skills = [s for s in skills if not context.eval.skills or s in context.eval.skills]
        if split == "validation":
            return self._fast(base_dir, adapter_dir, data, skills, split, limit, context)
        from skills.evaluate import evaluate
        from skills.lmeval import task_name

        acc, res = evaluate(base_dir, adapter_dir, skills=skills, split=split, limit=limit, data_dir=data,
                            batch_size=int(context.eval.batch_size), tasks_dir=Path(context.work) / "lm_eval_tasks",
                            threads=self.eval_settings(context).get("threads", 2), return_details=True)
        return sample_outcomes(res, acc, {s: task_name(s, split) for s in skills})

    def _fast(self, base_dir, adapter_dir, data, skills, split, limit, context):
        from skills.base import load_base
        from skills.common import greedy
        from skills.data import read_jsonl

        with LOAD_LOCK:  # transformers' loading (meta-device init) is not thread-safe: one load at a time
            model = load_base(Path(base_dir))
            if adapter_dir is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(adapter_dir))
        model.eval()
        max_new = int(self.eval_settings(context).get("max_gen_toks", 10))
        out = {}
        for skill in skills:
            recs = read_jsonl(data / skill / f"{split}.jsonl")[: limit or None]
            preds = greedy(model, [r["prompt"] for r in recs], max_new=max_new, batch_size=int(context.eval.batch_size))
            out[skill] = {item_id(i, r["prompt"], r["answer"]): float(p.strip() == r["answer"])
                          for i, (p, r) in enumerate(zip(preds, recs))}
        return out

    def fingerprint(self, context) -> dict:
        """The digest of the split's data files (the same JSON digest as the pipeline's content keys)."""
        from pico.writer import json_digest, sha256_file

        data = self.data_dir(context)
        if not data.is_dir():
            raise FileNotFoundError(f"the skills suite data {data} is missing; build the suite first: `dvc repro` "
                                    "(or `python -m flows.nightly`, which builds it)")
        files = {str(p): sha256_file(p) for p in sorted(data.glob(f"*/{context.eval.split}.jsonl"))}
        out = {"data": json_digest(files)}
        if context.eval.split == "validation":  # scored by the fast greedy decoder (see outcomes)
            out["scorer"] = "fast-greedy"
        return out

    def inputs(self, context) -> list[Path]:
        return [self.data_dir(context)]

    def prewarm(self, context) -> None:
        """Write the lm-eval task YAMLs and index them (seconds) before the first evaluation."""
        import lm_eval.models.huggingface  # noqa: F401  (the import alone is about 12 s here)

        data = self.data_dir(context)
        if data.is_dir():
            from skills.lmeval import task_manager, write_tasks

            task_manager(write_tasks(data, Path(context.work) / "lm_eval_tasks"))


def sample_outcomes(res: dict, acc: dict[str, float], tasks: dict[str, str]) -> dict[str, dict[str, float]]:
    """``{skill: {item: 0/1}}`` from lm-eval's ``log_samples`` (``tasks``: skill -> task name), each skill checked
    against lm-eval's own score for it."""
    out = {}
    for skill, task in tasks.items():
        items = {item_id(smp["doc_id"], smp["doc"]["prompt"], smp["doc"]["answer"]): float(smp["exact_match"])
                 for smp in res["samples"][task]}
        if abs(sum(items.values()) / len(items) - acc[skill]) > 1e-9:
            raise RuntimeError(f"{skill}: lm-eval's samples disagree with its score {acc[skill]}")
        out[skill] = items
    return out


def item_id(i, prompt: str, answer: str) -> str:
    return f"{i}:{hashlib.sha256(f'{prompt}={answer}'.encode()).hexdigest()[:12]}"


LOAD_LOCK = threading.Lock()

suite = SkillsSuite()
