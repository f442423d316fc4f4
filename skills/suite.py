"""Build the suite with DVC from Python or the command line, with this interpreter's venv on PATH.

    python -m skills.suite build      # dvc repro of the suite stages (cached: a second run rebuilds nothing)
    python -m skills.suite status     # dvc status
    python -m skills.suite push|pull  # to / from the default DVC remote (build/dvc-remote, see .dvc/config)

The stages in dvc.yaml call `python -m skills.<stage>`; this wrapper puts the directory of the running interpreter
first on PATH so `python` is the project's venv even when it is not activated.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from skills.config import REPO_ROOT

STAGES = ("suite_data", "suite_base", "suite_adapter")


def _env() -> dict:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "dvc"
    cmd = [str(exe) if exe.exists() else (shutil.which("dvc") or "dvc"), *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), check=check)


def build(force: bool = False) -> float:
    """`dvc repro` of every suite stage; returns the wall time in seconds."""
    t0 = time.time()
    # foreach stages are named suite_adapter@<name>: address them all with one glob
    dvc("repro", *(["--force"] if force else []), "--glob", *[f"{stage}*" for stage in STAGES])
    return time.time() - t0


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[0] if argv else "build"
    if cmd == "build":
        sec = build(force="--force" in argv)
        print(f"suite build: {sec:.1f} s")
    elif cmd in ("status", "push", "pull"):
        dvc(cmd, *argv[1:])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
