"""Notifications (pipeline/notify.py) through a saved Prefect webhook block, received by a real HTTP server on
127.0.0.1; a webhook URL in params.yaml refused; the notify settings kept out of MLflow; the deployment's server-side
failure Automation (the object, and as flows/deploy.py applies it on the test Prefect server)."""

from __future__ import annotations

import socket
import uuid

import pytest
import yaml
from notify_receiver import Receiver
from pipeline_helpers import set_params

from pipeline import notify, render
from pipeline.records import Decision, DvcRecord, EvalResult, MergeResult, NightlyResult, Registration, SearchSummary
from pipeline.settings import ConfigError, NotifySettings, load_settings


def night(**kw) -> NightlyResult:
    """A night that promoted v3 (only what the messages read differs between the tests)."""
    ev = EvalResult(key="k", scores={"a": 0.84}, mean=0.84, mean_stderr=0.011, seconds=1.0, label="merged")
    fields = dict(project="p", merge_key="m", fingerprint="f", store="s", cached_merge=False, runner=None, eval=ev,
                  baselines=[], champion_before=None, experiment_id="1", timings={}, tracking_uri="sqlite:///x",
                  model="pico-merged", recipe_label="ta/core lam=1", mlflow_url="http://mlflow/#/runs/abc",
                  registered=Registration(run_id="abc", experiment_id="1", model="pico-merged", version="3",
                                          reused=False, artifact_uri="x"),
                  decision=Decision(promoted=True, alias="champion", version="3", unchanged=False,
                                    reasons=["mean gain +0.05 is significant"]),
                  dvc=DvcRecord(enabled=False))
    return NightlyResult(**{**fields, **kw})


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def hook_block(receiver, prefect_api) -> str:
    """A webhook block saved on the test Prefect server, POSTing to the receiver: what pipeline.notify.block names."""
    return receiver.block()


def test_promotion_reaches_the_receiver(receiver, hook_block):
    search = SearchSummary(chosen="ties/full lam=2 density=0.7", why="validation argmax", margin=0.1, runner_up=None,
                           candidates=2, cached=0, seconds=1.0, skipped=[], leaderboard=[])
    subject, body = render.promotion_message(night(search=search))
    assert hook_block.startswith("custom-webhook/")
    assert notify.send(NotifySettings(block=hook_block), "promotion", subject, body)
    assert receiver.got == [{"subject": "pico nightly: pico-merged v3 promoted to champion", "body": body}]
    assert "ties/full lam=2" in body and "0.8400 ± 0.0110" in body


def test_disabled_events_and_no_block_send_nothing(receiver, hook_block):
    assert not notify.send(NotifySettings(block=hook_block, events=["failure"]), "promotion", "s", "b")
    assert not notify.send(NotifySettings(), "failure", "s", "b")
    assert receiver.got == []
    with pytest.raises(ValueError, match="events"):  # the typed settings name the key
        NotifySettings(events=["sometimes"])
    assert "ta/core lam=1" in render.promotion_message(night())[1]  # no search: the one recipe


def test_an_unreachable_receiver_is_a_warning_not_a_failure(caplog, prefect_api):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    block = notify.save_webhook(f"nobody-{uuid.uuid4().hex[:8]}", f"http://127.0.0.1:{port}/x", timeout_s=2)
    assert not notify.send(NotifySettings(block=block), "failure", "s", "b")
    assert "not delivered" in caplog.text
    assert not notify.send(NotifySettings(block="custom-webhook/never-saved"), "failure", "s", "b")


def test_a_webhook_url_in_params_is_refused_and_save_webhook_reads_stdin(tmp_path, monkeypatch, capsys, prefect_api):
    import io

    secret = "https://hooks.example.invalid/services/T000/B000/tokenpart"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"pipeline": {"notify": {"webhook_url": secret}}}))
    (tmp_path / "adapters.yaml").write_text("adapters: []\n")
    with pytest.raises(ConfigError, match="pipeline.notify: webhook_url: .* Prefect notification block") as err:
        load_settings(tmp_path)
    assert "tokenpart" not in str(err.value)  # the refusal does not print the token either
    assert NotifySettings(webhook_url=None) == NotifySettings()  # the old default, `webhook_url: null`, still reads

    name = f"saved-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr("sys.stdin", io.StringIO(secret + "\n"))
    assert notify.main(["save-webhook", name]) == 0
    assert f"pipeline.notify.block: custom-webhook/{name}" in capsys.readouterr().out
    assert notify.block_for(NotifySettings(block=f"custom-webhook/{name}")).url == secret
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert notify.main(["save-webhook", name]) == 2


def test_the_notify_settings_never_reach_mlflow(plain_project):
    """Neither the run's params nor its config/params.yaml artifact carry pipeline.notify (nor a preset's)."""
    from pipeline.tracking import runs
    from pipeline.tracking.client import params

    set_params(plain_project, pipeline__notify={"block": "slack-webhook/team-secret-channel"},
               suites={"other": {"notify": {"block": "slack-webhook/preset-channel"}}})
    settings = load_settings(plain_project)
    merged = MergeResult(key="k" * 64, store=str(plain_project), manifest={"recipe_hash": "h" * 64}, cached=False)
    logged = {p.key: p.value for p in params(runs.run_params(settings, merged))}
    assert logged["merge.method"] == "ties" and logged["recipe_hash"] == "h" * 64
    text = runs.params_artifact(settings.params_path)
    for where in (repr(logged), text):
        assert "notify" not in where and "channel" not in where
    original = yaml.safe_load(settings.params_path.read_text())
    del original["pipeline"]["notify"], original["suites"]["other"]["notify"]
    assert yaml.safe_load(text) == original  # everything else, as the night read it


def test_failure_hook_of_a_failing_flow_reaches_the_receiver(receiver, hook_block, tmp_path, monkeypatch):
    from prefect import flow

    (tmp_path / "params.yaml").write_text(f"pipeline:\n  notify: {{block: '{hook_block}'}}\n")

    @flow(name="nightly-merge-failing", on_failure=[notify.on_failure_hook])
    def failing(project: str, params: str = "params.yaml", overrides: dict | None = None):
        raise RuntimeError("fetch: sha256 pin mismatch for adapter add")

    with pytest.raises(RuntimeError, match="pin mismatch"):
        failing(project=str(tmp_path))
    assert len(receiver.got) == 1, receiver.got
    msg = receiver.got[0]
    assert msg["subject"].startswith("pico nightly FAILED: nightly-merge-failing")
    assert "RuntimeError: fetch: sha256 pin mismatch for adapter add" in msg["body"]
    assert "No alias was moved." in msg["body"]


def test_the_failure_automation_object():
    """What the Prefect server is asked to run: any flow run of this deployment entering Crashed, Failed or TimedOut
    triggers one notification through the block, with a body the server renders from the run."""
    from prefect.automations import EventTrigger, Posture, SendNotification

    dep, block = uuid.uuid4(), uuid.uuid4()
    auto = notify.failure_automation(dep, "nightly-merge", "nightly", block)
    assert auto.name == "pico nightly failure alert: nightly-merge/nightly" and auto.enabled
    trigger = auto.trigger
    assert isinstance(trigger, EventTrigger) and trigger.posture == Posture.Reactive and trigger.threshold == 1
    assert trigger.expect == {"prefect.flow-run.Crashed", "prefect.flow-run.Failed", "prefect.flow-run.TimedOut"}
    assert trigger.match.model_dump() == {"prefect.resource.id": "prefect.flow-run.*"}
    assert trigger.match_related.model_dump() == {"prefect.resource.id": f"prefect.deployment.{dep}",
                                                  "prefect.resource.role": "deployment"}
    assert trigger.for_each == {"prefect.resource.id"}  # each run alerts once, however many fail together
    [action] = auto.actions
    assert isinstance(action, SendNotification) and action.block_document_id == block
    assert "{{ flow_run.state.message }}" in action.body and "{{ flow_run|ui_url }}" in action.body
    assert "{{ flow_run.state.name|upper }}" in action.subject


def test_deploy_creates_updates_and_removes_the_failure_automation(project, hook_block, capsys):
    """flows/deploy.py applies the deployment and its failure Automation on the Prefect server (once, however often
    it is applied); the in-process hook of that deployment's runs then stays silent; no block: no Automation."""
    from types import SimpleNamespace

    from prefect.blocks.core import Block
    from prefect.client.orchestration import get_client

    from flows import deploy

    name = f"nightly-{uuid.uuid4().hex[:6]}"
    set_params(project, pipeline__notify={"block": hook_block}, pipeline__schedule__deployment=name)
    assert deploy.main(["--project", str(project), "--show"]) == 0
    assert f"Crashed/Failed/TimedOut runs to {hook_block}" in capsys.readouterr().out
    for _ in range(2):
        assert deploy.main(["--project", str(project), "--apply"]) == 0
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(f"nightly-merge/{name}")
        [auto] = client.read_automations_by_name(notify.automation_name("nightly-merge", name))
    assert auto.enabled and auto.trigger.match_related.model_dump()["prefect.resource.id"] == \
        f"prefect.deployment.{dep.id}"
    assert auto.actions[0].block_document_id == Block.load(hook_block)._block_document_id
    assert notify._covered_by_automation("nightly-merge", SimpleNamespace(deployment_id=dep.id))
    assert not notify._covered_by_automation("nightly-merge", SimpleNamespace(deployment_id=None))

    set_params(project, pipeline__notify={"block": None})
    assert deploy.main(["--project", str(project), "--apply"]) == 0
    assert "failure alerts: none" in capsys.readouterr().out
    with get_client(sync_client=True) as client:
        assert client.read_automations_by_name(notify.automation_name("nightly-merge", name)) == []
    assert not notify._covered_by_automation("nightly-merge", SimpleNamespace(deployment_id=dep.id))


@pytest.mark.slow
def test_a_crashed_run_of_the_deployment_is_reported_by_the_server(project, tmp_path):
    """On a Prefect server with its services: the deployment's run is marked Crashed the way a worker marks a run
    whose process was SIGKILLed (no flow process is left to run a hook): the server's Automation sends the alert
    through the block, once; a Completed run sends nothing."""
    import time

    from pipeline_helpers import prefect_server
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Completed, Crashed, Running

    from flows import deploy

    url, stop = prefect_server(tmp_path / "server", services=True)
    receiver = Receiver()
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            set_params(project, pipeline__notify={"block": receiver.block()})
            assert deploy.main(["--project", str(project), "--apply"]) == 0
            with get_client(sync_client=True) as client:
                dep = client.read_deployment_by_name("nightly-merge/nightly")
                runs = [client.create_flow_run_from_deployment(dep.id) for _ in range(2)]
                for r in runs:
                    client.set_flow_run_state(r.id, Running(), force=True)
                client.set_flow_run_state(runs[0].id, Completed(), force=True)
                client.set_flow_run_state(runs[1].id, Crashed(message="Flow run process exited with signal 9"),
                                          force=True)
            deadline = time.monotonic() + 120
            while not receiver.got and time.monotonic() < deadline:
                time.sleep(1)
            time.sleep(5)  # anything else the server would send arrives meanwhile
    finally:
        receiver.close()
        stop()
    assert len(receiver.got) == 1, receiver.got
    msg = receiver.got[0]
    assert msg["subject"] == f"pico nightly CRASHED: nightly-merge / {runs[1].name}"
    assert "Flow run process exited with signal 9" in msg["body"] and "Reported by the Prefect server" in msg["body"]
