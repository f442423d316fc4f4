from pico.ops import Density, DropRate, dare, ties_merge
from pico.registry import Context, apply_weights, merge_method

DARE = "https://arxiv.org/abs/2311.03099"


@merge_method("dare", spaces=("full", "core", "knots"), reference_url=DARE)
def dare_ta(taus, weights, ctx: Context, *, drop_rate: DropRate = 0.9):
    """DARE: random drop and rescale of each task's entries (seeded per module), then Task Arithmetic."""
    return dare(apply_weights(taus, weights), drop_rate, ctx.modules, ctx.seed).sum(1)


@merge_method("dare_ties", spaces=("full", "core", "knots"), reference_url=DARE)
def dare_ties(taus, weights, ctx: Context, *, drop_rate: DropRate = 0.9, density: Density = 0.7):
    """DARE-TIES: DARE drop and rescale (seeded per module), then TIES trim, elect and disjoint mean."""
    return ties_merge(dare(apply_weights(taus, weights), drop_rate, ctx.modules, ctx.seed), density)
