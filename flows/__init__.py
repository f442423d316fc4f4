"""Prefect flows: `flows.nightly` (the nightly merge and its entry point), `flows.deploy` (the cron deployment),
`flows.stages` (the DVC stage commands, no Prefect)."""
