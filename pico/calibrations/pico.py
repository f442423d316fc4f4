import torch

from pico.calibrations import Spectrum, calibration, pico_alphas


@calibration("pico", side="B")
def pico(spec: Spectrum, *, kappa: float, gamma: float) -> torch.Tensor:
    """Pico: shrink shared B directions by 1/(1+kappa c_k) (official rule)"""
    return pico_alphas(spec.share, kappa, gamma)
