"""Where the night runs: the process environment, torch's thread count, the task runner of the calibrate/merge map,
and the warm-up of the run's fixed costs.

The warm-up starts Prefect's ephemeral API itself (Prefect's ``SubprocessASGIServer``, not a public API: with a
persistent ``prefect server start`` and ``PREFECT_API_URL`` set, none of this runs), side by side with the lm-eval
import and opening the MLflow store, instead of one after the other.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from . import evaluation
from .merging import torch_threads  # noqa: F401  (the flow's: the block gives torch's thread count back)
from .settings import Settings
from .tracking.client import preflight


def make_task_runner(settings: Settings):
    """The task runner of the calibrate/merge map: threads (default) or Dask (prefect-dask)."""
    from prefect.task_runners import ThreadPoolTaskRunner

    cfg = settings.pipeline.task_runner
    if cfg.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    kwargs: dict = {"n_workers": cfg.n_workers, "threads_per_worker": 1, "processes": cfg.processes,
              "dashboard_address": None}
    if cfg.gpu_resource:
        kwargs["resources"] = {cfg.gpu_resource: 1}
    share_api_with_workers()
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


class FlowTimeout(TimeoutError):
    """The night ran longer than ``pipeline.schedule.flow_timeout_s``."""


@contextlib.contextmanager
def flow_timeout(seconds: float | None):
    """``pipeline.schedule.flow_timeout_s`` around the night's work, read from the project at run time: a worker's
    run of the deployment loads the flow from its entrypoint (the decorator's options, not the project's). Prefect's
    own timeout scope (the one a flow's ``timeout_seconds`` uses); the engine ends the run TimedOut."""
    from prefect.utilities.timeout import timeout

    try:
        with timeout(seconds, timeout_exc_type=FlowTimeout):
            yield
    except FlowTimeout:
        raise FlowTimeout(f"the night ran longer than pipeline.schedule.flow_timeout_s ({seconds:g} s)") from None


def log_progress(futures: list, what: str, log) -> None:
    """Wait for mapped tasks, logging each completion with the elapsed time and an estimate of the rest (the mean
    time per completed task so far, times the tasks left; cached ones count as done at once)."""
    from prefect.futures import as_completed

    t0, n = time.monotonic(), len(futures)
    for i, _ in enumerate(as_completed(futures), 1):
        elapsed = time.monotonic() - t0
        eta = elapsed / i * (n - i)
        log.info("%d/%d %s done, %.0f s elapsed%s", i, n, what, elapsed, f", about {eta:.0f} s left" if i < n else "")


def progress_lines(log, label: str, every_s: float = 15.0):
    """A pico progress reporter (``pico.output.Reporter``) writing to ``log``: one line per stage of work when it
    starts, then at most one each ``every_s`` seconds and one at its end, each with the elapsed time and an estimate
    of the rest: what a log and the Prefect UI show of a long learned merge, where no terminal bar can."""
    started: dict[str, float] = {}
    last: dict[str, float] = {}

    def report(what: str, done: int, total: int, unit: str) -> None:
        stage = what.split(" (")[0]
        now = time.monotonic()
        t0 = started.setdefault(stage, now)
        if 0 < done < total and now - last.get(stage, t0) < every_s:
            return
        last[stage] = now
        elapsed = now - t0
        eta = f", about {elapsed / done * (total - done):.0f} s left" if 0 < done < total else ""
        log.info("%s: %s %d/%d %ss, %.0f s%s", label, what, done, total, unit, elapsed, eta)

    return report


def gpu_annotation(settings: Settings):
    """Dask annotation asking for one unit of the GPU resource (a no-op context otherwise)."""
    cfg = settings.pipeline.task_runner
    if cfg.kind == "dask" and cfg.gpu_resource:
        import dask

        return dask.annotate(resources={cfg.gpu_resource: 1})
    return contextlib.nullcontext()


def share_api_with_workers() -> None:
    """Point local Dask worker processes at this process's Prefect API (else each starts its own, ~15-30 s)."""
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        os.environ["PREFECT_API_URL"] = str(url)
        return
    with contextlib.suppress(Exception):
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()
        os.environ["PREFECT_API_URL"] = server.api_url


def warm_up(settings: Settings) -> threading.Thread | None:
    """Start the run's fixed costs side by side instead of one after the other: Prefect's ephemeral API (a
    subprocess, ~15 s here), the lm-eval import (~12 s) and opening the MLflow store. Returns the thread starting the
    API (join it before the flow runs); the others finish on their own (their steps wait for them or redo them)."""
    evaluation.prewarm(settings)

    def _mlflow():
        with contextlib.suppress(Exception):  # the flow's pre-flight step reports problems
            preflight(settings)

    threading.Thread(target=_mlflow, name="prewarm-mlflow", daemon=True).start()
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    api = threading.Thread(target=SubprocessASGIServer().start, name="prewarm-prefect-api", daemon=True)
    api.start()
    return api


class Clock:
    """Wall times of the night's four steps (seconds since the previous mark), logged with the run and printed;
    Prefect shows each task run's own duration."""

    def __init__(self):
        self.start = time.perf_counter()
        self.marks: list[tuple[str, float]] = []

    def mark(self, step: str, value=None):
        """Mark the end of ``step``; returns ``value`` (``x = clock.mark("step", run_step())``)."""
        self.marks.append((step, time.perf_counter()))
        return value

    def durations(self) -> dict[str, float]:
        out, prev = {}, self.start
        for step, at in self.marks:
            out[step] = round(at - prev, 2)
            prev = at
        out["total"] = round(prev - self.start, 2)
        return out
