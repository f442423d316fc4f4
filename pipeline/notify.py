"""Notifications on failure and on promotion, through a Prefect notification block (a webhook).

``pipeline.notify`` in params.yaml::

    notify:
      block: custom-webhook/pico-nightly     # a saved Prefect notification block (any kind: Slack, Teams, ...)
      webhook_url: null                      # or: a plain URL, POSTed as JSON {"subject": ..., "body": ...}
      events: [failure, promotion]           # ("on" would be YAML 1.1 for true)

Nothing is configured by default (no block, no URL): the night sends nothing. A notification that cannot be
delivered is logged as a warning and never fails the night (a promotion has already happened by then; a failure
is already a failure).
"""

from __future__ import annotations

import logging

EVENTS = ("failure", "promotion")
DEFAULTS = {"block": None, "webhook_url": None, "events": list(EVENTS), "timeout_s": 10}

log = logging.getLogger("pico.notify")


def config(cfg) -> dict:
    """``pipeline.notify`` (typed settings or a plain dict) with defaults, checked."""
    if hasattr(cfg, "model_dump"):
        cfg = cfg.model_dump()
    out = {**DEFAULTS, **(cfg or {})}
    unknown = set(out) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"pipeline.notify: unknown keys {', '.join(sorted(unknown))} (known: {', '.join(DEFAULTS)})")
    bad = [e for e in out["events"] if e not in EVENTS]
    if bad:
        raise ValueError(f"pipeline.notify.events: unknown events {bad} (known: {', '.join(EVENTS)})")
    return out


def block_for(cfg: dict):
    """The notification block: the saved one named by ``block``, else a webhook block for ``webhook_url``."""
    if cfg.get("block"):
        from prefect.blocks.core import Block

        return Block.load(cfg["block"])
    if cfg.get("webhook_url"):
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        # the URL comes from the project's own params.yaml, so a private address (a chat bridge on the LAN, a
        # receiver on 127.0.0.1) is what the user asked for, not a request forgery
        return CustomWebhookNotificationBlock(name="pico-nightly", url=cfg["webhook_url"], method="POST",
                                              json_data={"subject": "{{subject}}", "body": "{{body}}"},
                                              timeout=float(cfg["timeout_s"]), allow_private_urls=True)
    return None


def send(cfg, event: str, subject: str, body: str) -> bool:
    """Send one notification if ``event`` is enabled and a block is configured. True when it was delivered."""
    cfg = config(cfg)
    if event not in EVENTS:
        raise ValueError(f"unknown notification event {event!r}")
    if event not in cfg["events"]:
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


def promotion_message(summary: dict) -> tuple[str, str]:
    """(subject, body) of a promotion, from the night's summary."""
    d, ev = summary["decision"], summary["eval"]
    subject = f"pico nightly: {summary['model']} v{d['version']} promoted to champion"
    recipe = (summary.get("search") or {}).get("chosen") or summary.get("recipe_label") or ""
    lines = [subject, f"recipe: {recipe}",
             f"test mean {ev['mean']:.4f}" + (f" ± {ev['mean_stderr']:.4f}" if ev.get("mean_stderr") else ""),
             "why: " + "; ".join(d["reasons"])]
    if summary.get("mlflow_url"):
        lines.append(f"MLflow: {summary['mlflow_url']}")
    return subject, "\n".join(lines)


def failure_message(flow_name: str, run_name: str, error: str, url: str | None = None) -> tuple[str, str]:
    subject = f"pico nightly FAILED: {flow_name} / {run_name}"
    body = f"{subject}\n{error}\nNo alias was moved." + (f"\nPrefect: {url}" if url else "")
    return subject, body


def on_failure_hook(flow, flow_run, state) -> None:
    """A Prefect ``on_failure`` / ``on_crashed`` flow hook: reads the run's params.yaml and sends the failure."""
    try:
        from prefect.runtime import flow_run as runtime_run

        from .settings import load_settings

        p = flow_run.parameters or {}
        cfg = None
        try:
            cfg = load_settings(p.get("project", "."), p.get("params", "params.yaml"),
                                p.get("overrides")).pipeline.notify
        except Exception as exc:  # noqa: BLE001 - a broken params.yaml is a failure worth reporting too
            import yaml
            from pathlib import Path

            path = Path(p.get("project", ".")) / p.get("params", "params.yaml")
            with_notify = ((yaml.safe_load(path.read_text()) or {}).get("pipeline") or {}).get("notify") \
                if path.is_file() else None
            cfg = with_notify
            log.info("settings unreadable (%s); notifying from the raw params.yaml", exc)
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
        subject, body = failure_message(flow.name, flow_run.name, error, url)
        send(cfg, "failure", subject, body)
    except Exception as exc:  # noqa: BLE001 - hooks must never raise
        log.warning("failure notification hook: %s: %s", type(exc).__name__, exc)
