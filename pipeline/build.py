"""The one suite builder (the main command's one-off build; ``python -m flows.nightly --build-only``): the DVC stages
producing the catalog's ``dvc://`` sources and the scorer's inputs (the skills suite: data, base, adapters),
reproduced through DVC's API (``Repo.reproduce``) when any is missing."""

from __future__ import annotations

from . import dvcio, evaluation
from .errors import PipelineError
from .settings import Settings


class BuildError(PipelineError):
    permanent = True


def missing_inputs(settings: Settings) -> list[str]:
    """Project-relative paths the night needs that are not there yet."""
    cat = settings.catalog
    entries = cat.adapters + cat.baselines + ([cat.base] if cat.base else [])
    uris = [e.source for e in entries] + [e.prompts for e in cat.adapters if e.prompts]  # prompts: learned merges
    wanted = [u[len("dvc://"):].partition("@")[0] for u in uris if u.startswith("dvc://") and "@" not in u]
    need = [p for p in wanted if not (settings.project / p).exists()]
    for p in evaluation.scorer_inputs(settings):
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
    stages = dvcio.stages_producing(settings.project, need)
    if not stages:
        raise BuildError(f"missing {', '.join(need)} and no DVC stage produces it; build the suite first")
    jobs, minutes = settings.pipeline.dvc.build_jobs, settings.pipeline.dvc.build_minutes
    print(f"building the suite: dvc repro {' '.join(sorted(stages))} (one-off"
          + (f", about {minutes} min on an idle 2-core box" if minutes else ", minutes")
          + (f"; independent stages {jobs} at a time" if jobs > 1 else "")
          + "; training stages print their step and an ETA)", flush=True)
    dvcio.reproduce(settings.project, sorted(stages), jobs=jobs)
