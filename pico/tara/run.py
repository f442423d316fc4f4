"""TARA end to end: train, then write the merged adapter, its manifest and the loss-curve plot."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Sequence

import torch

from .._version import __version__
from ..adapters import AdapterSet, load_adapters
from ..errors import OutputExistsError
from ..output import AdapterWriter, Reporter, natural_key, round_sig
from ..writer import json_digest
from .config import TaraConfig
from .inputs import hash_dir_files
from .objective import aggregate
from .train import TaraResult, TaraTrainer, prepare, train

PLOT_NAME = "loss_curve.png"


def tara_key(manifest: dict) -> str:
    """The merge key of a TARA output: everything that decides its bytes (sources, base files, prompts, recipe,
    pico's version), so other prompts give another key."""
    return json_digest({"sources": [s["sha256"] for s in manifest["sources"]],
                        "base": manifest["base_model"]["files"], "inputs": [x["sha256"] for x in manifest["inputs"]],
                        "recipe": manifest["recipe_hash"], "pico": manifest["pico_version"]})


def plot_loss_curve(result: TaraResult, names: list[str], path: Path, title: str,
                    ylabel: str = "entropy - own adapter's entropy (nats)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in result.curve]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    ax1.plot(steps, [p["loss"] for p in result.curve], color="black", lw=1)
    ax1.set_xlabel("step")
    ax1.set_ylabel("pseudo-loss (batch)")
    ax1.set_title(title)
    for t, name in enumerate(names):
        ax2.plot(steps, [p["scores"][t] for p in result.curve], lw=1, label=name)
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.set_xlabel("step")
    ax2.set_ylabel(ylabel)
    ax2.set_title("per-task score")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def write_tara(trainer: TaraTrainer, result: TaraResult, aset: AdapterSet, base: str | Path, out: str | Path, *,
               overwrite: bool = False, dtype: torch.dtype = torch.float32, plot: bool = True,
               base_files: dict | None = None) -> dict:
    """Write the merged PEFT adapter, merge_manifest.json and loss_curve.png atomically; return the manifest."""
    cfg = trainer.config
    modules = sorted(result.layers, key=natural_key)
    factors = {m: result.layers[m].merged_factors() for m in modules}
    plan = [(m, a.shape[0], b.shape[0], a.shape[1]) for m, (b, a) in factors.items()]
    aset.hash_sources()
    if base_files is None:
        base_files = {}
        hash_dir_files(Path(base), base_files)
    with AdapterWriter(out, aset, plan, dtype=dtype, overwrite=overwrite) as w:
        for m, (b, a) in factors.items():
            w.write(m, b, a)
        config = w.close()
        extra, plot_error = (), None
        if plot and result.curve:
            try:
                ylabel = ("entropy - own adapter's entropy (nats)" if cfg.objective == "entropy" else
                          f"teacher {cfg.teacher_loss} per reply token" + (" / at init" if cfg.balance == "init"
                                                                           else ""))
                plot_loss_curve(result, aset.names, w.dir / PLOT_NAME, f"{cfg.variant}, {cfg.objective}, "
                                f"{cfg.init or 'calibrate=' + cfg.calibrate}", ylabel)
                extra = (PLOT_NAME,)
            except ImportError as exc:  # matplotlib is optional (pico-merge[plot])
                plot_error = f"no plot: {exc}"
        recipe = {"method": cfg.variant, **cfg.to_dict()}
        scores = {k: torch.tensor(v) for k, v in (("init", result.full_scores_init),
                                                  ("final", result.full_scores_final)) if v}  # final: unless skipped
        pref = trainer.preference.cpu()
        if cfg.objective == "teacher":
            baselines = {"teacher": {name: {"replies_sha256": x.digest(), "mean_reply_tokens": round(x.mean_length(), 3),
                                            "cache_key": x.key, "loss_at_init": round_sig(torch.tensor(b))}
                                     for name, x, b in zip(aset.names, trainer.teacher, result.baselines)}}
        else:
            baselines = {"entropy": dict(zip(aset.names, round_sig(torch.tensor(result.baselines)))),
                         "positions": cfg.positions}
        manifest = {
            "pico_version": __version__,
            "method": cfg.variant,
            "base_model": {"name_or_path": config["base_model_name_or_path"], "revision": config["revision"],
                           "path": str(base), "files": base_files},
            "sources": [s.to_dict() for s in aset.sources],
            "inputs": [{"adapter": name, "origin": x.origin, "sha256": x.sha256, "n": len(x.ids)}
                       for name, x in zip(aset.names, trainer.inputs)],
            "recipe": recipe,
            "recipe_hash": json_digest(recipe),
            "skipped_modules": aset.skipped,
            "baselines": baselines,
            "training": {
                "steps": len(result.curve),
                "steps_per_epoch": trainer.steps_per_epoch(),
                "coefficients": sum(p.numel() for layer in result.layers.values() for p in layer.trainable()),
                **{f"scores_all_inputs_{k}": dict(zip(aset.names, round_sig(v))) for k, v in scores.items()},
                **{f"loss_all_inputs_{k}": round_sig(aggregate(v, pref, cfg.loss, cfg.mu)) for k, v in scores.items()},
                "loss": [round_sig(torch.tensor(p["loss"])) for p in result.curve],
                "scores": {name: [round_sig(torch.tensor(p["scores"][t])) for p in result.curve]
                           for t, name in enumerate(aset.names)},
            },
            "output": {**w.output(extra), "plot": plot_error},
            "layers": {m: {"rank": w.ranks[m], "coefficients": _round(result.layers[m].coefficients())}
                       for m in modules},
        }
        manifest["key"] = tara_key(manifest)
        return w.write_manifest(manifest)


def _round(x):
    """Nested lists of coefficients rounded like :func:`pico.output.round_sig` (6 significant digits)."""
    if isinstance(x, list):
        return [_round(v) for v in x]
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return float(f"{x:.6g}")


def tara_merge(base: str | Path, sources: AdapterSet | Sequence[str | Path], inputs: Sequence, out: str | Path,
               config: TaraConfig | None = None, *, tokenizer=None, device: str = "auto",
               model_dtype: str = "float32", dtype: torch.dtype = torch.float32, overwrite: bool = False,
               progress: bool | Reporter = True, plot: bool = True, common_modules_only: bool = False,
               cache_dir: str | Path | None = None) -> dict:
    """TARA end to end: learn the coefficients and write one PEFT adapter + manifest + loss-curve plot to ``out``.

    ``inputs`` has one item per adapter (a JSONL path with "prompt"/"messages"/"text"/"input_ids" rows, or a list
    of prompts or token id lists). ``cache_dir``: where the teacher objective keeps its replies (None: not kept).
    Deterministic with ``config.seed`` on one machine; atomic. Returns the manifest, with the seconds spent
    (``seconds``, ``seconds_teacher``: returned only, the written manifest stays byte-deterministic).
    """
    aset = sources if isinstance(sources, AdapterSet) else load_adapters(list(sources),
                                                                          common_modules_only=common_modules_only)
    out = Path(out)
    if out.exists() and not overwrite:  # fail before the training, not after
        raise OutputExistsError(f"{out} already exists; pass --force to replace it")
    base_files: dict = {}
    hasher = threading.Thread(target=lambda: (aset.hash_sources(), hash_dir_files(Path(base), base_files)),
                              daemon=True)  # hashes the inputs while TARA trains
    hasher.start()
    t0 = time.perf_counter()
    config = config or TaraConfig()
    if config.objective == "teacher":  # the teacher cache key needs the base's digest first
        hasher.join()
    trainer = prepare(base, aset, inputs, config, tokenizer=tokenizer, device=device, model_dtype=model_dtype,
                      progress=progress, cache_dir=cache_dir,
                      base_digest=json_digest(base_files) if base_files else None)
    t1 = time.perf_counter()
    result = train(trainer, progress=progress)
    seconds = time.perf_counter() - t0
    hasher.join()
    manifest = write_tara(trainer, result, aset, base, out, overwrite=overwrite, dtype=dtype, plot=plot,
                          base_files=base_files)
    manifest["seconds"] = seconds  # returned only: the written manifest stays byte-deterministic
    manifest["seconds_prepare"], manifest["seconds_train"] = t1 - t0, seconds - (t1 - t0)
    return manifest
