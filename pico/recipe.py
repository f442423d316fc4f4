"""A merge recipe: everything that decides the merged bytes, validated up front, hashable for caching/lineage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import methods as _methods  # noqa: F401  (registers every method)
from .calibrate import MODES
from .registry import SPACES, get_method
from .writer import json_digest

RESCALES = {
    "post": "after the merge, scale the merged update to the mean norm of the source updates (official API mode)",
    "pre": "before the merge, restore each calibrated adapter's own update norm (official folder/CLI mode)",
    "none": "no rescaling",
}


@dataclass
class Recipe:
    method: str = "ta"
    space: str = "core"
    calibrate: str = "none"
    rescale: str | None = None  # None: "post" when calibrating, else "none"
    kappa: float | None = None  # Pico strength; None: T - 1 (official)
    gamma: float = 1.0  # alpha ** gamma (ablation sweep)
    lam: float = 1.0  # lambda: scales the merged update (TA is a sum; lam = 1/T gives the mean)
    weights: list[float] | None = None  # per-adapter weights; None: all 1
    rank: int | None = None  # full space only: SVD truncation rank; None: sum of input ranks
    seed: int = 0  # DARE masks and the random-direction control
    params: dict = field(default_factory=dict)  # method parameters (see `pico methods`)

    def __post_init__(self):
        method = get_method(self.method)
        if self.space not in SPACES:
            raise ValueError(f"unknown space {self.space!r}; choose from {', '.join(SPACES)}")
        if self.space not in method.spaces:
            raise ValueError(f"method {self.method!r} does not run in {self.space} space; it supports "
                             f"{', '.join(method.spaces)}")
        if self.calibrate not in MODES:
            raise ValueError(f"unknown calibration {self.calibrate!r}; choose from {', '.join(MODES)}")
        if self.rescale is None:
            self.rescale = "none" if self.calibrate == "none" else "post"
        if self.rescale not in RESCALES:
            raise ValueError(f"unknown rescale {self.rescale!r}; choose from {', '.join(RESCALES)}")
        for key, value in self.params.items():
            if key not in method.params:
                known = ", ".join(method.params) or "none"
                raise ValueError(f"method {self.method!r} has no parameter {key!r} (its parameters: {known})")
            try:
                self.params[key] = method.params[key].type(value)
            except (TypeError, ValueError):
                raise ValueError(f"{key}={value!r} is not a {method.params[key].type.__name__}") from None
        for key in ("density",):
            if key in self.params and not 0 < self.params[key] <= 1:
                raise ValueError(f"density must be in (0, 1] (the fraction of entries kept), got {self.params[key]}")
        if "drop_rate" in self.params and not 0 <= self.params["drop_rate"] < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.params['drop_rate']}")
        if self.kappa is not None and self.kappa < 0:
            raise ValueError(f"kappa must be >= 0, got {self.kappa}")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank}")
        if self.weights is not None:
            self.weights = [float(w) for w in self.weights]

    def method_params(self) -> dict:
        """All method parameters, defaults filled in (what actually ran, for the manifest)."""
        method = get_method(self.method)
        return {name: self.params.get(name, p.default) for name, p in method.params.items()}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = self.method_params()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown recipe keys: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        return cls(**{**d, "params": dict(d.get("params") or {})})

    def hash(self) -> str:
        return json_digest(self.to_dict())
