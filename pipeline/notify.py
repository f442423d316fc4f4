"""Notifications on failure and on promotion, through a saved Prefect notification block (a webhook).

``pipeline.notify`` in params.yaml (:class:`pipeline.settings.NotifySettings`)::

    notify:
      block: custom-webhook/pico-nightly     # a saved Prefect notification block (any kind: Slack, Teams, ...)
      events: [failure, promotion]           # ("on" would be YAML 1.1 for true)

The block holds the URL and its token on the Prefect server (a Slack or Teams block keeps it as a secret field);
params.yaml only names it, and a ``webhook_url`` there is refused (params.yaml is committed and copied into each
night's records). ``python -m pipeline.notify save-webhook NAME`` saves a plain webhook (POSTed as JSON
``{"subject": ..., "body": ...}``) from a URL read on stdin, never from the command line.

Failures are reported twice over, without duplicates:

- in the flow process (``on_failure``/``on_crashed`` hooks): every run, a deployment's or a plain
  ``python -m flows.nightly``;
- on the Prefect server, for the deployment (:func:`failure_automation`, created by ``flows/deploy.py``): an
  Automation on the flow run's Crashed, Failed or TimedOut event that sends through the same block, so a run whose
  process was SIGKILLed or OOM-killed, or whose host was lost, is still reported (the worker, or the runner of a
  served deployment, marks such a run Crashed). The hook of a deployment's run stays silent when that Automation
  exists and is enabled.

Nothing is configured by default (no block): the night sends nothing. A notification that cannot be delivered is
logged as a warning and never fails the night (a promotion has already happened by then; a failure is already a
failure). The in-process messages are :mod:`pipeline.render`'s.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import timedelta
from pathlib import Path

import yaml

from .render import failure_message
from .settings import NotifySettings, load_settings

log = logging.getLogger("pico.notify")

# the flow-run events of a run that ended badly (Prefect names them prefect.flow-run.<state name>; a flow timeout is
# a Failed state named TimedOut)
FAILURE_EVENTS = ("prefect.flow-run.Crashed", "prefect.flow-run.Failed", "prefect.flow-run.TimedOut")
AUTOMATION_PREFIX = "pico nightly failure alert"

# Jinja, rendered by the Prefect server from the triggering flow run (its own templating, not Python's)
AUTOMATION_SUBJECT = "pico nightly {{ flow_run.state.name|upper }}: {{ flow.name }} / {{ flow_run.name }}"
AUTOMATION_BODY = """pico nightly {{ flow_run.state.name|upper }}: {{ flow.name }} / {{ flow_run.name }}
{{ flow_run.state.message }}
Reported by the Prefect server (the run's own process may be gone). Aliases move only in the night's last step:
check the champion with `pico lineage <model> champion`.
Prefect: {{ flow_run|ui_url }}"""


def block_for(cfg: NotifySettings):
    """The saved notification block named by ``block`` (None when none is configured)."""
    if not cfg.block:
        return None
    from prefect.blocks.core import Block

    return Block.load(cfg.block)


def webhook_block(url: str, timeout_s: float = 10.0):
    """A webhook notification block POSTing ``{"subject": ..., "body": ...}`` to ``url`` (not saved). Private
    addresses are allowed: a chat bridge on the LAN or a receiver on 127.0.0.1 is what its owner saved it for."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    return CustomWebhookNotificationBlock(name="pico-nightly", url=url, method="POST",
                                          json_data={"subject": "{{subject}}", "body": "{{body}}"},
                                          timeout=float(timeout_s), allow_private_urls=True)


def save_webhook(name: str, url: str, timeout_s: float = 10.0, overwrite: bool = True) -> str:
    """Save a webhook block on the Prefect server; returns what ``pipeline.notify.block`` names it by."""
    block = webhook_block(url, timeout_s)
    block.save(name, overwrite=overwrite)
    return f"{block.get_block_type_slug()}/{name}"


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


def automation_name(flow_name: str, deployment_name: str) -> str:
    return f"{AUTOMATION_PREFIX}: {flow_name}/{deployment_name}"


def failure_automation(deployment_id, flow_name: str, deployment_name: str, block_document_id):
    """The server-side failure alert of one deployment: a Prefect Automation whose trigger is any flow run of that
    deployment entering Crashed, Failed or TimedOut, and whose action sends the rendered message through the
    notification block."""
    from prefect.automations import Automation, EventTrigger, Posture, SendNotification

    return Automation(
        name=automation_name(flow_name, deployment_name),
        description="Created by flows/deploy.py from pipeline.notify in params.yaml (pipeline/notify.py)",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": f"prefect.deployment.{deployment_id}",
                           "prefect.resource.role": "deployment"},
            expect=set(FAILURE_EVENTS), for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1,
            within=timedelta(0)),
        actions=[SendNotification(block_document_id=block_document_id, subject=AUTOMATION_SUBJECT,
                                  body=AUTOMATION_BODY)])


def sync_failure_automation(cfg: NotifySettings, deployment_id, flow_name: str, deployment_name: str):
    """Create or update the deployment's failure Automation when failures are notified through a block; delete a
    stale one when they no longer are. Returns the Automation (None when there is none). Not owned by the deployment:
    Prefect deletes a deployment's owned automations each time it is applied (and ``serve`` applies it again)."""
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client

    name = automation_name(flow_name, deployment_name)
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(name)
    if not cfg.block or "failure" not in cfg.events:
        for old in existing:
            Automation(**old.model_dump()).delete()
        return None
    block = block_for(cfg)
    wanted = failure_automation(deployment_id, flow_name, deployment_name, block._block_document_id)
    if not existing:
        return wanted.create()
    for extra in existing[1:]:
        Automation(**extra.model_dump()).delete()
    wanted.id = existing[0].id
    wanted.update()
    return wanted


def _covered_by_automation(flow_name: str, flow_run) -> bool:
    """Whether the server sends this run's failure: it belongs to a deployment with an enabled failure Automation."""
    if not getattr(flow_run, "deployment_id", None):
        return False
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(flow_run.deployment_id)
        found = client.read_automations_by_name(automation_name(flow_name, deployment.name))
    return any(a.enabled for a in found)


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
    """A Prefect ``on_failure`` / ``on_crashed`` flow hook: reads the run's params.yaml and sends the failure, unless
    the deployment's server-side Automation sends it."""
    try:
        from prefect.runtime import flow_run as runtime_run

        cfg = _settings_of(flow_run.parameters or {})
        if not cfg.block or "failure" not in cfg.events:
            return
        try:
            if _covered_by_automation(flow.name, flow_run):
                log.info("failure notification: sent by the server-side automation of the deployment")
                return
        except Exception as exc:  # noqa: BLE001 - cannot tell: better twice than never
            log.info("failure notification: automation lookup failed (%s); sending from the flow", exc)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.notify", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    save = sub.add_parser("save-webhook", help="save a webhook block from a URL read on stdin (never argv)")
    save.add_argument("name")
    save.add_argument("--timeout-s", type=float, default=10.0)
    args = ap.parse_args(argv)
    url = sys.stdin.readline().strip()
    if not url.startswith(("http://", "https://")):
        print("save-webhook: give the URL (http:// or https://) on stdin", file=sys.stderr)
        return 2
    print(f"saved; set pipeline.notify.block: {save_webhook(args.name, url, args.timeout_s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
