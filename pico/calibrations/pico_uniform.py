import torch

from pico.calibrations import Spectrum, calibration, pico_alphas


@calibration("pico-uniform", side="B")
def pico_uniform(spec: Spectrum, *, kappa: float, gamma: float) -> torch.Tensor:
    """control: every direction shrunk by the mean Pico alpha"""
    return pico_alphas(spec.share, kappa, gamma).mean(-1, keepdim=True).expand_as(spec.share)
