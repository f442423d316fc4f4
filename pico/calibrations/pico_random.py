import torch

from pico.calibrations import Spectrum, calibration, pico_alphas
from pico.rng import module_generator


@calibration("pico-random", side="B",
             no_gram="its random basis U @ Q rotates U, whose column signs the SVD (general path) and the Gram "
                     "eigendecomposition choose differently, so the two paths would shrink different directions")
def pico_random(spec: Spectrum, *, kappa: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """control: Pico's alphas on a random orthonormal basis of col(B_all)"""
    k = spec.share.shape[-1]
    names = spec.modules or [str(i) for i in range(spec.share.shape[0])]
    rot = torch.stack([_haar(k, module_generator(spec.seed, name, "pico-random")) for name in names])
    return pico_alphas(spec.share, kappa, gamma), rot


def _haar(k: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(k, dtype=torch.float64))
