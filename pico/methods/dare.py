from typing import Annotated

from annotated_types import Interval

from pico.ops import dare, ties_merge
from pico.registry import Context, apply_weights, merge_method

DropRate = Annotated[float, Interval(ge=0, lt=1),
                     "DARE drop probability p; survivors are rescaled by 1/(1-p) (Core-Space Llama: 0.9)"]


@merge_method("dare", spaces=("full", "core", "knots"))
def dare_ta(taus, weights, ctx: Context, *, drop_rate: DropRate = 0.9):
    """DARE: random drop and rescale of each task's entries (seeded per module), then Task Arithmetic."""
    return dare(apply_weights(taus, weights), drop_rate, ctx.modules, ctx.seed).sum(1)


@merge_method("dare_ties", spaces=("full", "core", "knots"))
def dare_ties(taus, weights, ctx: Context, *, drop_rate: DropRate = 0.9,
              density: Annotated[float, Interval(gt=0, le=1),
                                 "fraction of entries kept per task and module (TIES topK; Core-Space Llama: 0.7)"] = 0.7):
    """DARE-TIES: DARE drop and rescale (seeded per module), then TIES trim, elect and disjoint mean."""
    return ties_merge(dare(apply_weights(taus, weights), drop_rate, ctx.modules, ctx.seed), density)
