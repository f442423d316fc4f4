"""pico: exact LoRA adapter merging with Pico calibration. A pure library: no orchestration imports."""

from ._version import __version__
from .adapters import AdapterSet, load_adapters
from .calibrations import CALIBRATIONS, Spectrum, calibration
from .errors import AdapterError, OutputExistsError, PicoError, RecipeError
from .merge import calibrate_batch, inspect_adapters, merge, merge_batch, plan_batches
from .recipe import Recipe
from .registry import METHODS, merge_method
from .spaces import SPACES, Space, space

__all__ = ["PicoError", "AdapterError", "RecipeError", "OutputExistsError", "AdapterSet", "load_adapters", "Recipe",
           "merge", "calibrate_batch", "merge_batch", "plan_batches", "inspect_adapters", "METHODS", "SPACES",
           "CALIBRATIONS", "merge_method", "Space", "space", "Spectrum", "calibration", "__version__"]
