"""`pico lineage MODEL [VERSION|ALIAS]`: the command-line shim of the pipeline's lineage walk (tasks/audit.py).

pico stays a pure library: nothing here imports MLflow, DVC or Prefect; the walk itself is imported only when the
command runs, and a clear error says what to install when the pipeline extras are missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

HELP = "walk a registered merge back to its sources and recipe; recompute every hash from MLflow and DVC"


def add_lineage_parser(sub) -> None:
    p = sub.add_parser("lineage", help=HELP, description=HELP + "; say plainly whether everything still matches "
                       "(exit 0 all match, 1 a mismatch, 2 an error)")
    p.add_argument("model", nargs="?", help="registered model name (default: params.yaml pipeline.mlflow.model_name)")
    p.add_argument("ref", nargs="?", default="champion", help="version number or alias (default: champion)")
    p.add_argument("--project", default=".", help="project directory holding params.yaml (default: .)")
    p.add_argument("--params", default="params.yaml")


def cmd_lineage(args: argparse.Namespace) -> int:
    missing = [m for m in ("mlflow", "yaml") if importlib.util.find_spec(m) is None]
    if missing or importlib.util.find_spec("tasks.audit") is None:
        print("pico lineage: error: needs the pipeline (tasks/) and its extras: pip install -e '.[pipeline]'"
              + (f" (missing: {', '.join(missing)})" if missing else ""), file=sys.stderr)
        return 2
    from tasks.audit import main

    argv = [a for a in (args.model, args.ref) if a] + ["--project", args.project, "--params", args.params]
    return main(argv)
