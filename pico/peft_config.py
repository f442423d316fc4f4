"""adapter_config.json checked against an allow-list of PEFT ``LoraConfig`` fields.

A field listed in ``UNDERSTOOD`` is understood: pico reads it, or it does not change what the saved factors mean
(which modules were adapted is read from the weights file itself); a tuple lists the only values accepted. Every
other field must be unset (None) or at the default of the installed PEFT's ``LoraConfig``, so a field a newer PEFT
adds is refused by name until it is understood here, instead of being merged without a word and silently dropped
from the merged adapter (``layer_replication``, ``alora_invocation_tokens``, ``target_parameters``, ...).

PEFT is imported only when such a field has a value: importing it costs about 4 s of CPU on top of pico's 1.6 s
(measured on the 2-core Intel(R) Xeon(R) Processor box, load average ~12), so a normal adapter never pays for it.
tests/test_registries.py checks the table against the installed PEFT (every listed field exists, its default is
accepted, and every unlisted field defaults to None).
"""

from __future__ import annotations

from pathlib import Path

from .errors import AdapterError

UNDERSTOOD: dict[str, tuple | None] = {
    **dict.fromkeys(("peft_type", "r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "fan_in_fan_out",
                     "base_model_name_or_path", "revision", "task_type"), None),  # read by pico
    **dict.fromkeys(("use_dora", "lora_bias", "bias", "modules_to_save"), None),  # refused when set (adapters._check_config)
    **dict.fromkeys(("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern"), None),
    **dict.fromkeys(("lora_dropout", "inference_mode", "auto_mapping", "peft_version"), None),  # training/bookkeeping
    "megatron_core": None,  # read only with megatron_config
    "qalora_group_size": None,  # read only with use_qalora
    # initialisations that leave the base model as it was (PiSSA, OLoRA, LoftQ, CorDA change it unless converted)
    "init_lora_weights": (True, False, "gaussian", "eva"),
    "megatron_config": (None,),
    "use_qalora": (False,),
    "loftq_config": ({}, None),
    "ensure_weight_tying": (False,),
}


def _peft_defaults() -> tuple[str, dict]:
    """(PEFT's version, {field: default}) of the installed PEFT's LoraConfig."""
    import dataclasses

    import peft

    defaults = {}
    for f in dataclasses.fields(peft.LoraConfig):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return peft.__version__, defaults


def check_fields(name: str, config_path: Path, config: dict) -> None:
    """Refuse, naming the file and the field, any field pico does not understand that is off PEFT's default."""
    peft_defaults = None
    for key, value in config.items():
        if key in UNDERSTOOD:
            allowed = UNDERSTOOD[key]
            if allowed is not None and not any(value == a and type(value) is type(a) for a in allowed):
                raise AdapterError(f"{name}: {config_path}: {key}={value!r}; pico merges only adapters with {key} in "
                                   f"{', '.join(map(repr, allowed))}, and refuses rather than silently dropping what "
                                   "it means")
            continue
        if value is None:
            continue
        peft_defaults = peft_defaults or _peft_defaults()
        version, defaults = peft_defaults
        if key not in defaults:
            raise AdapterError(f"{name}: {config_path}: {key}={value!r} is not a field of PEFT {version}'s LoraConfig; "
                               "pico does not know what it means and refuses rather than silently dropping it")
        if value != defaults[key]:
            raise AdapterError(f"{name}: {config_path}: {key}={value!r} (PEFT's default: {defaults[key]!r}) is not "
                               "understood by pico, which refuses rather than silently dropping what it means")
