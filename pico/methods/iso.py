from pico.linalg import thin_svd
from pico.registry import Context, apply_weights, merge_method


@merge_method("iso", spaces=("full", "core"), reference_url="https://arxiv.org/abs/2502.04959")
def iso_c(taus, weights, ctx: Context):
    """Iso-C: the task sum with its singular values flattened to their mean (isotropic spectrum)."""
    x = apply_weights(taus, weights).sum(1)
    # Official: all min(m, n) singular values become their mean. In full space that makes the update full rank
    # (an arbitrary map between null spaces, spec section 3), so the spectrum is restricted to its top R = sum r_t
    # values, the most a sum of the tasks can have. In Core Space min(p, q) <= R, so this is the official rule.
    k = min(*x.shape[-2:], sum(ctx.ranks))
    u, s, vh = thin_svd(x, top=k)
    u, s, vh = u[..., :k], s[..., :k], vh[..., :k, :]
    return u @ (s.mean(-1)[:, None, None] * vh)
