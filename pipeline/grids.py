"""The recipe search space: ``merge:`` in params.yaml as one recipe, or as grids whose fields may be lists.

    merge:                                   # one recipe (as before): one candidate
      {method: ties, space: full, lam: 2.0, params: {density: 0.7}}

    merge:                                   # one grid: the product of its list-valued fields
      {method: [ta, ties], space: core, lam: [0.5, 1.0], params: {density: [0.5, 0.7]}}

    merge:                                   # the union of several grids, in order
      search:
        - {method: ties, space: full, lam: [1.5, 2.0]}
        - {method: ta, calibrate: pico, rescale: [pre, post]}
      defaults: {seed: 0}                    # fields every grid shares unless it sets them
      max_candidates: 32                     # a typo that explodes the product is an error, not a long night

Every field of ``pico.Recipe`` may be a list (``weights``: a list of lists, since one value is already a list), and
so may every method parameter under ``params``. Each combination is validated by ``pico.Recipe`` itself (the
method registry decides which spaces and parameter values a method accepts); a combination it rejects is skipped
with its reason, not an error. A method parameter applies only to the grid's methods that have it (``density`` is
a TIES/DARE parameter; for TA it is dropped, not an error). Combinations that would write the same bytes as another
are skipped as duplicates with the reason: lambda under ``rescale: post`` (the merged norm is pinned, lambda cancels),
``kappa``/``gamma`` without calibration.

A grid with ``method: tara`` is a family of **learned** candidates (``pico tara``; its fields are
``pico.tara.TaraConfig``'s, lists being choices as above), e.g. the teacher objective at two budgets::

        - {method: tara, objective: teacher, steps: [10, 20]}

Learned candidates come after every data-free one (a tie on validation goes to the data-free merge: a learned merge
is chosen only when it wins). Without ``init`` each starts from the night's best data-free candidate.

Pure Python over pico's public API (Recipe, the method registry, TaraConfig): no Prefect, MLflow or lm-eval imports.
The search itself (merge and score each candidate, the argmax) is :mod:`pipeline.search`.
"""

from __future__ import annotations

import itertools

from pico import Recipe
from pico.errors import PicoError
from pico.registry import METHODS, get_method
from pico.tara import TaraConfig
from pico.tara.config import ENTROPY_DEFAULTS, LEARNED, TEACHER_DEFAULTS
from pico.writer import json_digest

from .errors import SearchError
from .records import Candidate, SearchSpace

RECIPE_FIELDS = tuple(Recipe.__dataclass_fields__)
LEARNED_METHOD = "tara"  # a grid with this method is a family of learned candidates (TaraConfig's fields)
TARA_FIELDS = tuple(TaraConfig.__dataclass_fields__)
SEARCH_KEYS = {"search", "defaults", "max_candidates"}
MAX_CANDIDATES = 32


def label(recipe: Recipe) -> str:
    """ties/full lam=2 density=0.7 | ta/core +pico k=5 (pre) lam=0.8: the fields that tell candidates apart."""
    s = recipe.label()
    if recipe.rescale != "post":
        s += f" lam={recipe.lam:g}"
    for name, value in sorted(recipe.method_params().items()):
        s += f" {name}={value:g}" if isinstance(value, float) else f" {name}={value}"
    if recipe.rank is not None:
        s += f" rank={recipe.rank}"
    if recipe.weights is not None:
        s += " w=" + ",".join(f"{w:g}" for w in recipe.weights)
    return s


def _values(key: str, value) -> list:
    """A field's alternatives: a list is a choice (weights: a list of lists), anything else one value."""
    if key == "weights":
        if isinstance(value, list) and value and all(isinstance(v, list) or v is None for v in value):
            return value
        return [value]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def is_search(section: dict | None) -> bool:
    """Whether ``merge:`` is a search space (grids or list-valued fields), not one plain recipe."""
    if not section:
        return False
    if set(section) & SEARCH_KEYS or section.get("method") == LEARNED_METHOD:  # a learned merge is scored, too
        return True
    for key, value in section.items():
        if key == "params":
            if any(isinstance(v, (list, tuple)) for v in (value or {}).values()):
                return True
        elif len(_values(key, value)) != 1 or isinstance(value, (list, tuple)) and key != "weights":
            return True
    return False


def _grids(section: dict) -> tuple[list[dict], int]:
    if not isinstance(section, dict):
        raise SearchError(f"merge: must be a mapping (a recipe or a search space), got {type(section).__name__}")
    if not set(section) & SEARCH_KEYS:
        return [section], MAX_CANDIDATES
    unknown = set(section) - SEARCH_KEYS
    if unknown:
        raise SearchError(f"merge: unknown keys {', '.join(sorted(unknown))} beside search: (put recipe fields in "
                          "a grid under search:, or shared ones under defaults:)")
    grids = section.get("search")
    if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) for g in grids):
        raise SearchError("merge.search: must be a non-empty list of grids (mappings of recipe fields)")
    defaults = section.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise SearchError("merge.defaults: must be a mapping of recipe fields")
    out = []
    for g in grids:
        shared = defaults if g.get("method") != LEARNED_METHOD else \
            {k: v for k, v in defaults.items() if k in TARA_FIELDS}  # a learned grid takes the defaults it has
        merged = {**shared, **g}
        if "params" in defaults and "params" in g:
            merged["params"] = {**(defaults["params"] or {}), **(g["params"] or {})}
        out.append(merged)
    limit = section.get("max_candidates", MAX_CANDIDATES)
    if not isinstance(limit, int) or limit < 1:
        raise SearchError(f"merge.max_candidates: must be a positive integer, got {limit!r}")
    return out, limit


def _duplicate_reason(recipe: Recipe) -> str | None:
    """Why this recipe writes the same bytes as a simpler one in the same space (None: it does not)."""
    if recipe.rescale == "post" and recipe.lam != 1.0:
        return f"lam={recipe.lam:g} has no effect under rescale=post (the merged norm is pinned); lam=1 stands for it"
    if recipe.calibrate == "none" and (recipe.kappa is not None or recipe.gamma != 1.0):
        return "kappa/gamma apply only with a calibration; the uncalibrated recipe stands for it"
    return None


def learned_label(fields: dict) -> str:
    """tara/factors teacher steps=20 (from the best data-free merge) | ... init=ta/core lam=0.25"""
    cfg = TaraConfig(**fields)
    variant = cfg.variant or (TEACHER_DEFAULTS if cfg.objective == "teacher" else ENTROPY_DEFAULTS)["variant"]
    s = f"tara/{variant} {cfg.objective}"
    for name, value in sorted(fields.items()):
        if name not in ("variant", "objective", "init"):
            s += f" {name}={value:g}" if isinstance(value, float) else f" {name}={value}"
    if fields.get("init") is not None:
        s += f" init={fields['init']}"
    elif variant in LEARNED:  # trained from an init merge
        s += " (from the best data-free merge)"
    return s


def _learned(grid: dict, where: str) -> tuple[list[dict], list[dict]]:
    """A learned family's combinations: (valid recipes ``{"method": "tara", **fields}``, skipped with reasons)."""
    fields = {k: v for k, v in grid.items() if k != "method"}
    unknown = set(fields) - set(TARA_FIELDS)
    if unknown:
        raise SearchError(f"{where}: unknown keys {', '.join(sorted(unknown))} of a learned merge (method: "
                          f"{LEARNED_METHOD}; known: {', '.join(TARA_FIELDS)})")
    choices = {k: _values("weights" if k == "preference" else k, v) for k, v in fields.items()}  # one list: a value
    if any(not v for v in choices.values()):
        raise SearchError(f"{where}: an empty list leaves nothing to search")
    ok, skipped = [], []
    for combo in itertools.product(*choices.values()):
        kw = dict(zip(choices, combo))
        raw = {"method": LEARNED_METHOD, **kw}
        try:
            cfg = TaraConfig(**kw)
            cfg.resolve(len(cfg.preference) if cfg.preference else 1)  # T is checked again on the night's adapters
        except (PicoError, TypeError, ValueError) as exc:
            skipped.append({"recipe": raw, "reason": str(exc)})
            continue
        ok.append(raw)
    return ok, skipped


def expand(section: dict | None) -> SearchSpace:
    """The candidates of ``merge:`` in order (duplicates removed), and the skipped combinations with reasons."""
    if not section:
        raise SearchError("merge: is empty; give a recipe (method, space, ...) or a search space")
    single = not is_search(section)
    grids, limit = _grids(section)
    candidates: list[Candidate] = []
    learned: list[dict] = []
    skipped: list[dict] = []
    seen: set[str] = set()
    for gi, grid in enumerate(grids):
        where = "merge" if len(grids) == 1 and "search" not in section else f"merge.search[{gi}]"
        if grid.get("method") == LEARNED_METHOD:
            ok, bad = _learned(grid, where)
            skipped += bad
            for r in ok:
                if json_digest(r) not in seen:
                    seen.add(json_digest(r))
                    learned.append(r)
            continue
        unknown = set(grid) - set(RECIPE_FIELDS)
        if unknown:
            raise SearchError(f"{where}: unknown recipe keys {', '.join(sorted(unknown))} (known: "
                              f"{', '.join(RECIPE_FIELDS)})")
        params = grid.get("params") or {}
        if not isinstance(params, dict):
            raise SearchError(f"{where}.params: must be a mapping of method parameters")
        fields = {k: _values(k, v) for k, v in grid.items() if k != "params"}
        fields.setdefault("method", [Recipe.method])
        pnames = sorted(params)
        pvalues = [_values(p, params[p]) for p in pnames]
        if any(not v for v in list(fields.values()) + pvalues):
            raise SearchError(f"{where}: an empty list leaves nothing to search")
        names = list(fields)
        for combo in itertools.product(*fields.values(), *pvalues):
            kw = dict(zip(names, combo[: len(names)]))
            chosen = dict(zip(pnames, combo[len(names):]))
            method = kw["method"]
            if method in METHODS:  # a parameter of some other method of the grid: not this one's
                known_somewhere = {p for m in fields["method"] if m in METHODS for p in get_method(m).params}
                chosen = {p: v for p, v in chosen.items() if p in get_method(method).params or p not in known_somewhere}
            raw = {**kw, "params": chosen}
            try:
                recipe = Recipe.from_dict(raw)
            except (TypeError, ValueError) as exc:
                if single:  # one plain recipe: its own error, not "no valid candidate"
                    raise SearchError(f"merge: {exc}") from None
                skipped.append({"recipe": raw, "reason": str(exc)})
                continue
            reason = None if single else _duplicate_reason(recipe)  # one plain recipe is what was asked for
            if reason:
                skipped.append({"recipe": raw, "reason": reason})
                continue
            key = recipe.hash()
            if key in seen:
                continue  # the same recipe again (e.g. a parameter dropped for a method without it)
            seen.add(key)
            candidates.append(Candidate(recipe=recipe.to_dict(), label=label(recipe), index=len(candidates)))
    for raw in learned:  # after every data-free candidate: ties on validation go to the data-free merge
        candidates.append(Candidate(recipe=raw, label=learned_label({k: v for k, v in raw.items() if k != "method"}),
                                    index=len(candidates), kind="learned"))
    if not candidates:
        reasons = "; ".join(sorted({s["reason"] for s in skipped}))[:600]
        raise SearchError(f"merge: no valid candidate ({len(skipped)} combinations skipped: {reasons})")
    if len(candidates) > limit:
        raise SearchError(f"merge: {len(candidates)} candidates exceed max_candidates {limit}; narrow the lists "
                          "or raise merge.max_candidates")
    return SearchSpace(candidates=candidates, skipped=skipped, single=single)

