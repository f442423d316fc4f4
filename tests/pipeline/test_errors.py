"""Retry classification by exception type, never by message text."""

import pytest

from pico.errors import AdapterError, OutputExistsError, RecipeError
from pipeline.errors import PipelineError, is_permanent


@pytest.mark.parametrize("exc, permanent", [
    (AdapterError("a: bad"), True),
    (RecipeError("density must be in (0, 1]"), True),  # a bad recipe fails the same way on every retry
    (OutputExistsError("out exists"), True),
    (PipelineError("remote hiccup"), False),
    (PipelineError("pin mismatch", permanent=True), True),
    (ConnectionError("refused"), False),
    (ValueError("not pico's"), False),
    (None, False),
])
def test_is_permanent_reads_the_type(exc, permanent):
    assert is_permanent(exc) is permanent
