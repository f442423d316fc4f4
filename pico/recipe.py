"""A merge recipe: everything that decides the merged bytes, validated up front, hashable for caching/lineage."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated

from annotated_types import Ge

from . import methods as _methods  # noqa: F401  (registers every method)
from .calibrations import CALIBRATIONS, get_calibration
from .errors import RecipeError
from .options import Choices, check_fields
from .registry import METHODS, get_method
from .spaces import SPACES, get_space
from .writer import json_digest

RESCALES = {
    "post": "after the merge, scale the merged update to the mean norm of the source updates (official API mode)",
    "pre": "before the merge, restore each calibrated adapter's own update norm (official folder/CLI mode)",
    "none": "no rescaling",
}


@dataclass
class Recipe:
    """The fields are the config keys and the `pico merge` flags (pico/options.py); method parameters are the
    method's own (pico/registry.py)."""

    method: Annotated[str, Choices(METHODS), "merge method (`pico methods` lists them)"] = "ta"
    space: Annotated[str, Choices(SPACES), "core: exact and cheap; knots: KnOTS alignment; full: dense baseline"] = \
        "core"
    calibrate: Annotated[str, Choices(CALIBRATIONS),
                         "calibration of the B factors before the merge: pico; pico-* are controls"] = "none"
    rescale: Annotated[str | None, Choices(RESCALES),
                       "post: match the merged norm to the mean source norm (default with calibration); pre: keep "
                       "each calibrated adapter's own norm; none"] = None
    kappa: Annotated[float | None, Ge(0), "Pico strength: alpha_k = 1/(1 + kappa c_k) (default: T - 1)"] = None
    gamma: Annotated[float, "raise Pico's alphas to this power (ablation sweep)"] = 1.0
    lam: Annotated[float, "lambda, scales the merged update (TA is a sum, so 1/T is the mean)"] = 1.0
    weights: Annotated[list[float] | None, "comma-separated per-adapter weights, in SRC order (default: all 1)"] = None
    rank: Annotated[int | None, Ge(1), "full space: SVD truncation rank (default: sum of input ranks)"] = None
    seed: Annotated[int, "seed of DARE masks and random controls"] = 0
    params: dict = field(default_factory=dict)  # method parameters (see `pico methods`)

    def __post_init__(self):
        check_fields(self, "recipe")
        method = get_method(self.method)
        get_space(self.space)
        if self.space not in method.spaces:
            raise RecipeError(f"method {self.method!r} does not run in {self.space} space; it supports "
                              f"{', '.join(method.spaces)}")
        calibration = get_calibration(self.calibrate)
        if self.rescale is None:
            self.rescale = "none" if calibration.side is None else "post"
        if self.rescale not in RESCALES:
            raise RecipeError(f"unknown rescale {self.rescale!r}; choose from {', '.join(RESCALES)}")
        for key, value in self.params.items():
            if key not in method.params:
                known = ", ".join(method.params) or "none"
                raise RecipeError(f"method {self.method!r} has no parameter {key!r} (its parameters: {known})")
            self.params[key] = method.params[key].check(value, f"method {self.method!r}")

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
            raise RecipeError(f"unknown recipe keys: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        return cls(**{**d, "params": dict(d.get("params") or {})})

    def hash(self) -> str:
        return json_digest(self.to_dict())

    def label(self) -> str:
        """A short human label of the method, space and calibration: "ties/full", "ta/core +pico k=5 (pre)"."""
        s = f"{self.method}/{self.space}"
        if self.calibrate != "none":
            s += f" +{self.calibrate}"
            if self.kappa is not None:
                s += f" k={self.kappa:g}"
            if self.gamma != 1.0:
                s += f" g={self.gamma:g}"
            s += f" ({self.rescale})"
        elif self.rescale != "none":
            s += f" ({self.rescale})"
        return s


def parse_recipe(text: str) -> Recipe:
    """A recipe from one line: ``METHOD[/SPACE] [key=value ...]`` (e.g. ``tsv/core lam=0.5 calibrate=pico
    rescale=pre``; a key that is no recipe field is a method parameter; weights as ``weights=1,2``), or a JSON
    object of :meth:`Recipe.from_dict`. :func:`format_recipe` writes the same form."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return Recipe.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise RecipeError(f"recipe {text!r} is not valid JSON: {exc}") from None
    head, *pairs = text.split()
    if not head or "=" in head:
        raise RecipeError(f"recipe {text!r}: start with METHOD or METHOD/SPACE, e.g. 'tsv/core lam=0.5'")
    method, _, space = head.partition("/")
    d: dict = {"method": method, **({"space": space} if space else {}), "params": {}}
    names = {f.name for f in fields(Recipe)} - {"method", "space", "params"}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise RecipeError(f"recipe {text!r}: {pair!r} is not key=value")
        if key == "weights":
            parsed = [float(w) for w in value.split(",")]
        else:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
        (d if key in names else d["params"])[key] = parsed
    return Recipe.from_dict(d)


def format_recipe(recipe: Recipe) -> str:
    """The one-line form :func:`parse_recipe` reads: method/space and every setting that differs from its default."""
    default = Recipe(method=recipe.method, space=recipe.space)
    default.rescale = Recipe(method=recipe.method, space=recipe.space, calibrate=recipe.calibrate).rescale
    parts = [f"{recipe.method}/{recipe.space}"]
    for f in fields(Recipe):
        value = getattr(recipe, f.name)
        if f.name in ("method", "space", "params") or value == getattr(default, f.name):
            continue
        parts.append(f"{f.name}=" + (",".join(f"{w:.12g}" for w in value) if f.name == "weights" else
                                     f"{value:.12g}" if isinstance(value, float) else str(value)))
    params = recipe.method_params()
    defaults = default.method_params()
    parts += [f"{k}={v:.12g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items() if v != defaults[k]]
    return " ".join(parts)
