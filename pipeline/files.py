"""Files the pipeline writes beside pico's adapters: one atomic temp-then-rename writer, and the cross-process lock.

A reader never sees half a file (a cache record, metrics.json): the text goes to a temporary file named after this
process and thread, then one rename puts it in place. Directories go through pico's ``AtomicDir``.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a concurrent writer of the same content is harmless)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_json(path: Path, obj) -> Path:
    """A JSON record (sorted keys, indent 1: the cache records' format), atomically."""
    return write_text(path, json.dumps(obj, indent=1, sort_keys=True))


@contextmanager
def project_lock(work: Path, name: str = "dvc", timeout: float = 900):
    """A cross-process lock (flock) under the work folder: serialises DVC writes, registry moves and the merge
    store's writers on one host."""
    lock_dir = Path(work) / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f"{name}.lock"), timeout=timeout):
        yield
