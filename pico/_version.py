"""The library version (its own module, so modules of pico import it without importing the package)."""

__version__ = "0.1.0"
