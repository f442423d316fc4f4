"""Adapter I/O and validation: PEFT LoRA directories in, per-module factor pairs out.

An adapter is a PEFT LoRA directory (``adapter_config.json`` + ``adapter_model.safetensors``), given as a local path
or as ``hf://org/name@revision``. Loading is two-phase so a merge can stream: :func:`load_adapters` reads configs and
safetensors *headers* only and validates everything that can be checked without the data; the factors of one module
are read on demand by :meth:`AdapterSet.factors`, which also checks them for NaN/Inf before any math sees them.

Every adapter's LoRA scale (alpha/r, or alpha/sqrt(r) with rsLoRA) is absorbed into B once, here, so every method
downstream is scale-free (spec, section 0, gotcha 1).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import AdapterError
from .peft_config import check_fields
from .reader import SafetensorsReader, read_header
from .writer import sha256_file

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")

# PEFT saves "base_model.model.<module>.lora_A.weight"; some tools keep the adapter-name infix
# ("...lora_A.default.weight"). Both map to (<module>, "A").
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class Source:
    """Where one adapter came from and what exactly was read (for the manifest and lineage)."""

    name: str
    uri: str
    path: Path
    revision: str | None
    files: dict[str, str | None] = field(default_factory=dict)  # file name -> sha256 (computed on first use)

    def hash_files(self) -> dict[str, str]:
        for name, digest in self.files.items():
            if digest is None:
                self.files[name] = sha256_file(self.path / name)
        return self.files

    @property
    def sha256(self) -> str:
        """One digest over the adapter's files: sha256 of "name sha256\\n" lines, sorted by name."""
        lines = "".join(f"{name} {digest}\n" for name, digest in sorted(self.hash_files().items()))
        return hashlib.sha256(lines.encode()).hexdigest()

    def to_dict(self) -> dict:
        return {"name": self.name, "uri": self.uri, "revision": self.revision, "sha256": self.sha256,
                "files": dict(sorted(self.hash_files().items()))}


def adapter_file_names(path: Path) -> list[str]:
    """The files that identify an adapter directory, i.e. what its sha256 covers (manifests, pins, lineage): the
    config and the weights, ``adapter_model.safetensors`` or else the first pickle checkpoint present."""
    path = Path(path)
    weights = next((n for n in (SAFETENSORS_NAME, *PICKLE_NAMES) if (path / n).is_file()), None)
    return [n for n in (CONFIG_NAME, weights) if n is not None and (path / n).is_file()]


def hub_snapshot(uri: str, allow_patterns: tuple[str, ...] | list[str] | None = None,
                 error: type[Exception] = AdapterError) -> tuple[Path, str]:
    """``hf://org/name@revision`` -> (the local snapshot directory, the revision), through the hub cache.

    An unpinned ``uri`` raises ``error``; the hub's own errors (network, missing repo or revision) propagate as they
    are, so each caller decides which of them are worth a retry.
    """
    repo, _, revision = uri[len("hf://"):].partition("@")
    if not repo or not revision:
        raise error(f"{uri}: pin a revision, e.g. hf://org/name@<commit sha> (unpinned hub sources are not "
                    "reproducible)")
    from huggingface_hub import snapshot_download

    patterns = list(allow_patterns) if allow_patterns is not None else None
    return Path(snapshot_download(repo_id=repo, revision=revision, allow_patterns=patterns)), revision


def resolve_source(src: str | Path, *, allow_pickle: bool = False) -> Source:
    """Turn a local path or ``hf://org/name@revision`` into a local directory. Files are hashed later, lazily."""
    text = str(src)
    if text.startswith("hf://"):
        patterns = [CONFIG_NAME, SAFETENSORS_NAME] + (list(PICKLE_NAMES) if allow_pickle else [])
        try:
            local, revision = hub_snapshot(text, patterns)
        except AdapterError:
            raise
        except Exception as exc:  # network, auth, missing revision: one clear line, not a hub traceback
            raise AdapterError(f"{text}: could not download from the Hugging Face hub: {exc}") from exc
        repo = text[len("hf://"):].partition("@")[0]
        return Source(name=repo.split("/")[-1], uri=text, path=local, revision=revision)
    path = Path(text).expanduser()
    if not path.exists():
        raise AdapterError(f"{text}: no such adapter directory")
    if path.is_file():  # accept the weights file itself
        path = path.parent
    return Source(name=path.resolve().name, uri=text, path=path, revision=None)


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern/alpha_pattern lookup: the first key whose regex matches the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


@dataclass
class Adapter:
    """One adapter: its config, where its tensors live, and per module (rank, in, out, scale, key_A, key_B)."""

    source: Source
    config: dict
    weights_path: Path
    modules: dict[str, dict]
    pickled: dict | None = None  # tensors of an opted-in pickle checkpoint (read eagerly; no lazy reads there)
    _handle: object = field(default=None, repr=False)  # open safetensors reader, opened on first read

    def __getstate__(self):  # picklable for process-based task runners: the handle is reopened there
        return {**self.__dict__, "_handle": None}

    def tensor(self, key: str) -> torch.Tensor:
        if self.pickled is not None:
            return self.pickled[key]
        try:
            if self._handle is None:
                self._handle = SafetensorsReader(self.weights_path)
            return self._handle.get_tensor(key)
        except Exception as exc:
            raise AdapterError(f"{self.source.name}: {self.weights_path.name}: cannot read tensor {key}: {exc} "
                               "(truncated or corrupt file?)") from exc


_UNMERGED_FEATURES = {
    "use_dora": "DoRA (magnitude vectors are not LoRA factors)",
    "lora_bias": "LoRA bias terms",
}


def _check_config(name: str, config: dict) -> None:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"{name}: peft_type is {peft_type}; only LoRA adapters can be merged")
    for key, what in _UNMERGED_FEATURES.items():
        if config.get(key):
            raise AdapterError(f"{name}: uses {what} ({key}=true), which pico does not merge; refusing rather than "
                               "silently dropping it")
    if config.get("bias", "none") not in (None, "none"):
        raise AdapterError(f"{name}: trains base biases (bias={config['bias']!r}), which pico does not merge; "
                           "refusing rather than silently dropping them")
    if config.get("modules_to_save"):
        raise AdapterError(f"{name}: has modules_to_save={config['modules_to_save']} (fully trained modules), which "
                           "pico does not merge; refusing rather than silently dropping them")


def load_adapter(src: str | Path, *, allow_pickle: bool = False) -> Adapter:
    """Resolve, read the config and the weights header, and index the LoRA pairs. Reads no tensor data."""
    source = resolve_source(src, allow_pickle=allow_pickle)
    name = source.name
    config_path = source.path / CONFIG_NAME
    if not config_path.is_file():
        raise AdapterError(f"{name}: missing {CONFIG_NAME} in {source.path}")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{name}: {CONFIG_NAME} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterError(f"{name}: {CONFIG_NAME} must hold a JSON object")
    _check_config(name, config)
    check_fields(name, config_path, config)
    files = adapter_file_names(source.path)  # [config, weights]
    if len(files) < 2:
        raise AdapterError(f"{name}: no {SAFETENSORS_NAME} in {source.path}")
    source.files = dict.fromkeys(files)  # hashed on first use
    weights_path = source.path / files[1]
    pickled = None
    if weights_path.name == SAFETENSORS_NAME:
        try:
            header = {k: (i["dtype"], i["shape"]) for k, i in read_header(weights_path)[0].items()}
        except ValueError as exc:
            raise AdapterError(f"{name}: {exc}") from exc
    else:
        if not allow_pickle:
            raise AdapterError(f"{name}: only a pickle checkpoint ({weights_path.name}) was found; loading pickles "
                               "can run arbitrary code, so it is refused. Convert it to safetensors, or pass "
                               "--allow-pickle if you trust it")
        try:
            pickled = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise AdapterError(f"{name}: cannot read {weights_path.name}: {exc}") from exc
        header = {k: (str(v.dtype), list(v.shape)) for k, v in pickled.items()}

    pairs: dict[str, dict[str, tuple[str, list[int]]]] = {}
    for key, (dtype, shape) in header.items():
        m = _KEY.match(key)
        if m is None:
            what = "embedding LoRA" if "lora_embedding" in key else "a tensor that is not a LoRA factor"
            raise AdapterError(f"{name}: {key} is {what}; pico merges only lora_A/lora_B pairs of linear layers "
                               "and refuses rather than silently dropping it")
        if len(shape) != 2:
            raise AdapterError(f"{name}: module {m['module']}: {key} has shape {shape}, expected a 2-D factor "
                               "(convolution LoRA is not supported)")
        pairs.setdefault(m["module"], {})[m["which"]] = (key, shape)

    r_default = config.get("r", 8)
    alpha_default = config.get("lora_alpha", r_default)
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    modules = {}
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            missing = ({"A", "B"} - set(pair)).pop()
            raise AdapterError(f"{name}: module {module}: lora_{missing} is missing")
        (key_a, (r_a, n)), (key_b, (m, r_b)) = pair["A"], pair["B"]
        if r_a != r_b:
            raise AdapterError(f"{name}: module {module}: lora_A has rank {r_a} but lora_B has rank {r_b}")
        r_cfg = _pattern_value(rank_pattern, module, r_default)
        if r_cfg != r_a:
            raise AdapterError(f"{name}: module {module}: adapter_config.json says r={r_cfg} but the factors have "
                               f"rank {r_a}")
        alpha = _pattern_value(alpha_pattern, module, alpha_default)
        scale = alpha / math.sqrt(r_a) if rslora else alpha / r_a
        modules[module] = {"rank": r_a, "in": n, "out": m, "scale": scale, "A": key_a, "B": key_b}
    if not modules:
        raise AdapterError(f"{name}: {weights_path.name} holds no LoRA factors")
    return Adapter(source=source, config=config, weights_path=weights_path, modules=modules, pickled=pickled)


def _base_of(adapter: Adapter) -> tuple[str | None, str | None]:
    cfg = adapter.config
    return cfg.get("base_model_name_or_path"), cfg.get("revision")


class AdapterSet:
    """T validated adapters over one base model: the unit every merge works on.

    ``factors(module)`` returns the T (B_t * s_t, A_t) pairs of one module in float32, scale absorbed.
    """

    def __init__(self, adapters: list[Adapter], modules: list[str], skipped: dict[str, list[str]]):
        self.adapters = adapters
        self.modules = modules  # merged modules, sorted
        self.skipped = skipped  # module -> names of adapters that have it, when merging only common modules

    @property
    def sources(self) -> list[Source]:
        return [a.source for a in self.adapters]

    @property
    def names(self) -> list[str]:
        return [a.source.name for a in self.adapters]

    @property
    def base_model(self) -> str | None:
        return _base_of(self.adapters[0])[0]

    @property
    def config(self) -> dict:
        return self.adapters[0].config

    def __len__(self) -> int:
        return len(self.adapters)

    def shape(self, module: str) -> tuple[int, int, tuple[int, ...]]:
        """(out, in, ranks) of a module: the key modules are batched on."""
        info = [a.modules[module] for a in self.adapters]
        return info[0]["out"], info[0]["in"], tuple(i["rank"] for i in info)

    def factors(self, module: str, check: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The T (B_t, A_t) pairs of a module, float32, with each adapter's scale absorbed into B.

        ``check=False`` skips the per-tensor NaN/Inf check, for callers that check a whole batch in one pass and
        call again with the check to name the culprit when that fails (pico/factored.py).
        """
        out = []
        for adapter in self.adapters:
            info = adapter.modules[module]
            pair = []
            for which in ("B", "A"):
                tensor = adapter.tensor(info[which])
                if check and not torch.isfinite(tensor).all():
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise AdapterError(f"{adapter.source.name}: module {module}: lora_{which} has {bad} NaN/Inf "
                                       "values")
                pair.append(tensor.to(torch.float32))
            b, a = pair
            out.append((b * info["scale"] if info["scale"] != 1 else b, a))
        return out

    def hash_sources(self) -> None:
        """Compute the sha256 of every source file not hashed yet: on several threads where the machine has cores
        to spare (one per four cores; hashlib releases the GIL), else one after the other."""
        todo = [(a.source, name) for a in self.adapters for name, digest in a.source.files.items() if digest is None]
        workers = min(len(todo), max(1, (os.cpu_count() or 1) // 4))
        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="pico-hash") as pool:
                digests = list(pool.map(lambda item: sha256_file(item[0].path / item[1]), todo))
            for (source, name), digest in zip(todo, digests):
                source.files[name] = digest
        for adapter in self.adapters:
            adapter.source.hash_files()


def load_adapters(sources: list[str | Path], *, common_modules_only: bool = False,
                  allow_pickle: bool = False) -> AdapterSet:
    """Load and validate adapters for merging. Everything checkable without tensor data is checked here.

    Raises :class:`AdapterError` naming the adapter, the module and the problem: different base models, different
    target modules (unless ``common_modules_only``), shape mismatches, unmerged features (DoRA, LoRA bias,
    modules_to_save), corrupt files, missing configs, pickle checkpoints without ``allow_pickle``.
    """
    if not sources:
        raise AdapterError("no adapters given")
    adapters = [load_adapter(s, allow_pickle=allow_pickle) for s in sources]
    names = [a.source.name for a in adapters]
    if len(set(names)) != len(names):  # disambiguate same-named directories by position
        for i, a in enumerate(adapters):
            a.source.name = f"{i}:{a.source.name}"

    first = adapters[0]
    for a in adapters[1:]:
        if _base_of(a) != _base_of(first):
            raise AdapterError(f"{a.source.name}: trained on base model {_base_of(a)[0]!r} "
                               f"(revision {_base_of(a)[1]}), but {first.source.name} on {_base_of(first)[0]!r} "
                               f"(revision {_base_of(first)[1]}); adapters of different base models cannot be merged")
        if bool(a.config.get("fan_in_fan_out")) != bool(first.config.get("fan_in_fan_out")):
            raise AdapterError(f"{a.source.name}: fan_in_fan_out differs from {first.source.name}")

    all_modules = sorted(set().union(*(a.modules for a in adapters)))
    common = [m for m in all_modules if all(m in a.modules for a in adapters)]
    skipped = {m: [a.source.name for a in adapters if m in a.modules] for m in all_modules if m not in common}
    if skipped and not common_modules_only:
        module, holders = next(iter(skipped.items()))
        lacking = [a.source.name for a in adapters if module not in a.modules]
        raise AdapterError(f"adapters target different modules: {module} is in {', '.join(holders)} but not in "
                           f"{', '.join(lacking)} ({len(skipped)} module(s) differ). Pass --common-modules to merge "
                           "only the modules all adapters share")
    if not common:
        raise AdapterError("the adapters share no target module")
    for module in common:
        ref = first.modules[module]
        for a in adapters[1:]:
            info = a.modules[module]
            if (info["out"], info["in"]) != (ref["out"], ref["in"]):
                raise AdapterError(f"{a.source.name}: module {module}: delta shape {info['out']}x{info['in']} does "
                                   f"not match {first.source.name}'s {ref['out']}x{ref['in']}")
    return AdapterSet(adapters, common, skipped)
