"""Streaming, deterministic, atomic output: a PEFT adapter directory written module by module.

safetensors wants its JSON header (with every tensor's offsets) before the data. Rather than holding the whole merged
adapter in memory, the header space is reserved up front from an upper bound computed from the planned keys and
their largest possible shapes; tensors are appended as they are computed, and the real header is written into the
reserved space at the end, padded with spaces (which the format allows). Same plan + same tensors = same bytes.
When the plan is exact (a core-space merge), that header is known at the start, so it is written first and the
file's sha256 for the manifest is computed while the bytes go out instead of reading 1+ GB back afterwards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import shutil
import threading
from pathlib import Path

import torch

from .errors import OutputExistsError

DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}
_BIG = 10**20 - 1  # no offset needs more digits than this


class SafetensorsStreamWriter:
    """Write a safetensors file tensor by tensor (see the module docstring).

    When the tensors arrive exactly as planned (same keys, order and shapes: a core-space merge always), the final
    header is known at the start: it is written first and the file's sha256 is computed as the bytes go out
    (``sha256`` after ``close``), so nothing has to read the file back; the hashing runs on its own thread
    (``StreamHash``), overlapping the writes. Otherwise ``sha256`` is None and the header is rewritten at the end;
    the bytes are the same either way. Every ``FLUSH_BYTES`` written, a background thread starts an fdatasync, so
    the disk writes overlap the computation instead of all waiting for the final fsync.

    A written tensor's bytes are hashed after ``write`` returns: do not modify it before ``close``.
    """

    FLUSH_BYTES = 256 << 20

    def __init__(self, path: Path, plan: list[tuple[str, tuple[int, int]]], dtype: torch.dtype,
                 metadata: dict[str, str] | None = None):
        self.path, self.dtype, self.metadata = Path(path), dtype, metadata or {"format": "pt"}
        self.entries: dict[str, dict] = {}
        bound = {"__metadata__": self.metadata}
        for key, shape in plan:
            bound[key] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [_BIG, _BIG]}
        n = len(json.dumps(bound, separators=(",", ":")).encode())
        self.header_len = n + (-(8 + n) % 8)  # data starts 8-byte aligned
        self.plan = [(key, list(shape)) for key, shape in plan]
        predicted, offset, itemsize = {}, 0, torch.empty(0, dtype=dtype).element_size()
        for key, shape in self.plan:
            size = math.prod(shape) * itemsize
            predicted[key] = {"dtype": DTYPES[dtype], "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        self._predicted = self._header_bytes(predicted)
        self.file = open(self.path, "wb")
        self.file.write(self._predicted)
        self._hash: StreamHash | None = StreamHash(self._predicted)
        self.sha256: str | None = None
        self.offset = 0
        self._unflushed = 0
        self._flusher: threading.Thread | None = None

    def _header_bytes(self, entries: dict) -> bytes:
        text = json.dumps({"__metadata__": self.metadata, **entries}, separators=(",", ":")).encode()
        if len(text) > self.header_len:  # cannot happen unless the plan was wrong
            raise RuntimeError(f"safetensors header ({len(text)} B) exceeds its reservation ({self.header_len} B)")
        return self.header_len.to_bytes(8, "little") + text + b" " * (self.header_len - len(text))

    def write(self, key: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().to("cpu", self.dtype).contiguous()
        raw = data.view(torch.uint8).numpy() if data.numel() else b""
        self.file.write(raw)
        if self._hash is not None:
            i = len(self.entries)
            if i < len(self.plan) and self.plan[i] == (key, list(data.shape)):
                self._hash.update(raw)
            else:  # off plan: the header is rewritten at the end and the caller hashes the file
                self._hash.stop()
                self._hash = None
        size = data.numel() * data.element_size()
        self.entries[key] = {"dtype": DTYPES[self.dtype], "shape": list(data.shape),
                             "data_offsets": [self.offset, self.offset + size]}
        self.offset += size
        self._unflushed += size
        if self._unflushed >= self.FLUSH_BYTES and (self._flusher is None or not self._flusher.is_alive()):
            self.file.flush()
            self._flusher = threading.Thread(target=os.fdatasync, args=(self.file.fileno(),), daemon=True)
            self._flusher.start()
            self._unflushed = 0

    def close(self) -> None:
        self._join_flusher()
        header = self._header_bytes(self.entries)
        if header != self._predicted:  # equal bytes: every planned tensor written, in order, with its shape
            self._stop_hash()
            self.file.seek(0)
            self.file.write(header)
        self.file.close()
        self.sha256 = self._hash.hexdigest() if self._hash is not None else None

    def __enter__(self) -> SafetensorsStreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb):
        """Close the finished file; on an error (or when close itself fails), just release it."""
        if exc_type is None and not self.file.closed:
            try:
                self.close()
            finally:
                self.abort()
        else:
            self.abort()
        return False

    def abort(self) -> None:
        self._join_flusher()
        self._stop_hash()
        if not self.file.closed:
            self.file.close()

    def _stop_hash(self) -> None:
        if self._hash is not None and self.sha256 is None:
            self._hash.stop()
            self._hash = None

    def _join_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None


class StreamHash:
    """sha256 of a stream of buffers, computed on its own thread in arrival order (hashlib releases the GIL on
    large buffers), so that hashing a file as it is written overlaps the writing. ``update`` keeps a reference to
    the buffer until it is hashed; at most ``DEPTH`` wait, beyond that ``update`` blocks."""

    DEPTH = 32

    def __init__(self, first: bytes = b""):
        self._sha = hashlib.sha256(first)
        self._queue: queue.Queue = queue.Queue(maxsize=self.DEPTH)
        self._digest: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="pico-sha256")
        self._thread.start()

    def _run(self) -> None:
        while (buf := self._queue.get()) is not None:
            self._sha.update(buf)

    def update(self, buf) -> None:
        self._queue.put(buf)

    def hexdigest(self) -> str:
        """Wait for every buffer and return the digest (no update after this)."""
        if self._digest is None:
            self.stop()
            self._digest = self._sha.hexdigest()
        return self._digest

    def stop(self) -> None:
        """End the thread after the buffers already queued."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


class AtomicDir:
    """Build a directory under a temporary name beside ``target``, then move it into place in one rename.

    On any error the temporary directory is removed and ``target`` is untouched; an existing ``target`` is replaced
    only with ``overwrite`` (and only once the new one is complete).
    """

    def __init__(self, target: Path, overwrite: bool = False):
        self.target = Path(target)
        self.overwrite = overwrite
        self.tmp = self.target.parent / f".{self.target.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        if self.target.exists() and not self.overwrite:
            raise OutputExistsError(f"{self.target} already exists; pass --force to replace it")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        for f in self.tmp.iterdir():  # data reaches the disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
            os.rename(self.target, old)
        os.rename(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def json_digest(obj) -> str:
    """sha256 of a JSON-able object with sorted keys (non-JSON values as str): recipe hashes and content keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
