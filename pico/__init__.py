"""pico: exact LoRA adapter merging with Pico calibration. A pure library: no orchestration imports."""

__version__ = "0.1.0"

from .adapters import AdapterError, AdapterSet, load_adapters  # noqa: E402
from .merge import calibrate_batch, inspect_adapters, merge, merge_batch, plan_batches  # noqa: E402
from .recipe import Recipe  # noqa: E402
from .registry import METHODS, SPACES, merge_method  # noqa: E402

__all__ = ["AdapterError", "AdapterSet", "load_adapters", "Recipe", "merge", "calibrate_batch", "merge_batch",
           "plan_batches", "inspect_adapters", "METHODS", "SPACES", "merge_method", "__version__"]
