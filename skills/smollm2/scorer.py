"""The SmolLM2 suite as the nightly pipeline's benchmark (``pipeline.eval.suite: callable``,
``callable: skills.smollm2.scorer:suite``; with ``pipeline.catalog: adapters-smollm2.yaml``).

Same protocol as skills/scorer.py: called with (base_dir, adapter_dir, split, limit, context); ``fingerprint`` adds
the split's data digest and the lm-eval settings of params.yaml ``smollm2.eval``; ``inputs`` names the data folder
(the main command builds it with ``dvc repro`` when missing).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


class SmolLM2Suite:
    def params(self, context) -> dict:
        from skills.smollm2.config import load_params

        p = load_params(context.params_path)
        for k, v in p["paths"].items():  # load_params resolves against this checkout; the pipeline's project wins
            if not Path(v).is_absolute():
                p["paths"][k] = str(Path(context.project) / v)
        return p

    def settings(self, p: dict) -> dict:
        return {k: v for k, v in p["eval"].items() if k != "split"}

    def __call__(self, base_dir, adapter_dir, split, limit, *, context) -> dict[str, float]:
        from skills.smollm2.evaluate import evaluate

        p = self.params(context)
        return evaluate(base_dir, adapter_dir, context.eval.skills, split, limit, data_dir=p["paths"]["data"],
                        tasks_dir=Path(context.work) / "smollm2_lm_eval_tasks", settings=self.settings(p))

    def fingerprint(self, context) -> dict:
        from pico.writer import sha256_file

        p = self.params(context)
        data = Path(p["paths"]["data"])
        if not data.is_dir():
            raise FileNotFoundError(f"the SmolLM2 suite data {data} is missing; build it first: "
                                    "`dvc repro smollm2_data` (or `python -m flows.nightly`, which builds it)")
        files = {str(f.relative_to(data)): sha256_file(f) for f in sorted(data.glob(f"*/{context.eval.split}.jsonl"))}
        blob = json.dumps({"files": files, "eval": self.settings(p)}, sort_keys=True, default=str)
        return {"data": hashlib.sha256(blob.encode()).hexdigest()}

    def inputs(self, context) -> list[Path]:
        return [Path(self.params(context)["paths"]["data"])]


suite = SmolLM2Suite()
