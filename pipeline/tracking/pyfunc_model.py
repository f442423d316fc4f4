"""The registered model as MLflow tooling loads it: a pyfunc that generates text with the base model plus the merged
LoRA adapter. Logged as *model code* (MLflow copies this file into each version, no pickle): loading needs mlflow,
torch, transformers and peft, not pico-merge.

    m = mlflow.pyfunc.load_model("models:/pico-merged@champion")
    m.predict(["12+34="])                    # -> ["46..."]: greedy continuation, max_new_tokens from the config
    mlflow models serve -m models:/pico-merged@champion --env-manager local    # POST /invocations {"inputs": [...]}

Why a pyfunc wrapper and not the transformers flavor: the flavor's PEFT support records the base as a Hub repo and
commit and loads it from the Hub, while the pipeline's bases are local or DVC-tracked directories (here, offline);
and its text-generation pipeline adds a chat/prompt layer the merge does not need. The wrapper carries only the
adapter files (artifacts/adapter, a few MB) and names the base in its model config (``base_model``: the directory the
night evaluated on; ``base_uri``/``base_sha256``: the catalog's source and pico's digest of it). Point a copy at
another place with ``PICO_BASE_MODEL=DIR`` or ``load_model(uri, model_config={"base_model": DIR})``.
"""

from __future__ import annotations

import os

import mlflow
from mlflow.pyfunc import PythonModel


class MergedAdapter(PythonModel):
    def load_context(self, context) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = dict(context.model_config or {})
        base = os.environ.get("PICO_BASE_MODEL") or cfg["base_model"]
        revision = cfg.get("base_revision")
        device = cfg.get("device", "auto")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.max_new_tokens = int(cfg.get("max_new_tokens", 16))
        self.tokenizer = AutoTokenizer.from_pretrained(base, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(base, revision=revision,
                                                     dtype=getattr(torch, cfg.get("dtype", "float32")))
        self.model = PeftModel.from_pretrained(model, context.artifacts["adapter"]).to(self.device).eval()

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list[str]:
        """Greedy continuation of each prompt (only the new text), ``max_new_tokens`` from the model config."""
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = []
        for prompt in model_input:  # one at a time: no padding, the same text as a single-prompt call
            enc = self.tokenizer(prompt, return_tensors="pt").to(self.device)
            with torch.no_grad():
                ids = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=pad)
            out.append(self.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        return out


mlflow.models.set_model(MergedAdapter())
