"""Notifications on failure and on promotion, through a Prefect notification block (a webhook).

``pipeline.notify`` in params.yaml (:class:`pipeline.settings.NotifySettings`)::

    notify:
      block: custom-webhook/pico-nightly     # a saved Prefect notification block (any kind: Slack, Teams, ...)
      webhook_url: null                      # or: a plain URL, POSTed as JSON {"subject": ..., "body": ...}
      events: [failure, promotion]           # ("on" would be YAML 1.1 for true)

Nothing is configured by default (no block, no URL): the night sends nothing. A notification that cannot be
delivered is logged as a warning and never fails the night (a promotion has already happened by then; a failure
is already a failure). The messages are :mod:`pipeline.render`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from .render import failure_message
from .settings import NotifySettings, load_settings

log = logging.getLogger("pico.notify")


def block_for(cfg: NotifySettings):
    """The notification block: the saved one named by ``block``, else a webhook block for ``webhook_url``."""
    if cfg.block:
        from prefect.blocks.core import Block

        return Block.load(cfg.block)
    if cfg.webhook_url:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        # the URL comes from the project's own params.yaml, so a private address (a chat bridge on the LAN, a
        # receiver on 127.0.0.1) is what the user asked for, not a request forgery
        return CustomWebhookNotificationBlock(name="pico-nightly", url=cfg.webhook_url, method="POST",
                                              json_data={"subject": "{{subject}}", "body": "{{body}}"},
                                              timeout=float(cfg.timeout_s), allow_private_urls=True)
    return None


def send(cfg: NotifySettings, event: str, subject: str, body: str) -> bool:
    """Send one notification if ``event`` is enabled and a block is configured. True when it was delivered."""
    if event not in NotifySettings.model_fields["events"].default:
        raise ValueError(f"unknown notification event {event!r}")
    if event not in cfg.events:
        return False
    try:
        block = block_for(cfg)
        if block is None:
            return False
        block.notify(body=body, subject=subject)
        return True
    except Exception as exc:  # noqa: BLE001 - a lost message must not fail the night
        log.warning("notification (%s) not delivered: %s: %s", event, type(exc).__name__, exc)
        return False


def _settings_of(p: dict) -> NotifySettings:
    """The failed run's notify settings; from the raw params.yaml when the settings themselves are what failed."""
    try:
        return load_settings(p.get("project", "."), p.get("params", "params.yaml"), p.get("overrides")).pipeline.notify
    except Exception as exc:  # noqa: BLE001 - a broken params.yaml is a failure worth reporting too
        path = Path(p.get("project", ".")) / p.get("params", "params.yaml")
        raw = ((yaml.safe_load(path.read_text()) or {}).get("pipeline") or {}).get("notify") if path.is_file() else None
        log.info("settings unreadable (%s); notifying from the raw params.yaml", exc)
        return NotifySettings.model_validate(raw or {})


def on_failure_hook(flow, flow_run, state) -> None:
    """A Prefect ``on_failure`` / ``on_crashed`` flow hook: reads the run's params.yaml and sends the failure."""
    try:
        from prefect.runtime import flow_run as runtime_run

        cfg = _settings_of(flow_run.parameters or {})
        error = state.message or state.name
        try:
            state.result()
        except BaseException as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {exc}"
        url = None
        try:
            url = runtime_run.ui_url
        except Exception:  # noqa: BLE001
            pass
        send(cfg, "failure", *failure_message(flow.name, flow_run.name, error, url))
    except Exception as exc:  # noqa: BLE001 - hooks must never raise
        log.warning("failure notification hook: %s: %s", type(exc).__name__, exc)
