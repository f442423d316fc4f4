"""The skills suite as the nightly pipeline's benchmark, plugged in through ``pipeline.eval.callable``
(``pipeline.eval.suite: skills`` is the alias of ``callable: skills.scorer:suite``).

The pipeline (tasks/) never imports skills/: it calls this object with (base_dir, adapter_dir, split, limit) and a
``context`` carrying the project, params file, work folder and eval settings, and reads its optional ``fingerprint``,
``inputs`` and ``prewarm`` methods.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml


class SkillsSuite:
    def data_dir(self, context) -> Path:
        """``suite.paths.data`` of the project's params.yaml (default build/suite/data), relative to the project."""
        suite = (yaml.safe_load(Path(context.params_path).read_text()) or {}).get("suite") or {}
        p = Path(((suite.get("paths") or {}).get("data")) or "build/suite/data")
        return p if p.is_absolute() else Path(context.project) / p

    def __call__(self, base_dir, adapter_dir, split, limit, *, context) -> dict[str, float]:
        from skills.evaluate import evaluate

        # task YAMLs under the project's work dir: never shared with another checkout or run
        return evaluate(base_dir, adapter_dir, skills=context.eval.skills, split=split, limit=limit,
                        data_dir=self.data_dir(context), batch_size=int(context.eval.batch_size),
                        tasks_dir=Path(context.work) / "lm_eval_tasks")

    def fingerprint(self, context) -> dict:
        """The digest of the split's data files (the same JSON digest as the pipeline's content keys)."""
        from pico.writer import sha256_file

        data = self.data_dir(context)
        if not data.is_dir():
            raise FileNotFoundError(f"the skills suite data {data} is missing; build the suite first: `dvc repro` "
                                    "(or `python -m flows.nightly`, which builds it)")
        files = {str(p): sha256_file(p) for p in sorted(data.glob(f"*/{context.eval.split}.jsonl"))}
        return {"data": hashlib.sha256(json.dumps(files, sort_keys=True, default=str).encode()).hexdigest()}

    def inputs(self, context) -> list[Path]:
        return [self.data_dir(context)]

    def prewarm(self, context) -> None:
        """Write the lm-eval task YAMLs and index them (seconds) before the first evaluation."""
        import lm_eval.models.huggingface  # noqa: F401  (the import alone is about 12 s here)

        data = self.data_dir(context)
        if data.is_dir():
            from skills.lmeval import task_manager, write_tasks

            task_manager(write_tasks(data, Path(context.work) / "lm_eval_tasks"))


suite = SkillsSuite()
