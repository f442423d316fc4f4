"""Options declared once. A dataclass field ``name: Annotated[type, constraints..., "help"] = default`` is a config
key, its validation and its command-line flag (the recipe, TARA), as a keyword-only parameter of a merge method is
(pico/registry.py). ``Choices(registry)`` among the metadata names the allowed values (a dict's values are their
descriptions, shown in the help) and checks them; a list field is given on the command line as comma-separated
numbers; a field without ``Annotated`` help gets no flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from .errors import PicoError, RecipeError
from .registry import Param, param_of


@dataclass(frozen=True)
class Choices:
    """Annotated metadata: the allowed values, the keys of ``of`` (a registry, a mapping or a sequence), read when
    the flag is built (registries fill as their modules are imported)."""

    of: Any

    def names(self) -> list[str]:
        return list(self.of)

    def describe(self) -> str:
        """"name: description; ..." when ``of`` maps each name to its description (a dict of str), else ""."""
        if isinstance(self.of, dict) and all(isinstance(v, str) for v in self.of.values()):
            return "; ".join(f"{k}: {v}" for k, v in self.of.items())
        return ""

    def check(self, value, name: str, owner: str) -> None:
        """A RecipeError naming the field and the choices unless ``value`` is one (a registry's own message)."""
        if value in self.names():
            return
        if hasattr(self.of, "lookup"):
            self.of.lookup(value)
        raise RecipeError(f"{owner}: unknown {name} {value!r}; choose from {', '.join(self.names())}")


@dataclass
class Option:
    param: Param  # name, element type, default, help, range
    optional: bool  # None is allowed (it stands for a derived default)
    many: bool  # a list of param.type
    choices: Choices | None

    @property
    def flag(self) -> str:
        return "--" + self.param.name.replace("_", "-")

    def parse(self, value, error: type[PicoError] = RecipeError):
        """A command-line value: a list field's comma-separated text becomes its numbers."""
        if not self.many or value is None or not isinstance(value, str):
            return value
        try:
            return [self.param.type(v) for v in value.split(",")]
        except ValueError:
            raise error(f"{self.flag} must be comma-separated numbers, got {value!r}") from None

    def check(self, value, owner: str, error: type[PicoError] = RecipeError):
        """``value`` if it has the field's type and range (None where optional): a list's entries are coerced to the
        type, a single value is kept as given (a recipe's ``lam: 2`` stays 2 in its hash and manifest)."""
        if value is None and self.optional:
            return None
        try:
            if self.many:
                return [self.param.check(v, owner) for v in value]
            self.param.check(value, owner)
            if self.choices is not None:
                self.choices.check(value, self.param.name, owner)
            return value
        except RecipeError as exc:
            raise error(str(exc)) from None


@functools.cache
def options(cls) -> dict[str, Option]:
    """The annotated fields of the dataclass ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) is not Annotated:
            continue
        base, *meta = typing.get_args(hint)
        choices = next((m for m in meta if isinstance(m, Choices)), None)
        args = typing.get_args(base)
        optional = isinstance(base, types.UnionType) and type(None) in args
        if optional:
            base = next(a for a in args if a is not type(None))
        many = typing.get_origin(base) is list
        if many:
            base = typing.get_args(base)[0]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        meta = [m for m in meta if not isinstance(m, Choices)]
        out[f.name] = Option(param_of(f.name, Annotated[(base, *meta)] if meta else base, default), optional, many,
                             choices)
    return out


def add_flags(parser: argparse.ArgumentParser, cls, **defaults) -> None:
    """One flag per annotated field of ``cls`` (``defaults``: a different default shown and used by this command)."""
    for name, o in options(cls).items():
        p, default = o.param, defaults.get(name, o.param.default)
        help_text = p.help + (f"; in {p.allowed()}" if p.allowed() else "")
        if o.choices is not None and o.choices.describe():
            help_text += "; " + o.choices.describe()
        if default is not None:
            help_text += f" (default: {','.join(map(str, default)) if o.many else default})"
        kw: dict = {"dest": name, "default": default, "help": help_text}
        if o.choices is not None:
            kw["choices"] = o.choices.names()
        elif not o.many:
            kw["type"] = p.type
        parser.add_argument(o.flag, **kw)


def from_args(cls, args: argparse.Namespace, error: type[PicoError] = RecipeError, **extra):
    """An instance of ``cls`` from the flags :func:`add_flags` made (``extra``: the fields given otherwise)."""
    return cls(**{name: o.parse(getattr(args, name), error) for name, o in options(cls).items()}, **extra)


def check_fields(obj, owner: str, error: type[PicoError] = RecipeError) -> None:
    """Coerce and range-check every annotated field of ``obj`` in place (its ``__post_init__`` calls this)."""
    for name, o in options(type(obj)).items():
        setattr(obj, name, o.check(getattr(obj, name), owner, error))
