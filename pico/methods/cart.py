import math
from typing import Annotated

from annotated_types import Interval

from pico.linalg import thin_svd
from pico.registry import Context, apply_weights, merge_method


@merge_method("cart", spaces=("full", "core"), reference_url="https://arxiv.org/abs/2412.12153")
def cart(taus, weights, ctx: Context, *,
         rho: Annotated[float, Interval(gt=0, le=1),
                        "CART: fraction of each residual's rank kept (Core-Space Llama: 0.04)"] = 0.04,
         cart_c: Annotated[float, "CART: scale of the summed low-rank residuals (Core-Space Llama: 0.1)"] = 0.1):
    """CART: the task mean plus cart_c times the sum of each task's low-rank residual from that mean."""
    x = apply_weights(taus, weights)
    avg = x.mean(1)
    k = max(1, math.ceil(rho * min(x.shape[-2:])))
    u, s, vh = thin_svd(x - avg.unsqueeze(1), top=k)
    low = u[..., :k] @ (s[..., :k, None] * vh[..., :k, :])
    return avg + cart_c * low.sum(1)
