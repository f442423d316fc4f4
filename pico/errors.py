"""pico's exceptions: one base, so a caller classifies a failure by its type, never by its message text.

Every error pico raises for bad input or a refused request derives from :class:`PicoError`. The classes that used to be
``ValueError`` (and the output-exists ``FileExistsError``) still derive from those, so ``except ValueError`` callers
keep working.
"""

from __future__ import annotations


class PicoError(Exception):
    """Base of every pico exception."""


class RecipeError(PicoError, ValueError):
    """A recipe, a method parameter or a command-line option is invalid: names the key, the value and what is allowed."""


class AdapterError(PicoError, ValueError):
    """A user-facing problem with an adapter: names the adapter, the module (when there is one) and the problem."""


class OutputExistsError(PicoError, FileExistsError):
    """The output directory exists and replacing it was not asked for."""
