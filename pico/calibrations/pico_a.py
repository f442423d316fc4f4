import torch

from pico.calibrations import Spectrum, calibration, pico_alphas


@calibration("pico-a", side="A")
def pico_a(spec: Spectrum, *, kappa: float, gamma: float) -> torch.Tensor:
    """control: the Pico rule applied to the row space of the stacked A's instead of B"""
    return pico_alphas(spec.share, kappa, gamma)
