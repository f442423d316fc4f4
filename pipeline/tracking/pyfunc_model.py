"""The registered model as MLflow tooling loads it: a pyfunc that generates text with the base model plus the merged
LoRA adapter, the way the benchmark generated. Logged as *model code* (MLflow copies this one file into each version,
no pickle): loading needs mlflow, torch, transformers and peft (plus huggingface_hub or dvc to fetch the base), never
pico-merge, so nothing here imports the project.

    m = mlflow.pyfunc.load_model("models:/pico-merged@champion")
    m.predict(["What is 25% of 480? Reply with the number only."])          # -> [reply]: as the benchmark generated
    m.predict(["..."], params={"max_new_tokens": 8, "stop": ["\\n"]})       # per-request generation params
    m.predict({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})   # MLflow's chat request schema
    mlflow models serve -m models:/pico-merged@champion    # POST /invocations {"inputs": [...]}

The model config records how the night's benchmark generated (pipeline/evaluation.py ``generation``): whether a plain
prompt goes through the chat template as the user's turn (lm-eval's ``apply_chat_template``) and that template's text,
``max_new_tokens`` and the ``stop`` strings (lm-eval's ``until``); decoding is greedy unless a request sets a
temperature. So the served model is the model that was benchmarked and promoted. Plain prompts give strings; chat
requests (a dict with ``messages``, or a list of them) give chat-completion dicts (``choices[0].message.content``).

The base model is never copied into the version: the config names it, and :func:`resolve_base` finds a copy whose
digest is the recorded ``base_sha256`` (pico's digest, as pipeline/sources.py ``model_source`` computes it), on any
host: the night's directory (``base_model``) when it is there and unchanged, else a verified copy in the cache, else
the recorded source (``base_uri``) fetched into the cache: ``hf://org/name@rev`` from the Hugging Face hub at that
revision, ``dvc://path[@rev]`` through ``dvc.api.DVCFileSystem`` of the project's repository at the recorded git
revision (its git remote, the night's checkout, or the DVC repository in the current directory: a clone), a plain
path (relative: to the current directory, then the night's checkout). A copy whose digest differs is never loaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel

log = logging.getLogger("pico.model")


class BaseModelError(RuntimeError):
    """No copy of the base model with the recorded digest could be found or fetched."""


def base_digest(path: str | Path) -> str:
    """pico's digest of a base model directory: sha256 of the sorted "name sha256\\n" lines of its top-level files
    (pico.adapters.Source.sha256 over pipeline/sources.py ``model_source``'s files)."""
    lines = []
    for f in sorted(Path(path).iterdir(), key=lambda p: p.name):
        if f.is_file():
            with open(f, "rb") as fh:
                lines.append(f"{f.name} {hashlib.file_digest(fh, 'sha256').hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def cache_root() -> Path:
    """Where fetched bases are kept, one folder per digest: ``PICO_BASE_CACHE``, else ``~/.cache/pico-merge/bases``."""
    return Path(os.environ.get("PICO_BASE_CACHE") or Path.home() / ".cache" / "pico-merge" / "bases")


def _dvc_get(repo: str, path: str, rev: str | None, dest: Path) -> None:
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(repo, rev=rev)
    try:
        if not fs.exists(path):
            raise FileNotFoundError(f"no {path} at revision {rev or 'workspace'}")
        fs.get(path, str(dest), recursive=True)
    finally:
        fs.close() if hasattr(fs, "close") else None


def _dvc_repos(cfg: dict) -> list[str]:
    """Where a ``dvc://`` base is looked up, in order: the project's git remote, the night's checkout, the DVC
    repository in the current directory (a clone of the project)."""
    repos = [cfg.get("base_git_url"), cfg.get("base_project")]
    if (Path.cwd() / ".dvc").is_dir():
        repos.append(str(Path.cwd()))
    out: list[str] = []
    for r in repos:
        if r and r not in out and ("://" in r or "@" in r.split("/")[0] or Path(r, ".dvc").is_dir()):
            out.append(r)
    return out


def resolve_base(cfg: dict) -> Path:
    """A local directory holding the base model with the recorded digest (see the module's docstring); raises
    :class:`BaseModelError` naming every place tried and why it was refused (missing, or expected vs got sha256).
    ``PICO_BASE_MODEL=DIR`` names the copy to use: it is verified too, with no fallback."""
    expected = cfg.get("base_sha256")
    if not expected:
        raise BaseModelError("the model config records no base_sha256: the base cannot be verified")
    tried: list[str] = []

    def verified(path: Path, what: str) -> bool:
        if not path.is_dir():
            tried.append(f"{what} {path}: no such directory")
            return False
        got = base_digest(path)
        if got != expected:
            tried.append(f"{what} {path}: sha256 {got}, expected {expected}")
            return False
        return True

    def refuse() -> BaseModelError:
        return BaseModelError(f"no copy of the base model {cfg.get('base_uri')} with sha256 {expected}: "
                              + "; ".join(tried))

    override = os.environ.get("PICO_BASE_MODEL")
    if override:
        if verified(Path(override), "PICO_BASE_MODEL"):
            return Path(override)
        raise refuse()
    if cfg.get("base_model") and verified(Path(cfg["base_model"]), "the night's base"):
        return Path(cfg["base_model"])
    cached = cache_root() / expected
    if cached.exists():
        if verified(cached, "cached copy"):
            return cached
        shutil.rmtree(cached, ignore_errors=True)  # a damaged copy: fetched again below
    uri = str(cfg.get("base_uri") or "")
    if uri.startswith("hf://"):
        repo_id, _, hub_rev = uri[len("hf://"):].partition("@")
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(repo_id=repo_id, revision=hub_rev or cfg.get("base_revision")))
        except Exception as exc:  # noqa: BLE001 - reported with the other places tried
            tried.append(f"{uri}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        else:
            if verified(path, uri):
                return path
    elif uri.startswith("dvc://"):
        target, _, pinned = uri[len("dvc://"):].partition("@")
        rev = pinned or cfg.get("base_git_commit")
        repos = _dvc_repos(cfg)
        if not repos:
            tried.append(f"{uri}: no repository to read it from (the night's checkout is gone and the current "
                         "directory is not a clone of the project)")
        for repo in repos:
            partial = cached.with_name(f"{expected}.partial-{os.getpid()}")
            shutil.rmtree(partial, ignore_errors=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            try:
                _dvc_get(repo, target.strip("/"), rev, partial)
            except Exception as exc:  # noqa: BLE001 - reported with the other places tried
                tried.append(f"{uri} from {repo} at {rev or 'its workspace'}: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]}")
                shutil.rmtree(partial, ignore_errors=True)
                continue
            if verified(partial, f"{uri} from {repo} at {rev or 'its workspace'}"):
                try:
                    partial.rename(cached)
                except OSError:  # another process cached it first: theirs, if it verifies
                    shutil.rmtree(partial, ignore_errors=True)
                    if not verified(cached, "cached copy"):
                        raise refuse() from None
                log.info("base model %s fetched from %s into %s", uri, repo, cached)
                return cached
            shutil.rmtree(partial, ignore_errors=True)
    elif uri:
        places = [Path(uri)] if Path(uri).is_absolute() else \
            [Path.cwd() / uri] + ([Path(cfg["base_project"]) / uri] if cfg.get("base_project") else [])
        for p in places:
            if str(p) != cfg.get("base_model") and verified(p, "the recorded path"):
                return p
    raise refuse()


class MergedAdapter(PythonModel):
    def load_context(self, context) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = dict(context.model_config or {})
        base = resolve_base(cfg)
        device = cfg.get("device", "auto")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.chat = bool(cfg.get("apply_chat_template", False))
        self.chat_template = cfg.get("chat_template")
        self.max_new_tokens = int(cfg.get("max_new_tokens", 16))
        self.stop = list(cfg.get("stop") or [])
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, cfg.get("dtype", "float32")))
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
