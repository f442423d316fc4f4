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


def test_a_prefect_server_without_the_alias_guard_stops_the_night_before_any_merge(plain_project, prefect_api):
    """Issue 25 item 3: with a Prefect server configured the cross-host alias guard is on; its preflight refuses a
    server without the global concurrency limit, naming the command that creates it, before anything is merged."""
    from pipeline_helpers import set_params

    from flows.nightly import nightly_merge
    from pipeline.settings import load_settings
    from pipeline.tracking.client import GuardMissing, check_guard

    assert check_guard(load_settings(plain_project)) == "pico-registry"  # the test server has it (as a team would)
    set_params(plain_project, pipeline__mlflow={"registry_limit": "no-such-limit"})
    with pytest.raises(GuardMissing, match="global-concurrency-limit create no-such-limit --limit 1"):
        check_guard(load_settings(plain_project))
    with pytest.raises(Exception, match="no global concurrency limit 'no-such-limit'"):
        nightly_merge(project=str(plain_project))
    assert not (plain_project / "build" / "pipeline" / "store").exists()
