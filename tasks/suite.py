"""The main command's one-off build: the DVC stages producing the catalog's ``dvc://`` sources and the scorer's
inputs (the skills suite: data, base, adapters), run with ``dvc repro`` when any is missing."""

from __future__ import annotations

import subprocess
import sys

from . import benchmark, dvcio
from .config import Settings


def missing_inputs(settings: Settings) -> list[str]:
    """Project-relative paths the night needs that are not there yet."""
    cat = settings.catalog
    entries = cat.adapters + cat.baselines + ([cat.base] if cat.base else [])
    wanted = [e.source[len("dvc://"):].partition("@")[0] for e in entries
              if e.source.startswith("dvc://") and "@" not in e.source]
    need = [p for p in wanted if not (settings.project / p).exists()]
    for p in benchmark.scorer_inputs(settings):
        if not p.exists():
            try:
                need.append(str(p.relative_to(settings.project)))
            except ValueError:
                need.append(str(p))
    return need


def ensure_suite(settings: Settings) -> None:
    """Build (with `dvc repro`) the DVC stages that produce what the night reads, when any of it is missing."""
    need = missing_inputs(settings)
    if not need:
        return
    listing = dvcio.dvc_cmd(settings.project, "stage", "list")
    stages = set()
    for line in listing.splitlines():
        name, _, rest = line.partition(" ")
        outs = [o.strip() for o in rest.strip().removeprefix("Outputs").split(",") if o.strip()]
        for p in need:
            if any(p == o or p.startswith(o.rstrip("/") + "/") for o in outs):
                stages.add(name)
    if not stages:
        raise SystemExit(f"missing {', '.join(need)} and no DVC stage produces it; build the suite first")
    print(f"building the skills suite: dvc repro {' '.join(sorted(stages))} (one-off, minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "dvc", "repro", *sorted(stages)], cwd=settings.project, check=True,
                   env=dvcio.venv_env())
