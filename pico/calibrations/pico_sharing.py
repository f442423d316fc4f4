import torch

from pico.calibrations import Spectrum, calibration


@calibration("pico-sharing", side="B")
def pico_sharing(spec: Spectrum, *, kappa: float, gamma: float) -> torch.Tensor:
    """variant: alpha_k = 1/e_k, e_k = effective number of tasks sharing direction k"""
    # participation p_{k,t} = ||u_k^T B_t||^2 / sum_t (.), e_k = exp(entropy of p_k)
    proj = spec.participation()
    p = proj / proj.sum(-1, keepdim=True).clamp_min(1e-30)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    return torch.exp(-entropy) ** gamma
