"""The registered model as MLflow tooling loads it: a pyfunc that generates text with the base model plus the merged
LoRA adapter, the way the benchmark generated. Logged as *model code* (MLflow copies this file into each version, no
pickle): loading needs mlflow, torch, transformers and peft, not pico-merge.

    m = mlflow.pyfunc.load_model("models:/pico-merged@champion")
    m.predict(["What is 25% of 480? Reply with the number only."])          # -> [reply]: as the benchmark generated
    m.predict(["..."], params={"max_new_tokens": 8, "stop": ["\\n"]})       # per-request generation params
    m.predict({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})   # MLflow's chat request schema
    mlflow models serve -m models:/pico-merged@champion --env-manager local    # POST /invocations {"inputs": [...]}

The model config records how the night's benchmark generated (pipeline/evaluation.py ``generation``): whether a plain
prompt goes through the chat template as the user's turn (lm-eval's ``apply_chat_template``) and that template's text,
``max_new_tokens`` and the ``stop`` strings (lm-eval's ``until``); decoding is greedy unless a request sets a
temperature. So the served model is the model that was benchmarked and promoted. Plain prompts give strings; chat
requests (a dict with ``messages``, or a list of them) give chat-completion dicts (``choices[0].message.content``).

Why a pyfunc wrapper and not the transformers flavor: the flavor's PEFT support records the base as a Hub repo and
commit and loads it from the Hub, while the pipeline's bases are local or DVC-tracked directories (here, offline).
The wrapper carries only the adapter files (artifacts/adapter, a few MB) and names the base in its model config
(``base_model``: the directory the night evaluated on; ``base_uri``/``base_sha256``: the catalog's source and pico's
digest of it). Point a copy at another place with ``PICO_BASE_MODEL=DIR`` or
``load_model(uri, model_config={"base_model": DIR})``.
"""

from __future__ import annotations

import os
import time

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
        self.chat = bool(cfg.get("apply_chat_template", False))
        self.chat_template = cfg.get("chat_template")
        self.max_new_tokens = int(cfg.get("max_new_tokens", 16))
        self.stop = list(cfg.get("stop") or [])
        self.tokenizer = AutoTokenizer.from_pretrained(base, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(base, revision=revision,
                                                     dtype=getattr(torch, cfg.get("dtype", "float32")))
        self.model = PeftModel.from_pretrained(model, context.artifacts["adapter"]).to(self.device).eval()

    def _text(self, messages) -> str:
        template = self.chat_template or self.tokenizer.chat_template
        if not template:
            raise ValueError("this model was benchmarked on plain prompts and its tokenizer has no chat template: "
                             "send prompts, not messages")
        return self.tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                                  add_generation_prompt=True)

    def _generate(self, text: str, max_new_tokens: int, stop: list[str], temperature: float) -> str:
        """One prompt at a time (no padding): tokens as lm-eval encodes them (no special tokens added: the chat
        template writes its own), greedy unless a temperature is set, the reply cut at the first stop string."""
        import torch

        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        sample = {"do_sample": True, "temperature": float(temperature)} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            ids = self.model.generate(**enc, max_new_tokens=int(max_new_tokens), pad_token_id=pad, **sample)
        reply = self.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for s in stop:
            if s:
                reply = reply.split(s)[0]
        return reply

    def predict(self, context, model_input, params: dict | None = None):
        """Plain prompts (a string, a list of strings, or a one-column DataFrame) -> list of replies; a chat request
        (``{"messages": [...], "max_tokens"?, "stop"?, "temperature"?}``, MLflow's chat schema) or a list of them ->
        chat-completion dicts. ``params`` (``max_new_tokens``, ``stop``, ``temperature``) override the recorded
        settings for the call; a chat request's own fields override those."""
        params = dict(params or {})
        gen: dict = {"max_new_tokens": int(params.get("max_new_tokens") or self.max_new_tokens),
               "stop": list(params["stop"]) if params.get("stop") else self.stop,
               "temperature": float(params.get("temperature") or 0.0)}
        if isinstance(model_input, dict):
            return [self._chat(model_input, gen)]
        if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a DataFrame (REST dataframe_*)
            if "messages" in model_input.columns:
                return [self._chat(r, gen) for r in model_input.to_dict("records")]
            model_input = list(model_input.iloc[:, 0])
        if isinstance(model_input, str):
            model_input = [model_input]
        out: list = []
        for item in list(model_input):
            if isinstance(item, dict):
                out.append(self._chat(item, gen))
                continue
            text = self._text([{"role": "user", "content": str(item)}]) if self.chat else str(item)
            out.append(self._generate(text, **gen))
        return out

    def _chat(self, request: dict, gen: dict) -> dict:
        if "messages" not in request:
            raise ValueError(f"a chat request needs 'messages' (got keys {sorted(request)})")
        stop = request.get("stop")
        gen = {"max_new_tokens": int(request.get("max_tokens") or gen["max_new_tokens"]),
               "stop": ([stop] if isinstance(stop, str) else list(stop)) if stop else gen["stop"],
               "temperature": float(request.get("temperature") or gen["temperature"])}
        reply = self._generate(self._text(request["messages"]), **gen)
        return {"object": "chat.completion", "created": int(time.time()), "model": "pico-merged",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                             "finish_reason": "stop"}]}


mlflow.models.set_model(MergedAdapter())
