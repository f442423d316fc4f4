"""The pipeline's error base: every step error says whether a retry could fix it.

Retry conditions read ``permanent`` (never the message text): a pin mismatch, an invalid adapter or a bad setting is
permanent (retrying cannot change the bytes or the file); a network or DVC-remote hiccup is not.
"""

from __future__ import annotations

from pico.errors import PicoError


class PipelineError(RuntimeError):
    """A pipeline step failed. ``permanent``: a retry cannot fix it (class default; an instance may override)."""

    permanent: bool = False

    def __init__(self, *args, permanent: bool | None = None):
        super().__init__(*args)
        if permanent is not None:
            self.permanent = permanent


def is_permanent(exc: BaseException | None) -> bool:
    """Whether retrying ``exc`` is pointless: a PipelineError says so itself; every pico error (``PicoError``: a bad
    adapter, recipe or option; the bytes will not change on a retry) is permanent; anything else (network, OS) is
    transient."""
    if exc is None:
        return False
    if isinstance(exc, PipelineError):
        return exc.permanent
    return isinstance(exc, PicoError)


class SearchError(PipelineError, ValueError):
    """The ``merge:`` section cannot be read as a recipe or a search space (names the key)."""

    permanent = True


class GateError(PipelineError, ValueError):
    """Outcomes the gate cannot compare (different items, empty tasks, values other than 0/1)."""

    permanent = True
