"""Notifications (pipeline/notify.py) through Prefect's webhook block, received by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest
from notify_receiver import Receiver

from pipeline import notify, render
from pipeline.records import Decision, DvcRecord, EvalResult, NightlyResult, Registration, SearchSummary
from pipeline.settings import NotifySettings


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


def test_promotion_reaches_the_receiver(receiver):
    search = SearchSummary(chosen="ties/full lam=2 density=0.7", why="validation argmax", margin=0.1, runner_up=None,
                           candidates=2, cached=0, seconds=1.0, skipped=[], leaderboard=[])
    subject, body = render.promotion_message(night(search=search))
    assert notify.send(NotifySettings(webhook_url=receiver.url), "promotion", subject, body)
    assert receiver.got == [{"subject": "pico nightly: pico-merged v3 promoted to champion", "body": body}]
    assert "ties/full lam=2" in body and "0.8400 ± 0.0110" in body


def test_disabled_events_and_no_block_send_nothing(receiver):
    assert not notify.send(NotifySettings(webhook_url=receiver.url, events=["failure"]), "promotion", "s", "b")
    assert not notify.send(NotifySettings(), "failure", "s", "b")
    assert receiver.got == []
    with pytest.raises(ValueError, match="events"):  # the typed settings name the key
        NotifySettings(events=["sometimes"])
    assert "ta/core lam=1" in render.promotion_message(night())[1]  # no search: the one recipe


def test_an_unreachable_receiver_is_a_warning_not_a_failure(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    assert not notify.send(NotifySettings(webhook_url=f"http://127.0.0.1:{port}/x", timeout_s=2), "failure", "s", "b")
    assert "not delivered" in caplog.text


def test_failure_hook_of_a_failing_flow_reaches_the_receiver(receiver, tmp_path, monkeypatch):
    from prefect import flow

    (tmp_path / "params.yaml").write_text(f"pipeline:\n  notify: {{webhook_url: '{receiver.url}'}}\n")

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
