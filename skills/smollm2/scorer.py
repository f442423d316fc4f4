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

    def tasks(self, context) -> list[str] | None:
        """The task names its scores carry: ``smollm2.data.skills``, those of ``pipeline.eval.skills`` when set."""
        skills = (self.params(context).get("data") or {}).get("skills")
        if skills is None:
            return None
        return [s for s in skills if not context.eval.skills or s in context.eval.skills]

    def generation(self, context) -> dict:
        """How the benchmark generates (the registered model serves the same way): the prompt as the user's turn of
        the chat template (lm-eval's ``apply_chat_template``), greedy, cut at the end of the turn."""
        from skills.smollm2.evaluate import DEFAULTS
        from skills.smollm2.lmeval import STOP

        cfg = {**DEFAULTS, **self.settings(self.params(context))}
        return {"apply_chat_template": bool(cfg["apply_chat_template"]), "max_new_tokens": int(cfg["max_gen_toks"]),
                "stop": list(STOP),
                "example": "What is 25% of 480? Reply with the number only."}

    def outcomes(self, base_dir, adapter_dir, split, limit, *, context) -> dict[str, dict[str, float]]:
        """Per-item 0/1 outcomes ``{skill: {item: 0/1}}`` for the pipeline's paired gate, as skills/scorer.py: the
        test split through lm-eval's ``log_samples`` (the benchmark's own numbers, checked against its score), the
        validation split (choosing a recipe) through the fast batched greedy scorer (the same replies:
        tests/skills/test_smollm2.py). Items are ``<doc_id>:<sha256(prompt=answer)[:12]>``."""
        from skills.lmeval import find_skills
        from skills.scorer import sample_outcomes

        p = self.params(context)
        data = Path(p["paths"]["data"])
        skills, _ = find_skills(data, context.eval.skills)
        if split == "validation":
            return self._fast(base_dir, adapter_dir, data, skills, split, limit, p)
        from skills.smollm2.evaluate import evaluate
        from skills.smollm2.lmeval import task_name

        acc, res = evaluate(base_dir, adapter_dir, skills, split, limit, data_dir=data,
                            tasks_dir=Path(context.work) / "smollm2_lm_eval_tasks", settings=self.settings(p),
                            return_details=True)
        return sample_outcomes(res, acc, {s: task_name(s, split) for s in skills})

    def _fast(self, base_dir, adapter_dir, data, skills, split, limit, p) -> dict[str, dict[str, float]]:
        from skills.scorer import LOAD_LOCK, item_id
        from skills.smollm2.common import greedy, load_base
        from skills.smollm2.data import KINDS, read_jsonl
        from skills.smollm2.extract import correct

        cfg = self.settings(p)
        with LOAD_LOCK:  # transformers' loading is not thread-safe: one load at a time
            model, tok = load_base(base_dir)
            if adapter_dir is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(adapter_dir))
        model.eval()
        out = {}
        for skill in skills:
            recs = read_jsonl(data / skill / f"{split}.jsonl")[: limit or None]
            replies = greedy(model, tok, [r["prompt"] for r in recs], int(cfg.get("max_gen_toks", 40)),
                             int(cfg.get("batch_size", 64)))
            out[skill] = {item_id(i, r["prompt"], r["answer"]): float(correct(KINDS[skill], y, r["answer"]))
                          for i, (y, r) in enumerate(zip(replies, recs))}
        return out

    def fingerprint(self, context) -> dict:
        from pico.writer import sha256_file

        p = self.params(context)
        data = Path(p["paths"]["data"])
        if not data.is_dir():
            raise FileNotFoundError(f"the SmolLM2 suite data {data} is missing; build it first: "
                                    "`dvc repro smollm2_data` (or `python -m flows.nightly`, which builds it)")
        files = {str(f.relative_to(data)): sha256_file(f) for f in sorted(data.glob(f"*/{context.eval.split}.jsonl"))}
        blob = json.dumps({"files": files, "eval": self.settings(p)}, sort_keys=True, default=str)
        out = {"data": hashlib.sha256(blob.encode()).hexdigest()}
        if context.eval.split == "validation":  # scored by the fast greedy decoder (see outcomes)
            out["scorer"] = "fast-greedy"
        return out

    def inputs(self, context) -> list[Path]:
        return [Path(self.params(context)["paths"]["data"])]


suite = SmolLM2Suite()
