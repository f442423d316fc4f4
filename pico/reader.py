"""Reading safetensors without mmap: one header parser (validated against the file size) and a pread reader."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


class SafetensorsReader:
    """Reads single tensors of a safetensors file with positional reads (pread) into fresh buffers.

    Not safetensors' mmap: pages of a mapped file stay in the process's resident set once touched, so streaming a
    merge through mmap grows RSS to the whole input size. A pread copies only the tensor asked for; the kernel's
    page cache still serves repeated reads. Thread-safe (positional reads on one descriptor).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries, self.base = read_header(self.path)
        self.file = open(self.path, "rb", buffering=0)

    def get_tensor(self, key: str) -> torch.Tensor:
        info = self.entries[key]
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:  # exotic dtypes (fp8, ...): let safetensors decode them
            from safetensors import safe_open

            with safe_open(self.path, framework="pt") as f:
                return f.get_tensor(key).clone()
        start, stop = info["data_offsets"]
        shape = list(info["shape"])
        nbytes = stop - start
        if nbytes != math.prod(shape) * torch.empty((), dtype=dtype).element_size():
            raise ValueError(f"{key}: {nbytes} bytes do not hold a {info['dtype']} tensor of shape {shape}")
        buf = torch.empty(nbytes, dtype=torch.uint8)
        view, done = memoryview(buf.numpy()), 0
        while done < nbytes:
            got = os.preadv(self.file.fileno(), [view[done:]], self.base + start + done)
            if got <= 0:
                raise ValueError(f"{key}: file ends after {done} of {nbytes} bytes")
            done += got
        return buf.view(dtype).view(shape)

    def __del__(self):
        file = getattr(self, "file", None)
        if file is not None:
            file.close()


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """Parse a safetensors header without reading data: (key -> {"dtype", "shape", "data_offsets"}, where the data
    starts). Validates the entries and their offsets against the file size."""
    size = path.stat().st_size
    err = f"{path.name}: truncated or corrupt safetensors file"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{err} (only {size} bytes)")
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            raise ValueError(f"{err} (header length {n} does not fit in {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{err} (header is not JSON: {exc})") from exc
    header.pop("__metadata__", None)
    end = 8 + n
    data_len = 0
    for key, info in header.items():
        try:
            _, stop = info["data_offsets"]
            info["dtype"], info["shape"] = str(info["dtype"]), list(info["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{err} (bad header entry for {key})") from exc
        data_len = max(data_len, stop)
    if end + data_len > size:
        raise ValueError(f"{err} (data needs {end + data_len} bytes, file has {size})")
    return header, end
