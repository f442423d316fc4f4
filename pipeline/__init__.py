"""The nightly pipeline around pico: settings, sources, merging, evaluation, search, gate, DVC and MLflow I/O (plain
modules that import no orchestration library, so the DVC stages and `pico lineage` run them without Prefect), and
`pipeline.steps`, the Prefect tasks over them that `flows.nightly` composes."""
