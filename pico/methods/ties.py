from pico.ops import Density, ties_merge
from pico.registry import Context, apply_weights, merge_method


@merge_method("ties", spaces=("full", "core", "knots"), reference_url="https://arxiv.org/abs/2306.01708")
def ties(taus, weights, ctx: Context, *, density: Density = 0.7):
    """TIES: trim each task to its top entries, elect signs by mass, disjoint mean (per module)."""
    return ties_merge(apply_weights(taus, weights), density)
