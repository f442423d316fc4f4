"""Pipeline steps. The plain modules (config, fetch, merging, benchmark, registry, versioning, lineage, dvcio) import
no orchestration library, so the DVC stages and `pico lineage` use them without Prefect; `tasks.steps` wraps them
as Prefect tasks for `flows.nightly`."""
