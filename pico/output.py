"""One PEFT adapter directory out, for every producer (a merge, TARA): plan -> atomic directory -> streamed
safetensors -> adapter_config.json -> merge_manifest.json, and the small helpers the manifests share."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .adapters import CONFIG_NAME, SAFETENSORS_NAME, AdapterSet
from .writer import AtomicDir, SafetensorsStreamWriter, sha256_file, write_json

MANIFEST_NAME = "merge_manifest.json"


def natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def peft_key(module: str, which: str) -> str:
    return f"base_model.model.{module}.lora_{which}.weight"


def round_sig(x: torch.Tensor):
    """Diagnostics as plain floats rounded to 6 significant digits: small manifests that read well and stay
    byte-stable. A 0-d tensor gives a float, a 1-d one a list (each value is ``float(f"{v:.6g}")``)."""
    return round_sig_array(x.detach().cpu().double().numpy()).tolist()


def round_sig_rows(x: torch.Tensor) -> list:
    """``[round_sig(x[i]) for i in range(len(x))]`` in one vectorised pass (the per-module manifest entries of a
    batch)."""
    return round_sig(x)


_POW10 = np.array([float(10**i) for i in range(23)])  # exactly representable powers of ten
_SIG = 6


def round_sig_array(x: np.ndarray) -> np.ndarray:
    """Every value rounded to 6 significant digits exactly as ``float(f"{v:.6g}")`` rounds it, vectorised.

    With k = 5 - floor(log10|v|), ``q = rint(v 10^k)`` is the 6-digit decimal mantissa, and ``q / 10^k`` (or
    ``q * 10^-k``) is a single correctly rounded operation on exact operands (q < 2^53, 10^|k| exact for |k| <= 22):
    the double nearest to the decimal, which is what ``float()`` of the formatted string returns. The only inexact
    step is v 10^k itself (error < 2.4e-10 at |v 10^k| < 1e6); values whose rounding that error could flip (within
    1e-9 of a half-integer), whose digit count is off at a power of ten, zeros, non-finite values, and magnitudes
    below 1e-17 or from 1e28 take the string route, so the result is the same bits for every input
    (tests/pico/test_writer.py compares both on random and adversarial inputs).
    """
    x = np.asarray(x, dtype=np.float64)
    out = x.copy()
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    a = np.abs(flat_x)
    with np.errstate(all="ignore"):
        e = np.floor(np.log10(np.where(a > 0, a, 1.0)))
        k = (_SIG - 1) - np.nan_to_num(e, nan=0.0, posinf=99.0, neginf=-99.0)
        k = np.clip(k, -99, 99).astype(np.int64)
        ok = np.isfinite(flat_x) & (a > 0) & (np.abs(k) <= 22)
        p = _POW10[np.where(ok, np.abs(k), 0)]
        up = k >= 0
        y = np.where(up, flat_x * p, flat_x / p)
        ay = np.abs(y)
        frac = ay - np.floor(ay)
        ok &= (ay >= 100000.001) & (ay < 999999.999) & (np.abs(frac - 0.5) > 1e-9)
        q = np.rint(y)
        flat_out[ok] = np.where(up, q / p, q * p)[ok]
    for i in np.flatnonzero(~ok & (flat_x != 0)).tolist():  # rare: the string route (zeros are already exact)
        flat_out[i] = float(f"{flat_x[i]:.6g}")
    return out


Reporter = Callable[[str, int, int, str], None]  # (what, done, total, unit): a progress line for a log


def progress(total: int, enabled: bool | Reporter, desc: str, unit: str = "module"):
    """A tqdm bar (hidden when disabled or when stderr is not a terminal); ``enabled`` may instead be a reporter
    ``(what, done, total, unit)``, called at the start and after each update: the lines a log shows where no bar can
    (a scheduler's task, a file)."""
    if callable(enabled):
        return _Reported(total, enabled, desc, unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled else True, leave=False)


class _Reported:
    """The part of tqdm's interface the producers use, reporting to a callable instead of drawing a bar."""

    def __init__(self, total: int, report: Reporter, desc: str, unit: str):
        self.total, self.report, self.desc, self.unit, self.n, self.postfix = total, report, desc, unit, 0, ""
        report(desc, 0, total, unit)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.report(self.desc + (f" ({self.postfix})" if self.postfix else ""), self.n, self.total, self.unit)

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in kw.items())

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def adapter_config(aset: AdapterSet, ranks: dict[str, int]) -> dict:
    """A LoRA config with scale 1 everywhere (lora_alpha = r), exact per-module ranks through rank_pattern."""
    common = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(m): r for m, r in sorted(ranks.items()) if r != common}
    src = aset.config
    return {
        "peft_type": "LORA",
        "task_type": src.get("task_type"),
        "base_model_name_or_path": src.get("base_model_name_or_path"),
        "revision": src.get("revision"),
        "r": common,
        "lora_alpha": common,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks, key=natural_key),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": bool(src.get("fan_in_fan_out", False)),
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }


class AdapterWriter:
    """Write one PEFT adapter directory atomically, module by module::

        with AdapterWriter(out, aset, plan, dtype=dtype) as w:
            for module, b, a in results:
                w.write(module, b, a)
            config = w.close()              # the safetensors file is complete; adapter_config.json written
            ...                             # extra files into w.dir
            w.write_manifest({..., "output": w.output(extra)})

    ``plan`` lists (module, rank bound, out, in) in writing order: the safetensors header is reserved from it (an exact
    plan also lets the file's sha256 be computed as it is written). Leaving the block by an exception aborts: nothing
    appears at ``out``; leaving it normally moves the finished directory into place in one rename.
    """

    def __init__(self, out: str | Path, aset: AdapterSet, plan: list[tuple[str, int, int, int]], *,
                 dtype: torch.dtype = torch.float32, overwrite: bool = False):
        self.aset, self.dtype = aset, dtype
        self._plan = [item for module, k, m, n in plan
                      for item in ((peft_key(module, "A"), (k, n)), (peft_key(module, "B"), (m, k)))]
        self._atomic = AtomicDir(Path(out), overwrite=overwrite)
        self.ranks: dict[str, int] = {}
        self.dir: Path | None = None
        self._stream: SafetensorsStreamWriter | None = None

    def __enter__(self) -> AdapterWriter:
        self.dir = self._atomic.__enter__()
        try:
            self._stream = SafetensorsStreamWriter(self.dir / SAFETENSORS_NAME, self._plan, self.dtype)
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def write(self, module: str, b: torch.Tensor, a: torch.Tensor) -> None:
        """One module's merged factors, B (out, k) and A (k, n)."""
        self._stream.write(peft_key(module, "A"), a)
        self._stream.write(peft_key(module, "B"), b)
        self.ranks[module] = a.shape[0]

    def close(self) -> dict:
        """Finish the safetensors file and write adapter_config.json; returns that config."""
        self._stream.close()
        self.config = adapter_config(self.aset, self.ranks)
        write_json(self.dir / CONFIG_NAME, self.config)
        return self.config

    def output(self, extra_files: tuple[str, ...] = ()) -> dict:
        """The manifest's "output" entry: sha256 of every written file, dtype, module count, largest rank."""
        files = {SAFETENSORS_NAME: self._stream.sha256 or sha256_file(self.dir / SAFETENSORS_NAME)}
        files.update({name: sha256_file(self.dir / name) for name in (CONFIG_NAME, *extra_files)})
        return {"files": files, "dtype": str(self.dtype).removeprefix("torch."), "modules": len(self.ranks),
                "max_rank": max(self.ranks.values())}

    def write_manifest(self, manifest: dict) -> dict:
        write_json(self.dir / MANIFEST_NAME, manifest)
        return manifest

    def __exit__(self, exc_type, exc, tb):
        if self._stream is not None:
            self._stream.abort()  # no-op after close; on an error, closes the half-written file
        return self._atomic.__exit__(exc_type, exc, tb)
