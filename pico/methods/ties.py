from typing import Annotated

from annotated_types import Interval

from pico.ops import ties_merge
from pico.registry import Context, apply_weights, merge_method


@merge_method("ties", spaces=("full", "core", "knots"))
def ties(taus, weights, ctx: Context, *,
         density: Annotated[float, Interval(gt=0, le=1),
                            "fraction of entries kept per task and module (TIES topK; Core-Space Llama: 0.7)"] = 0.7):
    """TIES: trim each task to its top entries, elect signs by mass, disjoint mean (per module)."""
    return ties_merge(apply_weights(taus, weights), density)
