"""pico: exact LoRA adapter merging with Pico calibration. A pure library: no orchestration imports."""

__version__ = "0.1.0"

from .errors import AdapterError, OutputExistsError, PicoError, RecipeError  # noqa: E402
from .adapters import AdapterSet, load_adapters  # noqa: E402
from .merge import calibrate_batch, inspect_adapters, merge, merge_batch, plan_batches  # noqa: E402
from .recipe import Recipe  # noqa: E402
from .registry import METHODS, merge_method  # noqa: E402
from .spaces import SPACES, Space, space  # noqa: E402
from .calibrations import CALIBRATIONS, Spectrum, calibration  # noqa: E402

__all__ = ["PicoError", "AdapterError", "RecipeError", "OutputExistsError", "AdapterSet", "load_adapters", "Recipe",
           "merge", "calibrate_batch", "merge_batch", "plan_batches", "inspect_adapters", "METHODS", "SPACES",
           "CALIBRATIONS", "merge_method", "Space", "space", "Spectrum", "calibration", "__version__"]
