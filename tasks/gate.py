"""The promotion policy, pure (no MLflow): whether a new version may replace the champion, and why.

``pipeline.gate``: the mean must be at least the champion's mean plus ``min_delta``, and no task may score below its
floor (``floors[task]``, else ``floor``). :mod:`tasks.promotion` reads the registry, calls :func:`decide` and moves
the alias.
"""

from __future__ import annotations

from .config import GateSettings
from .records import ChampionRecord, Decision

CHAMPION, CANDIDATE = "champion", "candidate"


def mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


def gate(scores: dict[str, float], champion: ChampionRecord | None, cfg: GateSettings) -> tuple[bool, list[str]]:
    """The promotion gate: mean not below the champion's (+ min_delta), no task below its floor."""
    reasons = []
    for task, value in sorted(scores.items()):
        floor = cfg.floor_of(task)
        if value < floor:
            reasons.append(f"{task} {value:.3f} is below its floor {floor:.3f}")
    if champion is not None:
        need = champion.mean + cfg.min_delta
        if mean(scores) < need - 1e-9:  # a tie is not "below": means re-read from MLflow may differ in the last bits
            reasons.append(f"mean {mean(scores):.4f} is below the champion's (v{champion.version}: "
                           f"{champion.mean:.4f}" + (f" + min_delta {cfg.min_delta}" if cfg.min_delta else "") + ")")
    return not reasons, reasons


def decide(version: str, scores: dict[str, float], champion: ChampionRecord | None, cfg: GateSettings) -> Decision:
    """The decision for ``version`` against the current ``champion`` (None: there is none)."""
    if champion is not None and champion.version == str(version):
        return Decision(promoted=True, alias=CHAMPION, version=version, unchanged=True,
                        reasons=[f"v{version} is already the champion (same bytes, same benchmark)"],
                        previous_champion=str(version))
    passed, reasons = gate(scores, champion, cfg)
    if passed and champion is None:
        reasons = ["no champion yet; every task at or above its floor"]
    elif passed:
        reasons = [f"mean {mean(scores):.4f} >= champion v{champion.version} {champion.mean:.4f}"
                   + (f" + {cfg.min_delta}" if cfg.min_delta else "") + "; every task at or above its floor"]
    return Decision(promoted=passed, alias=CHAMPION if passed else CANDIDATE, version=version, unchanged=False,
                    reasons=reasons, previous_champion=champion.version if champion else None)
