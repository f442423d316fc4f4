"""Notifications (pipeline/notify.py) through Prefect's webhook block, received by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest
from notify_receiver import Receiver

from pipeline import notify


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_promotion_reaches_the_receiver(receiver):
    summary = {"model": "pico-merged", "decision": {"version": "3", "reasons": ["mean gain +0.05 is significant"]},
               "eval": {"mean": 0.84, "mean_stderr": 0.011}, "search": {"chosen": "ties/full lam=2 density=0.7"},
               "mlflow_url": "http://mlflow/#/runs/abc"}
    subject, body = notify.promotion_message(summary)
    assert notify.send({"webhook_url": receiver.url}, "promotion", subject, body)
    assert receiver.got == [{"subject": "pico nightly: pico-merged v3 promoted to champion", "body": body}]
    assert "ties/full lam=2" in body and "0.8400 ± 0.0110" in body


def test_disabled_events_and_no_block_send_nothing(receiver):
    assert not notify.send({"webhook_url": receiver.url, "events": ["failure"]}, "promotion", "s", "b")
    assert not notify.send({}, "failure", "s", "b")
    assert receiver.got == []
    with pytest.raises(ValueError, match="unknown events"):
        notify.send({"events": ["sometimes"]}, "failure", "s", "b")


def test_an_unreachable_receiver_is_a_warning_not_a_failure(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    assert not notify.send({"webhook_url": f"http://127.0.0.1:{port}/x", "timeout_s": 2}, "failure", "s", "b")
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
