from pico.registry import Context, apply_weights, merge_method


@merge_method("ta", spaces=("full", "core", "knots"), reference_url="https://arxiv.org/abs/2212.04089")
def task_arithmetic(taus, weights, ctx: Context):
    """Task Arithmetic: the weighted sum of task updates (times lambda; use lam=1/T for the mean)."""
    return apply_weights(taus, weights).sum(1)
