"""The README's method, space and calibration tables, generated from the registries.

``python -m pico.docs`` rewrites the tables between the ``<!-- registry:NAME -->`` / ``<!-- /registry:NAME -->``
markers of README.md; ``--check`` only reports whether they are stale (exit 1). tests/test_registries.py fails when
README.md is stale, so a new method, space or calibration file shows up in the README by running this once.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

from .calibrations import CALIBRATIONS
from .registry import METHODS
from .spaces import SPACES

README = Path(__file__).resolve().parents[1] / "README.md"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _one_line(doc: str | None) -> str:
    """A docstring as one table cell: paragraphs joined into sentences, pipes escaped."""
    paragraphs = [" ".join(p.split()) for p in (doc or "").split("\n\n") if p.strip()]
    if len(paragraphs) > 1:
        paragraphs = [p if p.endswith(".") else p + "." for p in paragraphs]
    text = " ".join(paragraphs)
    return text.replace("|", "\\|")


def tables() -> dict[str, str]:
    rows = ["| method | what it does | spaces | parameters (defaults; allowed) |", "|---|---|---|---|"]
    for m in sorted(METHODS.values(), key=lambda m: m.name):
        params = "<br>".join(f"`{_flag(p.name)} {p.default}`" + (f" in {p.allowed()}" if p.allowed() else "")
                             + f": {_one_line(p.help)}" for p in m.params.values())
        name = f"[`{m.name}`]({m.reference_url})" if m.reference_url else f"`{m.name}`"
        rows.append(f"| {name} | {_one_line(m.summary)} | {', '.join(m.spaces)} | {params} |")
    methods = "\n".join(rows)
    rows = ["| space | |", "|---|---|"]
    for name, sp in SPACES.items():
        rows.append(f"| `{name}`{' (default)' if name == 'core' else ''} | {_one_line(inspect.getdoc(type(sp)))} |")
    spaces = "\n".join(rows)
    rows = ["| calibration | | Gram fast path (core space) |", "|---|---|---|"]
    for name, cal in CALIBRATIONS.items():
        gram = "yes" if cal.gram else f"no: {_one_line(cal.no_gram)}"
        rows.append(f"| `{name}`{' (default)' if name == 'none' else ''} | {_one_line(inspect.getdoc(cal.fn))} | "
                    f"{gram if cal.side is not None else ''} |")
    calibrations = "\n".join(rows)
    return {"methods": methods, "spaces": spaces, "calibrations": calibrations}


def render(text: str) -> str:
    """``text`` with every registry table replaced by the registries' current one."""
    for name, table in tables().items():
        pattern = re.compile(rf"(<!-- registry:{name} -->\n)(?:.*?\n)?(<!-- /registry:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"README has no <!-- registry:{name} --> ... <!-- /registry:{name} --> markers")
        text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pico.docs", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is stale, write nothing")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{args.readme} is stale: run python -m pico.docs", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new)
        print(f"updated the registry tables in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
