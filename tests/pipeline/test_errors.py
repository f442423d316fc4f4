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


def test_the_alias_guard_keeps_the_registry_error_and_never_runs_without_its_slot(tmp_path, adapters, base,
                                                                                  monkeypatch, caplog):
    """Issue 25 item 9, found by the stack's "PostgreSQL down during register" fault: the registry failed, and the
    guard's slot could not be given back (the Prefect server shares that database); Prefect's release error replaced
    the registry's own, reported as "MLflow refused" with a Prefect URL. Now the body's error stands and a slot not
    given back is logged (the server frees it when its lease expires); a slot that cannot be taken is GuardUnavailable
    before the guarded code runs."""
    import contextlib

    import prefect.concurrency.sync
    from pipeline_helpers import make_project
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

    from pipeline.settings import load_settings
    from pipeline.tracking import client

    settings = load_settings(make_project(tmp_path / "p", adapters, base, dvc_init=False))
    monkeypatch.setattr(client, "prefect_server", lambda: "http://prefect.test/api")
    ran = []

    @contextlib.contextmanager
    def gone_before_release(name, **kw):
        assert name == "pico-registry" and kw["strict"]
        try:
            yield
        finally:
            raise ConnectionError("the Prefect server went away")

    monkeypatch.setattr(prefect.concurrency.sync, "concurrency", gone_before_release)
    with pytest.raises(client.RegistryUnavailable, match="version refused") as failed:
        with client.registry_errors(settings, "registering"), client.registry_guard(settings):
            ran.append("register")
            raise RuntimeError("version refused")  # the registry's own failure
    assert "went away" not in str(failed.value)
    with caplog.at_level("WARNING", logger="pico.registry"):
        with client.registry_guard(settings):
            ran.append("promote")  # done under the guard: the night goes on
    assert ran == ["register", "promote"] and "'pico-registry' was not given back" in caplog.text

    @contextlib.contextmanager
    def unreachable(name, **kw):
        raise ConcurrencySlotAcquisitionError(f"Unable to acquire concurrency slots on {[name]!r}")
        yield

    monkeypatch.setattr(prefect.concurrency.sync, "concurrency", unreachable)
    with pytest.raises(client.GuardUnavailable, match="'pico-registry' on http://prefect.test/api, could not be taken"):
        with client.registry_errors(settings, "promoting"), client.registry_guard(settings):
            ran.append("moved an alias")
    assert ran == ["register", "promote"]
