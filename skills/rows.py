"""One row of a suite report: a model's accuracy per skill and its summary against the base and the team adapters.

In its own module so the report and the TARA rows (skills/tara_rows.py) both use it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    name: str
    section: str  # reference | merge | ablation
    acc: dict[str, float]
    lam: float | None = None
    recipe: dict | None = None
    extra: dict = field(default_factory=dict)

    def summary(self, base: dict[str, float], own: dict[str, float]) -> dict:
        skills = list(own)
        avg = sum(self.acc[s] for s in skills) / len(skills)
        norm = sum(self.acc[s] / own[s] if own[s] > 0 else 0.0 for s in skills) / len(skills)
        gains = {s: (self.acc[s] - base[s]) / (own[s] - base[s]) if own[s] != base[s] else 0.0 for s in skills}
        return {"avg": avg, "normalized": norm, "gain": sum(gains.values()) / len(skills), "gain_per_skill": gains}
